"""Fig. 4 and its finding: seeds share a few top directions; random matrices share none.

The figure: φ between two seeds at one rank and layer, beside the mean φ of N_NULL pairs of random
Gaussian matrices of the same shape (not one draw: one draw of the 8 × 8 block mean sits anywhere
within ± 3 sd), cells at or below the floor max(i, j)/n hatched. The finding pools every pair of
seeds and every layer: φ(1, 1) and the mean φ over the top b × b block (b = min(8, r)), with a
bootstrap over seeds (`pair_interval`: 3 seeds for an interval), against the Gaussian null's 95th
percentile; the block mean's analytic floor is the mean of max(i, j)/n over the block (0.0151 for
b = 8, n = 384, not the corner's 8/n). W_q against W_v: the per-pair difference of block means.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lorascope.analysis.factors import get_factor
from lorascope.analysis.nulls import gaussian_phi_draws
from lorascope.analysis.plots import FLOOR_NOTE, plot_phi
from lorascope.analysis.similarity import block_mean_floor, grid_frame, long_grid, random_phi_baseline
from lorascope.analysis.stats import N_NULL, Interval, NullSummary, null_summary, pair_interval
from lorascope.compare.pairs import run_similarity
from lorascope.names import kind_label, layer_index, module_kind
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.similarity_figs import init_control, pair_grids, seed_rank, space_dim
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import ABOVE_TEXT, decide, fmt, interval, null, verdict

BLOCK = 8  # the top-left block whose mean φ compares W_q with W_v


@dataclass(frozen=True)
class KindShare:
    kind: str
    n: int
    phi_11: Interval
    block: Interval  # mean φ over the top b × b block
    null_11: NullSummary  # Gaussian pairs' φ(1, 1), observed = phi_11.mean
    null_block: NullSummary
    block_floor: float  # analytic E[block mean]


@dataclass(frozen=True)
class SeedShare:
    factor: str
    rank: int
    seeds: list[int]
    layer: int
    b: int
    kinds: list[KindShare]
    q_minus_v: Interval | None  # block mean of W_q − W_v, per seed pair and layer
    init: dict


def _by_pair(sweep: Sweep, factor: str, rank: int, seeds: list[int], b: int) -> dict[str, np.ndarray]:
    """kind -> (S, S, n_layers, 2): φ(1, 1) and the b × b block mean for every seed pair (nan on and
    below the diagonal)."""
    S = len(seeds)
    out: dict[str, np.ndarray] = {}
    for (ia, a), (ib, c) in itertools.combinations(enumerate(seeds), 2):
        sim = run_similarity(sweep.run(rank, a), sweep.run(rank, c), factor=factor)
        grids = sorted(((m, g) for m, g in sim.grids.items() if m in sweep.modules),
                       key=lambda kv: layer_index(kv[0]) or 0)  # fmt: skip
        per: dict[str, list] = {}
        for m, g in grids:
            v = g.to_numpy()
            per.setdefault(module_kind(m), []).append((v[0, 0], v[:b, :b].mean()))
        for kind, rows in per.items():
            arr = out.setdefault(kind, np.full((S, S, len(rows), 2), np.nan))
            arr[ia, ib] = rows
    return out


def seed_share(sweep: Sweep, factor: str, rank: int, layer: int, n_draws: int = N_NULL) -> SeedShare:
    seeds = sweep.seeds(rank)
    b = min(BLOCK, rank)
    side = get_factor(factor).side
    kinds, blocks = [], {}
    for kind, x in _by_pair(sweep, factor, rank, seeds, b).items():
        n = space_dim(sweep, layer, kind, factor)
        draws = gaussian_phi_draws((rank, n) if side == "right" else (n, rank), n_draws, side=side)
        phi_11, block = pair_interval(x[..., 0]), pair_interval(x[..., 1])
        blocks[kind] = x[..., 1]
        kinds.append(
            KindShare(
                kind=kind,
                n=n,
                phi_11=phi_11,
                block=block,
                null_11=null_summary(phi_11.mean, draws[:, 0, 0]),
                null_block=null_summary(block.mean, draws[:, :b, :b].mean(axis=(1, 2))),
                block_floor=block_mean_floor(b, b, n),
            )
        )
    q = next((blocks[k] for k in blocks if kind_label(k) in ("query", "q_proj", "q")), None)
    v = next((blocks[k] for k in blocks if kind_label(k) in ("value", "v_proj", "v")), None)
    qv = pair_interval(q - v) if q is not None and v is not None else None
    init = init_control(sweep, sweep.run(rank, seeds[0]), sweep.run(rank, seeds[1]), layer)
    return SeedShare(factor, rank, seeds, layer, b, kinds, qv, init)


def fig4(sweep: Sweep, factor: str = "A", rank=None, layer=None, n_draws: int = N_NULL) -> Artifact | Skipped:
    name = f"fig4_seed_similarity_{factor}"
    rank = seed_rank(sweep, rank)
    if isinstance(rank, str):
        return Skipped(name, rank)
    s1, s2 = sweep.seeds(rank)[:2]
    layer = sweep.middle_layer if layer is None else layer
    grids = pair_grids(sweep, sweep.run(rank, s1), sweep.run(rank, s2), factor, [layer])
    side = get_factor(factor).side
    panels, floors, rows, dims = {}, {}, [], set()
    for (_, kind), g in grids.items():
        n = space_dim(sweep, layer, kind, factor)
        dims.add(n)
        title = f"{kind_label(kind)}: seed {s1} vs {s2}"
        panels[title], floors[title] = g, random_phi_baseline(*g.shape, n)
        rows.append(long_grid(g, layer=layer, module=kind, pair=f"seed {s1} vs {s2}"))
    # One random panel per space the modules live in (GQA's k/v outputs are not q's): the mean of
    # n_draws Gaussian pairs, the null the finding tests against.
    for n in sorted(dims, reverse=True):
        shape = (rank, n) if side == "right" else (n, rank)
        gauss = grid_frame(gaussian_phi_draws(shape, n_draws, side=side).mean(axis=0))
        title = f"random Gaussian ({rank}×{n}), mean of {n_draws}"
        panels[title], floors[title] = gauss, random_phi_baseline(rank, rank, n)
        rows.append(long_grid(gauss, layer=layer, module=f"random gaussian n={n}", pair="gaussian"))
    F = get_factor(factor).tex
    fig, _ = plot_phi(
        panels,
        ncols=len(panels),
        floors=floors,
        suptitle=f"{sweep.name}, layer {layer}: "
        + rf"$\phi$({F}$_{{r={rank}}}$ seed {s1}, seed {s2}, i, j); {FLOOR_NOTE} max(i, j)/n",
    )
    result = seed_share(sweep, factor, rank, layer, n_draws)
    return Artifact(name, pd.concat(rows, ignore_index=True), fig=fig, result=result)


def fig4_section(arts: dict[str, Artifact | Skipped]) -> list[str]:
    out = ["## Fig. 4: two seeds share a few top directions; random matrices share none", ""]
    made = [a.result for a in arts.values() if isinstance(a, Artifact)]
    if not made:
        return out + next(iter(arts.values())).lines()
    f = made[0]
    b = f.b
    out += [
        f"φ between the seeds {', '.join(map(str, f.seeds))} at r = {f.rank}: mean over every pair of seeds "
        f"and all layers, with a 95 % bootstrap interval over seeds (needs 3 seeds: one pair gives none). "
        f"Null: {made[0].kinds[0].null_11.n_draws} pairs of random Gaussian matrices of the same shape; "
        f"the seeds share a direction when the interval lies {ABOVE_TEXT}. Analytic floors: 1/n for "
        f"φ(1, 1), the mean of max(i, j)/n over the block for the top {b}×{b} mean.",
        "",
        f"| factor | module | φ(1,1) | null φ(1,1) | mean φ, top {b}×{b} | null | analytic floor | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines = []
    for r in made:
        parts = []
        for ks in r.kinds:
            v = verdict([decide(ks.phi_11, ks.null_11.q95), decide(ks.block, ks.null_block.q95)])
            parts.append(v)
            out.append(
                f"| {get_factor(r.factor).text} | {kind_label(ks.kind)} | {interval(ks.phi_11)} | "
                f"{null(ks.null_11)} | {interval(ks.block)} | {null(ks.null_block)} | {fmt(ks.block_floor)} "
                f"| {v} |"
            )
        qv = (
            "not testable (no q and v modules)"
            if r.q_minus_v is None
            else f"{interval(r.q_minus_v)}: {decide(r.q_minus_v, 0.0)}"
        )
        lines.append(
            f"- {get_factor(r.factor).text}: the seeds share their top directions: "
            f"{'; '.join(f'{kind_label(k.kind)} {p}' for k, p in zip(r.kinds, parts, strict=True))}; "
            f"W_q shares more than W_v (block mean q − v): {qv}."
        )
    return out + ["", *lines, ""]
