"""Fig. 3 and its finding: the top directions of a small and a large rank overlap.

The figure: φ(X_{r=small}, X_{r=large}, i, j) at one layer, with the zoomed lower-left triangle, the
cells where φ does not exceed its random floor max(i, j)/n hatched. The finding: over every seed the
two ranks share (same-seed pairs) and every layer (the strata of a stratified bootstrap), φ(1, 1) and
φ(small, small) with 95 % intervals; it holds when φ(1, 1)'s interval lies above 0.5 and the per-seed
decay φ(1, 1) − φ(small, small) lies above 0. One shared seed gives no interval, so no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lorascope.analysis.factors import get_factor
from lorascope.analysis.plots import FLOOR_NOTE, plot_phi
from lorascope.analysis.similarity import long_grid, random_phi_baseline
from lorascope.analysis.stats import Interval, seed_interval
from lorascope.compare.pairs import run_similarity
from lorascope.names import kind_label, layer_index, module_kind
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.similarity_figs import init_control, lower_triangle, pair_grids, rank_pair, space_dim
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import HOLDS, decide, fmt, interval, verdict

SHARED = 0.5  # φ(i, i) above this: more than half of the top-i directions are shared


@dataclass(frozen=True)
class KindOverlap:
    """One module kind: φ(1, 1) and φ(k, k) (k the small rank) over seeds, pooled over layers."""

    kind: str
    n: int
    phi_11: Interval
    phi_kk: Interval
    decay: Interval  # φ(1, 1) − φ(k, k), per seed and layer

    @property
    def verdict(self) -> str:
        top, decays = decide(self.phi_11, SHARED), decide(self.decay, 0.0)
        return HOLDS if top == decays == HOLDS else top if top != HOLDS else decays


@dataclass(frozen=True)
class RankOverlap:
    """Fig. 3's finding for one factor."""

    factor: str
    small: int
    large: int
    layer: int
    seeds: list[int]
    layers: list[int]
    kinds: list[KindOverlap]
    init: dict  # kind -> φ(1, 1) of the two runs' A0 at the figure's layer, and n (the control)


def _pooled(
    sweep: Sweep, factor: str, small: int, large: int, pairs: list[tuple[int, int]]
) -> dict[str, np.ndarray]:
    """kind -> (n_pairs, n_layers, 2) of φ(1, 1) and φ(small, small) between the runs of each
    (seed at `small`, seed at `large`) pair."""
    out: dict[str, list] = {}
    for s_small, s_large in pairs:
        sim = run_similarity(sweep.run(small, s_small), sweep.run(large, s_large), factor=factor)
        per: dict[str, list] = {}
        for m, g in sorted(sim.grids.items(), key=lambda kv: layer_index(kv[0]) or 0):
            if m in sweep.modules:
                v = g.to_numpy()
                per.setdefault(module_kind(m), []).append((v[0, 0], v[small - 1, small - 1]))
        for kind, rows in per.items():
            out.setdefault(kind, []).append(rows)
    return {kind: np.asarray(v) for kind, v in out.items()}


def rank_overlap(sweep: Sweep, factor: str, small: int, large: int, layer: int) -> RankOverlap:
    seeds = [s for s in sweep.seeds(small) if s in sweep.seeds(large)]
    # Same-seed pairs where both ranks were trained with a seed; else the figure's own pair (one draw).
    pairs = [(s, s) for s in seeds] or [(sweep.seeds(small)[0], sweep.seeds(large)[0])]
    seeds = seeds or [pairs[0][0]]
    pooled = _pooled(sweep, factor, small, large, pairs)
    kinds = []
    for kind, x in pooled.items():  # x: (seeds, layers, 2)
        kinds.append(
            KindOverlap(
                kind=kind,
                n=space_dim(sweep, layer, kind, factor),
                phi_11=seed_interval(x[..., 0]),
                phi_kk=seed_interval(x[..., 1]),
                decay=seed_interval(x[..., 0] - x[..., 1]),
            )
        )
    init = init_control(sweep, sweep.run(small, pairs[0][0]), sweep.run(large, pairs[0][1]), layer)
    return RankOverlap(factor, small, large, layer, seeds, sweep.layers, kinds, init)


def fig3(sweep: Sweep, factor: str = "A", small=None, large=None, layer=None) -> Artifact | Skipped:
    pair = rank_pair(sweep, small, large)
    name = f"fig3_rank_similarity_{factor}"
    if isinstance(pair, str):
        return Skipped(name, pair)
    small, large = pair
    layer = sweep.middle_layer if layer is None else layer
    grids = pair_grids(sweep, sweep.run(small), sweep.run(large), factor, [layer])
    F = get_factor(factor).tex
    panels, floors, rows = {}, {}, []
    for (_, kind), g in grids.items():
        panels[kind_label(kind)] = g
        floors[kind_label(kind)] = random_phi_baseline(*g.shape, space_dim(sweep, layer, kind, factor))
    for (_, kind), g in grids.items():
        title = f"{kind_label(kind)} (i, j ≤ {small}, j ≤ i)"
        panels[title] = lower_triangle(g, small)
        floors[title] = floors[kind_label(kind)][:small, :small]
    for (_, kind), g in grids.items():
        rows.append(long_grid(g, layer=layer, module=kind, r_small=small, r_large=large))
    fig, _ = plot_phi(
        panels,
        ncols=len(panels),
        floors=floors,
        suptitle=f"{sweep.name}, layer {layer}: "
        + rf"$\phi$({F}$_{{r={small}}}$, {F}$_{{r={large}}}$, i, j); {FLOOR_NOTE} max(i, j)/n",
    )
    result = rank_overlap(sweep, factor, small, large, layer)
    return Artifact(name, pd.concat(rows, ignore_index=True), fig=fig, result=result)


def fig3_section(arts: dict[str, Artifact | Skipped]) -> list[str]:
    out = ["## Fig. 3: the top directions of a small and a large rank overlap", ""]
    made = [a.result for a in arts.values() if isinstance(a, Artifact)]
    if not made:
        return out + next(iter(arts.values())).lines()
    f = made[0]
    k = f.small
    out += [
        f"φ(X_r={k}, X_r={f.large}, i, j), mean over the seeds both ranks were trained with "
        f"({', '.join(map(str, f.seeds))}) and over all {len(f.layers)} layers, with a 95 % stratified "
        "bootstrap interval over seeds (layers as strata). The paper (GPT-3, r = 8 vs 64): φ(1, 1) > 0.5, "
        f"decaying for larger i. Tested: φ(1, 1)'s interval above {SHARED}, and φ(1, 1) − φ({k}, {k}) "
        "above 0. Analytic random floor E[φ(i, j)] = max(i, j)/n.",
        "",
        f"| factor | module | φ(1,1) | floor(1,1) | φ({k},{k}) | floor({k},{k}) | effect φ(1,1)/floor "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = {}
    for r in made:
        parts = []
        for ko in r.kinds:
            parts.append(ko.verdict)
            out.append(
                f"| {get_factor(r.factor).text} | {kind_label(ko.kind)} | {interval(ko.phi_11)} | "
                f"{fmt(1 / ko.n)} | {interval(ko.phi_kk)} | {fmt(k / ko.n)} | "
                f"{fmt(ko.phi_11.mean * ko.n)}× | {ko.verdict} |"
            )
        verdicts[r.factor] = verdict(parts)
    text = "; ".join(f"{get_factor(f).text}: {v}" for f, v in verdicts.items())
    return out + ["", f"Verdict: {text}.", ""]
