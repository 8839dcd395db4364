"""The trajectory of a run: its adapter at step 0, at every snapshot and at the end, as one DataFrame.

    step 0          adapter_init.safetensors (A0, B0 = 0)
    step N, ...     checkpoints/step-<N>/adapter.safetensors (train.snapshot_every=N)
    step T          adapter.safetensors, unless a snapshot already has step T

The quantities per (module, step) are those of `lorascope.analysis.trajectory`; ΔW_T, the final
adapter, is the reference of the φ columns. Snapshots are read one at a time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import torch

from lorascope.analysis.trajectory import trajectory_frame
from lorascope.errors import LorascopeError
from lorascope.names import selected
from lorascope.run_format import ADAPTER_FILE, INIT_FILE, Run, read_adapter
from lorascope.runs import load_run

log = logging.getLogger(__name__)

HOW = "train with train.snapshot_every=N to save snapshots"
INIT = "init"  # the source of step 0 in a plan
FINAL = "final"  # the source of step T when it is not a snapshot


def final_step(run: Run) -> int:
    """The step at which adapter.safetensors was saved: its header's "step", else summary.json "steps"."""
    for value in (run.meta.get("step"), run.summary.get("steps")):
        if value is not None:
            return int(value)
    raise LorascopeError(
        f"{run.path}: cannot tell at which step {run.path.name}/adapter.safetensors was saved "
        '(no "step" in its header, no "steps" in summary.json)'
    )


def trajectory_plan(run: Run) -> list[tuple[int, str | Path]]:
    """The steps of a run's trajectory and where each comes from: [(0, "init"), (N, path), ..., (T, "final")].

    Raises LorascopeError for a PEFT folder, a run with neither snapshots nor A0, or a snapshot after
    the final step. Step 0 is missing (with a warning) when the run has no adapter_init."""
    if run.kind != "lorascope":
        raise LorascopeError(
            f"{run.path}: a {run.kind} adapter folder holds only the final adapter, so it has no "
            f"trajectory; use a lorascope run ({HOW})"
        )
    if run.method != "lora":
        raise LorascopeError(
            f"{run.path}: a trajectory follows LoRA's factors A and B; this is a {run.method} fine-tuning run"
        )
    snapshots = run.checkpoints()
    if not snapshots and run.init is None:
        raise LorascopeError(f"{run.path}: no snapshots (checkpoints/step-N) and no {INIT_FILE}; {HOW}")
    T = final_step(run)
    late = [s for s in snapshots if s > T]
    if late:
        raise LorascopeError(f"{run.path}: snapshot at step {late[0]} is after the final step {T}")
    plan: list[tuple[int, str | Path]] = []
    if run.init is not None:
        plan.append((0, INIT))
    else:
        log.warning("%s: no %s; the trajectory starts at the first snapshot, without A0", run.path, INIT_FILE)
    plan += [(s, path) for s, path in snapshots.items() if s > 0]  # step 0 is A0's, written at init
    if not snapshots:
        log.warning("%s: no snapshots, only step 0 and the final step; %s", run.path, HOW)
    if T not in snapshots and T > 0:
        plan.append((T, FINAL))
    return plan


def _states(run: Run, plan, names: list[str]):
    """(step, {module: adapter}) for each step of the plan, one file in memory at a time."""
    T = final_step(run)
    for step, source in plan:
        if source == INIT:
            adapters, where = run.init, run.path / INIT_FILE
        elif source == FINAL:
            adapters, where = run.adapters, run.path / ADAPTER_FILE
        else:
            adapters, where = read_adapter(source)[0], source
        missing = [m for m in names if m not in adapters]
        if missing:
            raise LorascopeError(f"{where}: has no module {missing[0]} (the final adapter has it)")
        if (
            step == T
            and source not in (INIT, FINAL)
            and not all(_same(adapters[m], run.adapters[m]) for m in names)
        ):
            log.warning("%s: the snapshot at the final step %d differs from %s", run.path, T, ADAPTER_FILE)
        yield step, {m: adapters[m] for m in names}


def _same(a, b) -> bool:
    return torch.equal(a.A, b.A) and torch.equal(a.B, b.B)


def run_trajectory(
    run: Run | str | os.PathLike,
    k: int = 8,
    modules: str | None = None,
    layers: str | set[int] | list[int] | None = None,
    energy: float = 0.9,
    progress: bool = False,
) -> pd.DataFrame:
    """The trajectory of a run (a `Run` or its folder): one row per (module, step), columns
    `lorascope.analysis.trajectory.COLUMNS`, modules in the run's order, steps increasing.

    k: the top-k directions compared with the final ΔW_T (capped per module by the rank);
    modules: a regex on module names; layers: "0,2-5" or a set of layer indices."""
    from tqdm.auto import tqdm

    if not isinstance(run, Run):
        run = load_run(run)
    names = selected(run.adapters, modules, layers)
    plan = trajectory_plan(run)
    log.info("%s: %d module(s) over %d step(s): %s", run.name, len(names), len(plan), [s for s, _ in plan])
    states = tqdm(
        _states(run, plan, names), total=len(plan), desc=f"trajectory {run.name}", unit="step",
        disable=not progress,
    )  # fmt: skip
    final = {m: run.adapters[m] for m in names}
    init = {m: run.init[m] for m in names if m in run.init} if run.init is not None else None
    return trajectory_frame(states, final, init, k=k, energy=energy)
