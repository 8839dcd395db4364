"""Many adapters of one model at once: the subspace they share, and what merging them keeps.

The group: the sweep's LoRA runs at one rank (every seed), with the runs of that rank in sibling sweeps
of other tasks on the same base weights (`cross_task.other_tasks`); the rank whose group is largest
(the larger rank on a tie). With fewer than MIN_ADAPTERS adapters both recipes are skipped.

fig_shared_subspace_<side>   the energy share E(m) of the top-m shared directions of ΔW's input
                             (right) and output (left) sides, per module kind and layer, against N
                             independent random adapters (Monte Carlo mean and band); with
                             table_shared_subspace_<side> (per module kind, median over layers)
fig_merge_interference       the Task-Singular-Vectors interference ‖U_iᵀU_j‖²_F / min(k_i, k_j) between
                             the adapters' bases, output and input side; with table_merge_retention:
                             what task arithmetic and TIES (density 0.2) keep of each adapter

Findings, against the floors (stated in the text so a reader can disagree with a verdict):
  shared subspace   the adapters share directions beyond chance on a side and module kind when
                    E(m = r) lies above the floor's band top (mean + 3 sd) in more than half of the
                    layers; the median count of eigenvalues above the floor's band says how many
  merge             the adapters interfere beyond chance when the mean interference over pairs is above
                    its floor max(k_i, k_j)/n; TIES' kept entries agree in sign more than chance when the
                    sign-conflict fraction is below its fair-coin floor; task arithmetic against TIES:
                    which keeps more of each adapter (mean retention), beside the floor k²/(out·in)
"""

from __future__ import annotations

import pandas as pd

from lorascope.analysis.many_plots import plot_energy_curves, plot_interference
from lorascope.compare.merges import merge_summary, run_merge
from lorascope.compare.subspaces import run_subspace
from lorascope.errors import LorascopeError
from lorascope.names import kind_label
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.cross_task import other_tasks
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import fmt as _fmt
from lorascope.paper.verdicts import verdict

MIN_ADAPTERS = 3
NONE = (
    f"needs at least {MIN_ADAPTERS} adapters of one rank (seeds, or sibling sweeps of other tasks), e.g. "
    "`python sweep.py rank=8 seed=0,1,2`"
)
SIDES = ("right", "left")
SIDE_TEXT = {"right": "input side", "left": "output side"}
MERGES = (("task_arithmetic", None), ("ties", 0.2))


def adapter_group(sweep: Sweep) -> tuple[int, list] | None:
    """(rank, runs) of the largest group of one rank, or None below MIN_ADAPTERS adapters."""
    others = other_tasks(sweep)
    best = None
    for rank in sweep.ranks:
        group = [sweep.run(rank, s) for s in sweep.seeds(rank)]
        group += [o.run(rank, s) for o in others if rank in o.ranks for s in o.seeds(rank)]
        if best is None or len(group) >= len(best[1]):
            best = (rank, group)
    return best if best and len(best[1]) >= MIN_ADAPTERS else None


def group_of(sweep: Sweep, opts) -> tuple[int, list] | None:
    """`adapter_group`, found once per `make_figures` (kept on its options)."""
    if not hasattr(opts, "many_adapters_group"):
        opts.many_adapters_group = adapter_group(sweep)
    return opts.many_adapters_group


def fig_shared_subspace(sweep: Sweep, group=None) -> list[Artifact | Skipped]:
    group = group if group is not None else adapter_group(sweep)
    if group is None:
        return [Skipped(f"fig_shared_subspace_{side}", NONE) for side in SIDES]
    rank, runs = group
    arts = []
    for side in SIDES:
        rep = run_subspace(runs, side=side, check_base=True)
        table = rep.table()
        title = (
            f"{sweep.name}: {len(runs)} adapters at r = {rank}, {SIDE_TEXT[side]} of ΔW: energy in the "
            "top-m shared directions, against random adapters"
        )
        fig, _ = plot_energy_curves(rep.curve(), table, title=title)
        facts = {"rank": rank, "side": side, "names": rep.names, "table": table, "coverage": rep.coverage(),
                 "trials": rep.meta["trials"]}  # fmt: skip
        arts.append(Artifact(f"fig_shared_subspace_{side}", rep.curve(), fig=fig, facts=facts))
        arts.append(Artifact(f"table_shared_subspace_{side}", table=rep.kind_summary()))
    return arts


def fig_merge(sweep: Sweep, group=None) -> list[Artifact | Skipped]:
    group = group if group is not None else adapter_group(sweep)
    if group is None:
        return [Skipped("fig_merge_interference", NONE)]
    rank, runs = group
    reports = {}
    for method, density in MERGES:
        try:
            reports[method] = run_merge(runs, method, density=density)
        except LorascopeError as e:  # PEFT missing: one reason, and the other recipes go on
            return [Skipped("fig_merge_interference", str(e))]
    first = reports["task_arithmetic"]
    floors = tuple(first.off_diagonal(side)[1] for side in ("left", "right"))
    fig, _ = plot_interference(
        first.interference_frame("left"), first.interference_frame("right"), floors,
        title=f"{sweep.name}: {len(runs)} adapters at r = {rank}: interference of their singular bases",
    )  # fmt: skip
    table = pd.concat(
        [rep.retention().reset_index().assign(method=m) for m, rep in reports.items()], ignore_index=True
    ).set_index(["method", "adapter"])
    facts = {
        "rank": rank,
        "names": first.names,
        "summaries": {m: merge_summary(r) for m, r in reports.items()},
        "density": reports["ties"].density,
    }
    return [
        Artifact("fig_merge_interference", first.interference_long(), fig=fig, facts=facts),
        Artifact("table_merge_retention", table=table),
    ]


