"""How adapters of two tasks on one model relate: φ between them, beside seed against seed and chance.

`lorascope figures runs/minilm-bbc` looks for sibling sweep folders (runs/minilm-plays, ...) whose runs
adapt the same base model (the same ‖W‖_F per module) for another task. For the largest rank both
trained, at one layer, per module kind: φ between the two tasks' adapters (seed 0 of each), φ between
two seeds of one task (the within-task control), and two random Gaussian matrices (the floor).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from lorascope.analysis.factors import get_factor
from lorascope.analysis.plots import plot_phi
from lorascope.analysis.similarity import long_grid
from lorascope.base_identity import recorded, same_weights
from lorascope.compare.pairs import run_similarity
from lorascope.errors import LorascopeError
from lorascope.names import kind_label
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.similarity_figs import gaussian_grid
from lorascope.paper.sweep import Sweep
from lorascope.runs import list_runs

log = logging.getLogger(__name__)

NONE = (
    "needs a sweep of another task on the same model beside this one, e.g. "
    "`python sweep.py task=plays rank=8 seed=0,1`"
)


def _task(sweep: Sweep) -> str | None:
    """The task a sweep's runs were trained on (None when the runs do not say)."""
    run = next(iter(sweep.runs.values()))
    return run.meta.get("task") or (run.config.get("task") or {}).get("name")


def _same_base(a: Sweep, b: Sweep) -> bool:
    ra, rb = next(iter(a.runs.values())), next(iter(b.runs.values()))
    return same_weights(recorded(ra), recorded(rb))


def other_tasks(sweep: Sweep) -> list[Sweep]:
    """Sibling sweeps of other tasks on the same base weights."""
    found = []
    for folder in sorted(p for p in sweep.path.resolve().parent.iterdir() if p.is_dir()):
        if folder == sweep.path.resolve():
            continue
        try:  # a sibling folder may vanish while we look (a temporary folder beside the sweep)
            if not list_runs(folder):
                continue
            other = Sweep.load(folder)
        except LorascopeError as e:
            log.info("%s: not a sweep to compare with: %s", folder, e)
            continue
        if (
            None not in (_task(other), _task(sweep))
            and _task(other) != _task(sweep)
            and _same_base(sweep, other)
        ):
            found.append(other)
    return found


def fig_cross_task(sweep: Sweep, factor: str = "dW-right", layer=None) -> Artifact | Skipped:
    name = f"fig_cross_task_{factor}"
    others = [o for o in other_tasks(sweep) if set(o.ranks) & set(sweep.ranks)]
    if not others:
        return Skipped(name, NONE)
    other = others[0]
    rank = max(set(other.ranks) & set(sweep.ranks))
    layer = sweep.middle_layer if layer is None else layer
    tasks = (_task(sweep), _task(other))
    pairs = {f"{tasks[0]} vs {tasks[1]}": (sweep.run(rank), other.run(rank))}
    for task, s in zip(tasks, (sweep, other), strict=True):
        if len(s.seeds(rank)) >= 2:
            s1, s2 = s.seeds(rank)[:2]
            pairs[f"{task}: seed {s1} vs {s2}"] = (s.run(rank, s1), s.run(rank, s2))
            break
    spec = get_factor(factor)
    panels, rows, facts = {}, [], {}
    for kind in sweep.kinds:
        m = sweep.module(layer, kind)
        n = spec.dim(sweep.run(rank).adapters[m])
        for label, (a, b) in pairs.items():
            grid = run_similarity(a, b, factor, modules=f"^{m}$").grids[m]
            panels[f"{kind_label(kind)}: {label}"] = grid
            rows.append(long_grid(grid, layer=layer, module=kind, pair=label))
            facts[(kind_label(kind), label)] = {"diag_mean": float(np.diag(grid.to_numpy()).mean()), "n": n}
        gauss = gaussian_grid(rank, n, factor)
        panels[f"{kind_label(kind)}: random Gaussian"] = gauss
        rows.append(long_grid(gauss, layer=layer, module=kind, pair="random gaussian"))
        facts[(kind_label(kind), "random")] = {"diag_mean": float(np.diag(gauss.to_numpy()).mean()), "n": n}
    fig, _ = plot_phi(
        panels,
        ncols=len(pairs) + 1,
        suptitle=f"{sweep.name} and {other.name}, r = {rank}, layer {layer}: "
        + rf"$\phi$ of {spec.tex} between tasks, between seeds, and at random",
    )
    facts = {"rank": rank, "layer": layer, "tasks": tasks, "pairs": list(pairs), "means": facts}
    return Artifact(name, pd.concat(rows, ignore_index=True), fig=fig, facts=facts)


def cross_task_section(arts: list) -> list[str]:
    out = ["## Adapters of two tasks on one model", ""]
    made = [a for a in arts if isinstance(a, Artifact)]
    if not made:
        return out + arts[0].lines()
    out += [
        "Mean of φ(k, k) over k ≤ r between the adapters of two tasks at the same rank (seed 0 of each), "
        "beside two seeds of one task and two random Gaussian matrices, at one layer. Two tasks share "
        "more than chance when their mean is above the random one; they share what the seeds share "
        "when it comes close to the seeds' mean.",
        "",
        "| factor | module | " + " | ".join(made[0].facts["pairs"]) + " | random | ",
        "|---|---|" + "---|" * (len(made[0].facts["pairs"]) + 1),
    ]
    for art in made:
        means = art.facts["means"]
        factor = art.stem.removeprefix("fig_cross_task_")
        for kind in dict.fromkeys(k for k, _ in means):
            cells = [f"{means[(kind, p)]['diag_mean']:.3f}" for p in [*art.facts["pairs"], "random"]]
            out.append(f"| {get_factor(factor).text} | {kind} | " + " | ".join(cells) + " |")
    return out + [""]
