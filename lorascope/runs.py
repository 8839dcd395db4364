"""Runs as analysis sees them: load a run folder (or a PEFT adapter folder), list a sweep's runs.

    run = load_run("runs/minilm-bbc/r8-s0")          # or a PEFT folder: adapter_config.json + ...
    run.adapters[module].A / .B / .scaling / .delta_weight()
    list_runs("runs/minilm-bbc")                     # run folders, by rank then seed

The file format itself (Adapter, Run, the file names, reading and writing tensors, atomic writes)
is `lorascope.run_format`, which both this reader and `lorascope.peft_format` build on: import
those names from there. Listing a sweep (`list_runs`, `is_run_dir`, `is_complete`) reads file
names and summary.json only, without torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lorascope.errors import LorascopeError
from lorascope.run_format import (
    ADAPTER_FILE,
    CONFIG_FILE,
    DELTA_FILE,
    INIT_FILE,
    PEFT_CONFIG_FILE,
    SUMMARY_FILE,
    Run,
    read_adapter,
    read_config,
    read_delta,
    read_summary,
)

# r{rank}-s{seed}, and r{rank}-s{seed}-frozenA / -frozenB for runs that train one factor only
_RUN_NAME = re.compile(r"r(?P<rank>\d+)-s(?P<seed>\d+)(?:-(?P<variant>frozen[AB]))?")


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(
        (path / f).is_file() for f in (CONFIG_FILE, ADAPTER_FILE, DELTA_FILE, SUMMARY_FILE, PEFT_CONFIG_FILE)
    )


def is_complete(run_dir: Path) -> bool:
    try:
        return read_summary(run_dir).get("status") == "complete"
    except LorascopeError:
        return False


def load_run(path: str | os.PathLike) -> Run:
    """Load a lorascope run folder (LoRA or full fine-tuning), or a PEFT LoRA adapter folder, as a `Run`."""
    path = Path(path)
    if not path.exists():
        raise LorascopeError(f"{path}: no such run folder")
    if not path.is_dir():
        raise LorascopeError(f"{path}: is a file; a run is a folder (with {ADAPTER_FILE})")
    if (path / DELTA_FILE).is_file():  # full fine-tuning: dense ΔW per module, no factors, no A0
        deltas, meta = read_delta(path / DELTA_FILE)
        return Run(
            path=path, adapters=deltas, meta=meta, config=read_config(path), summary=read_summary(path)
        )
    if not (path / ADAPTER_FILE).is_file():
        if (path / PEFT_CONFIG_FILE).is_file():
            from lorascope.peft_format import load_peft_run  # PEFT's format needs torch: only when read

            return load_peft_run(path)
        if (path / CONFIG_FILE).is_file():
            status = read_summary(path).get("status", "incomplete")
            raise LorascopeError(f"{path}: run has no {ADAPTER_FILE} yet (status: {status})")
        hint = " (it holds runs: give one of them)" if list_runs(path) else ""
        raise LorascopeError(f"{path}: not a run: no {ADAPTER_FILE} or {PEFT_CONFIG_FILE}{hint}")
    adapters, meta = read_adapter(path / ADAPTER_FILE)
    init = read_adapter(path / INIT_FILE)[0] if (path / INIT_FILE).is_file() else None
    run = Run(
        path=path,
        adapters=adapters,
        meta=meta,
        init=init,
        config=read_config(path),
        summary=read_summary(path),
    )
    from lorascope.families.own_runs import attach_kinds  # the ΔW kinds need torch: only when read

    attach_kinds(run)  # DoRA and shifting-init runs: their ΔW kinds
    return run


def _run_sort_key(path: Path):
    m = _RUN_NAME.fullmatch(path.name)
    return (0, int(m["rank"]), int(m["seed"]), m["variant"] or "") if m else (1, 0, 0, path.name)


def list_runs(sweep: str | os.PathLike) -> list[Path]:
    """Run folders directly under a sweep folder, complete or not, ordered by rank then seed."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise LorascopeError(f"{sweep}: no such sweep folder")
    return sorted((p for p in sweep.iterdir() if is_run_dir(p)), key=_run_sort_key)


def parse_run_name(name: str) -> tuple[int, int] | None:
    """(rank, seed) from a folder named r{rank}-s{seed} (or r{rank}-s{seed}-frozenA / -frozenB), else None."""
    m = _RUN_NAME.fullmatch(name)
    return (int(m["rank"]), int(m["seed"])) if m else None