def subspace_section(arts: list) -> list[str]:
    out = ["## Many adapters: the subspace they share", ""]
    made = [a for a in arts if isinstance(a, Artifact) and a.stem.startswith("fig_")]
    if not made:
        return out + arts[0].lines()
    f = made[0].facts
    out += [
        f"{len(f['names'])} adapters at r = {f['rank']} ({', '.join(f['names'])}). Per module, the top "
        "eigenvectors of the sum of the adapters' ΔW projectors (each adapter's top-r singular basis, weight "
        f"1/r): E(r) is the share of the adapters' energy in the top-r shared directions; the floor is the "
        f"same for as many independent random adapters ({f['trials']} Monte Carlo trials, band mean ± 3 sd). "
        "The adapters share directions beyond chance when E(r) is above the band's top in more than half "
        "of the layers. Median over layers:",
        "",
        "| side | module | E(r) | floor | band top | directions above the floor | layers above |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for art in made:
        t, side = art.facts["table"], art.facts["side"]
        for kind, g in t.groupby("kind", sort=False):
            above = g["energy"] > g["floor_hi"]
            ok = bool(above.mean() > 0.5)
            out.append(
                f"| {SIDE_TEXT[side]} | {kind_label(kind)} | {_fmt(g.energy.median())} | "
                f"{_fmt(g.floor.median())} | {_fmt(g.floor_hi.median())} | {_fmt(g.shared_dims.median())} | "
                f"{int(above.sum())} of {len(g)} |"
            )
            verdicts.append(f"{SIDE_TEXT[side]}, {kind_label(kind)}: {verdict([bool(ok)])}")
    cov = made[0].facts["coverage"]
    outliers = list(cov.index[cov.outlier])
    out += [
        "",
        "The adapters share directions beyond chance: " + "; ".join(verdicts) + ".",
        f"Outliers ({SIDE_TEXT[made[0].facts['side']]}: coverage by the top-r shared directions closer to "
        f"the floor than to the median): {', '.join(outliers) if outliers else 'none'}.",
        "",
    ]
    return out


def merge_section(arts: list) -> list[str]:
    out = ["## Many adapters: what merging them keeps", ""]
    art = next((a for a in arts if isinstance(a, Artifact) and a.stem == "fig_merge_interference"), None)
    if art is None:
        return out + arts[0].lines()
    f, s = art.facts, art.facts["summaries"]
    ta, ties = s["task_arithmetic"], s["ties"]
    out += [
        f"The {len(f['names'])} adapters at r = {f['rank']} merged module by module with PEFT's merge "
        f"utilities: task arithmetic (Σ ΔW_i) and TIES (density {f['density']:g}). Retention is the share "
        "of ΔW_i's energy inside the merged ΔW's top-k left and right singular subspaces (k = Σ r_i), floor "
        "k²/(out·in); interference ‖U_iᵀU_j‖²_F / min(k_i, k_j) between two adapters' singular bases "
        "(Task Singular Vectors), floor max(k_i, k_j)/n; sign conflict: among the entries TIES keeps in at "
        "least two adapters, the share whose signs disagree, floor: independent fair-coin signs. Means over "
        "modules and adapters (pairs):",
        "",
        "| measure | value | floor |",
        "|---|---|---|",
        *(
            f"| {what} | {_fmt(summary[key])} | {_fmt(summary[key + '_floor'])} |"
            for what, summary, key in (
                ("retention, task arithmetic", ta, "retention"),
                ("retention, TIES", ties, "retention"),
                ("interference, output side", ta, "interference_left"),
                ("interference, input side", ta, "interference_right"),
            )
        ),
        f"| TIES sign conflict | {_fmt(ties['sign_conflict'])} | {_fmt(ties['sign_conflict_floor'])} |",
        "",
    ]
    above = [ta[f"interference_{s}"] > ta[f"interference_{s}_floor"] for s in ("left", "right")]
    agree = ties["sign_conflict"] < ties["sign_conflict_floor"]
    more = "task arithmetic" if ta["retention"] >= ties["retention"] else "TIES"
    out += [
        f"- The adapters interfere beyond chance (output side, input side): {verdict([bool(above[0])])}, "
        f"{verdict([bool(above[1])])}.",
        f"- TIES' kept entries agree in sign more than chance: {verdict([bool(bool(agree))])}.",
        f"- {more} keeps more of each adapter ({_fmt(ta['retention'])} against {_fmt(ties['retention'])}).",
        "",
    ]
    return out
