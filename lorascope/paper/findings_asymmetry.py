"""findings.md on LoRA's asymmetry (Zhu et al. 2024), from the two tests of the paper itself:

asymmetry     Zhu et al. 2024 from their own across-seed test: B's learned subspace agrees across seeds
              more than A's (A stays near its random start). Statistic: mean φ(t, t), t ≤ r, of B between
              seeds minus the same of A, with its interval over seeds.
frozen A      Zhu et al. 2024's other test: B alone (A frozen at A0, `lora.train_A=false`) matches training
              both. Frozen-A minus trained-A held-out metric per seed, its interval against a stated
              tolerance, and φ between the two runs' ΔW output-side directions against its null
              (`lorascope.paper.frozen_a`).
"""

from __future__ import annotations

import itertools

import numpy as np

from lorascope.analysis.stats import pair_interval
from lorascope.compare.pairs import run_similarity
from lorascope.names import kind_label, module_kind
from lorascope.paper.frozen_a import COMMAND, METRICS, frozen_a, twin_seeds
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import ABOVE_TEXT, decide, interval, null, verdict
from lorascope.paper.verdicts import fmt as _fmt

ZHU_FACTORS = ("A", "B")


def asymmetry_section(sweep: Sweep) -> list[str]:
    """Zhu et al. 2024 from the factors across seeds: does B agree across seeds more than A?"""
    out = ["## LoRA's asymmetry: B learns, A stays random (Zhu et al. 2024)", ""]
    rank = next((r for r in reversed(sweep.ranks) if len(sweep.seeds(r)) >= 2), None)
    if rank is None:
        return out + [
            "Not testable: needs two seeds at one rank: run `python sweep.py rank=8 seed=0,1,2`.",
            "",
        ]
    seeds = sweep.seeds(rank)
    S = len(seeds)
    diag = {f: {} for f in ZHU_FACTORS}  # factor -> kind -> (S, S, layers)
    for (ia, a), (ib, b) in itertools.combinations(enumerate(seeds), 2):
        for f in ZHU_FACTORS:
            sim = run_similarity(sweep.run(rank, a), sweep.run(rank, b), factor=f)
            per: dict[str, list] = {}
            for m in sweep.modules:
                per.setdefault(module_kind(m), []).append(float(np.diag(sim.grids[m].to_numpy()).mean()))
            for kind, v in per.items():
                diag[f].setdefault(kind, np.full((S, S, len(v)), np.nan))[ia, ib] = v
    out += [
        f"Their across-seed test at r = {rank}, seeds {', '.join(map(str, seeds))}: mean φ(t, t), t ≤ r, "
        "between seeds for B (output side) and for A (input side), over every pair of seeds and layer, with "
        "a bootstrap interval over seeds (3 seeds for one). It holds when B − A lies above 0. Their other "
        "test, A frozen against trained A, is the next section.",
        "",
        "| module | φ of B across seeds | φ of A across seeds | B − A | verdict |",
        "|---|---|---|---|---|",
    ]
    for kind in diag["A"]:
        B, A = diag["B"][kind], diag["A"][kind]
        d = pair_interval(B - A)
        out.append(
            f"| {kind.rsplit('.', 1)[-1]} | {interval(pair_interval(B))} | {interval(pair_interval(A))} | "
            f"{interval(d)} | {decide(d, 0.0)} |"
        )
    return out + [""]


def frozen_a_section(sweep: Sweep) -> list[str]:
    """Zhu et al. 2024's own test: B alone (A frozen at its random start) against both factors trained."""
    out = [
        "## LoRA's asymmetry, their own test: training B alone matches training both (Zhu et al. 2024)",
        "",
    ]
    ranks = twin_seeds(sweep)
    if not ranks:
        have = ", ".join(r.name for r in sweep.frozen_A.values())
        return out + [
            "Not testable: the sweep holds no run with A frozen (`lora.train_A=false`) beside a trained-A "
            f"run of the same rank and seed{f' (frozen-A runs without a twin: {have})' if have else ''}. Run "
            f"`{COMMAND}` in this sweep (its runs go to r8-s<seed>-frozenA, beside r8-s<seed>), and "
            "`python sweep.py rank=8 seed=0,1,2` for the trained-A twins it does not hold yet.",
            "",
        ]
    results = [frozen_a(sweep, rank, seeds) for rank, seeds in ranks.items()]
    out += [
        "Each seed's run with A frozen at its start A0 (only B learns) against its twin with A trained: "
        "same rank, seed, A0 and batches. The effect is the held-out metric of frozen minus trained, mean "
        "over seeds with a 95 % bootstrap interval; B alone matches when the whole interval lies above "
        f"−{_fmt(METRICS['val_accuracy'][1])} for accuracy or below +{_fmt(METRICS['val_loss'][1])} for "
        "the held-out loss (nats), and fails when it lies wholly beyond.",
        "",
        "| r | seeds | metric | frozen A | trained A | frozen − trained | tolerance | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in results:
        g = f.gap
        if g is None:
            out.append(
                f"| {f.rank} | {len(f.seeds)} | – | – | – | – | – | not testable (no held-out metric) |"
            )
            continue
        bad = "−" if g.higher_is_better else "+"
        out.append(
            f"| {f.rank} | {', '.join(map(str, f.seeds))} | {g.metric} | {interval(g.frozen)} | "
            f"{interval(g.trained)} | {interval(g.gap)} | {bad}{_fmt(g.tolerance)} | {g.verdict} |"
        )
    out += [
        "",
        "What B learned in each: φ between the two runs' ΔW top directions on the output side (B's column "
        "space), per seed and layer, against pairs of random Gaussian (n, r) matrices (the null) and the "
        f"analytic floors 1/n and (r + 1)/(2n). The same directions when φ(1, 1) lies {ABOVE_TEXT}. (The "
        "input side is not tested: both runs start from the one A0 of their seed.)",
        "",
        "| r | module | φ(1,1) | null φ(1,1) | floor 1/n | mean φ(t,t), t ≤ r | null | floor | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in results:
        for k in f.kinds:
            out.append(
                f"| {f.rank} | {kind_label(k.kind)} | {interval(k.phi_11)} | {null(k.null_11)} | "
                f"{_fmt(k.floor_11)} | {interval(k.diag)} | {null(k.null_diag)} | "
                f"{_fmt(k.floor_diag(f.rank))} | {k.verdict} |"
            )
    gaps = [f.gap.verdict for f in results if f.gap is not None]
    same = [k.verdict for f in results for k in f.kinds]
    return out + [
        "",
        f"- B alone matches training both (held-out metric within the tolerance): {verdict(gaps)}.",
        f"- B learns the same top output direction with A frozen as with A trained: {verdict(same)}.",
        "",
    ]
