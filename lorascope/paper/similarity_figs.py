"""The paper's subspace-similarity figures (Section 7.2, Appendix H.2):

    Fig. 3   (`rank_overlap`, with its finding)
    Fig. 4   (`seed_overlap`, with its finding)
    Fig. 6   Fig. 3 across layers: the mean φ over the seeds both ranks share
    Fig. 7   Fig. 4 across layers: the mean φ over every pair of seeds at one rank
             (cells where the mean φ does not exceed its floor max(i, j)/n hatched)

Each takes a factor: "A" (the paper's), "dA" (A − A0, the learned part of A) or "dW-right"
(ΔW's input-side singular vectors), since after short training A may still be mostly its init.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd

from lorascope.analysis.factors import get_factor
from lorascope.analysis.nulls import gaussian_phi_draws
from lorascope.analysis.plots import FLOOR_NOTE, plot_phi
from lorascope.analysis.similarity import grid_frame, long_grid, random_phi_baseline, subspace_similarity
from lorascope.analysis.stats import N_NULL, Interval, pair_interval, seed_interval
from lorascope.compare.pairs import run_similarity
from lorascope.names import kind_label, layer_index, module_kind
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import ONE_PAIR, ONE_SEED, fmt, interval


def rank_pair(sweep: Sweep, small: int | None = None, large: int | None = None) -> tuple[int, int] | str:
    """(small, large) ranks to compare: the paper's 8 and 64 when present, else the two largest ranks
    above 1 (a rank-1 subspace has a single direction); a reason string if the sweep has too few ranks."""
    ranks = sweep.ranks
    large = large or ranks[-1]
    if small is None:
        below = [r for r in ranks if r < large]
        if not below:  # one rank (or none below the one asked for): nothing to compare it with
            return f"needs two ranks (has {ranks}): run `python sweep.py rank=8,64`"
        small = 8 if 8 in below else max([r for r in below if r > 1] or below)
    for r in (small, large):
        if r not in ranks:
            return f"rank {r} is not in the sweep (ranks: {ranks})"
    if small >= large:
        return f"needs two ranks (has {ranks}): run `python sweep.py rank=8,64`"
    return small, large


def seed_rank(sweep: Sweep, rank: int | None = None) -> int | str:
    """The rank to compare seeds at: the largest one trained with two seeds."""
    candidates = [r for r in sweep.ranks if len(sweep.seeds(r)) >= 2]
    if rank is not None:
        candidates = [r for r in candidates if r == rank]
    if not candidates:
        r = rank or sweep.ranks[-1]
        return f"needs a second seed at rank {r}: run `python sweep.py rank={r} seed=1`"
    return candidates[-1]


def pair_grids(
    sweep: Sweep, run_a, run_b, factor: str, layers: list[int]
) -> dict[tuple[int, str], pd.DataFrame]:
    """φ grids of two runs for every (layer, kind) in `layers`."""
    sim = run_similarity(run_a, run_b, factor=factor, layers=layers)
    return {(layer_index(m), module_kind(m)): g for m, g in sim.grids.items() if m in sweep.modules}


def lower_triangle(grid: pd.DataFrame, k: int) -> pd.DataFrame:
    """The top-left k × k block with j > i blanked: the paper's zoomed panels of Figure 3."""
    return grid.iloc[:k, :k].mask(np.triu(np.ones((k, k), dtype=bool), 1))


def _layers(sweep: Sweep, layers: list[int] | None, max_layers: int = 6) -> list[int]:
    """Evenly spread layers, at most `max_layers`, as the paper picks 1, 32, 64, 96 of 96."""
    if layers:
        return layers
    all_layers = sweep.layers
    if len(all_layers) <= max_layers:
        return all_layers
    idx = np.linspace(0, len(all_layers) - 1, max_layers).round().astype(int)
    return [all_layers[i] for i in sorted(set(idx))]


def _diag(grid: pd.DataFrame) -> list[float]:
    return [float(v) for v in np.diag(grid.to_numpy())]


def init_control(sweep: Sweep, run_a, run_b, layer: int) -> dict[str, dict]:
    """The control for every module a figure uses: φ between the two runs' random initial A0.

    Independent initialisations give φ(1, 1) near the random floor 1/n; a value far above it means
    the runs started from related A0, and φ of A then shows what training did not cause."""
    out = {}
    if run_a.init is None or run_b.init is None:
        return out
    for kind in sweep.kinds:
        m = sweep.module(layer, kind)
        if m in run_a.init and m in run_b.init:
            phi = subspace_similarity(run_a.init[m].A, run_b.init[m].A)
            out[kind] = {"phi_11": float(phi[0, 0]), "n": run_a.init[m].A.shape[1]}
    return out


def space_dim(sweep: Sweep, layer: int, kind: str, factor: str) -> int:
    """n, the dimension of the space the factor's bases live in, for this module."""
    return get_factor(factor).dim(next(iter(sweep.runs.values())).adapters[sweep.module(layer, kind)])


def gaussian_grid(rank: int, n: int, factor: str, seed: int = 0, n_draws: int = N_NULL) -> pd.DataFrame:
    """The mean φ grid of `n_draws` pairs of random Gaussian matrices shaped like the factor, in R^n
    (the paper's Fig. 4, right, shows one draw; its mean is the null such a panel stands for)."""
    side = get_factor(factor).side
    shape = (n, rank) if side == "left" else (rank, n)
    return grid_frame(gaussian_phi_draws(shape, n_draws, seed, side).mean(axis=0))


def _across_layers(
    sweep: Sweep, name: str, pairs: list, factor: str, layers, title: str, top: Callable
) -> Artifact:
    """φ at each (kind, layer), the mean over `pairs` of runs [(run_a, run_b), ...]; cells where the
    mean does not exceed the floor max(i, j)/n hatched (E φ of random subspaces is the floor, so of a
    mean over pairs too). top: φ(1, 1) per pair (n_pairs,) -> its Interval over seeds, in each title."""
    layers = _layers(sweep, layers)
    grids = [pair_grids(sweep, a, b, factor, layers) for a, b in pairs]
    panels, floors, rows = {}, {}, []
    for kind in sweep.kinds:  # one row of panels per kind, one column per layer
        for layer in layers:
            every = np.stack([g[(layer, kind)].to_numpy() for g in grids])  # (pairs, r1, r2)
            g = grid_frame(every.mean(axis=0))
            ci = top(every[:, 0, 0])
            shown = interval(ci) if ci.has_interval else fmt(ci.mean)  # the suptitle says why not
            title_ = f"{kind_label(kind)}, layer {layer}\nφ(1,1) = {shown}"
            n = space_dim(sweep, layer, kind, factor)
            panels[title_], floors[title_] = g, random_phi_baseline(*g.shape, n)
            frame = long_grid(g, layer=layer, module=kind, pairs=len(pairs))
            frame["sd"] = every.std(axis=0, ddof=1).ravel() if len(pairs) > 1 else np.nan
            frame["floor"] = floors[title_].ravel()
            frame["phi11_lo"], frame["phi11_hi"] = ci.lo, ci.hi
            rows.append(frame)
    r1, r2 = next(iter(panels.values())).shape
    ncols = len(layers) if r2 <= 2 * r1 else min(len(layers), 3)  # wide grids (8 × 64): fewer per row
    why = "" if ci.has_interval else f" ({ONE_SEED if ci.n_seeds < 2 else ONE_PAIR})"
    title += f"; φ(1,1): mean [95 % interval over seeds]{why}; {FLOOR_NOTE} max(i, j)/n"
    fig, _ = plot_phi(panels, ncols=ncols, suptitle=title, floors=floors)
    return Artifact(name, pd.concat(rows, ignore_index=True), fig=fig)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def fig6(sweep: Sweep, factor: str = "A", small=None, large=None, layers=None) -> Artifact | Skipped:
    """Fig. 3 across layers: the mean φ over the seeds both ranks were trained with (seed s of the
    small rank against seed s of the large one), else the two runs' lowest seeds."""
    name = f"fig6_layers_rank_similarity_{factor}"
    pair = rank_pair(sweep, small, large)
    if isinstance(pair, str):
        return Skipped(name, pair)
    small, large = pair
    seeds = [s for s in sweep.seeds(small) if s in sweep.seeds(large)]
    if seeds:
        runs = [(sweep.run(small, s), sweep.run(large, s)) for s in seeds]
        what = f"mean over {_plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))}) both ranks share"
    else:  # no seed trained both ranks: the figure's own pair, one draw
        a, b = sweep.seeds(small)[0], sweep.seeds(large)[0]
        runs, what = [(sweep.run(small, a), sweep.run(large, b))], f"seed {a} vs seed {b} (no shared seed)"
    F = get_factor(factor).tex
    title = (
        f"{sweep.name}: " + rf"$\phi$({F}$_{{r={small}}}$, {F}$_{{r={large}}}$, i, j) across layers, {what}"
    )
    return _across_layers(sweep, name, runs, factor, layers, title, seed_interval)


def fig7(sweep: Sweep, factor: str = "A", rank=None, layers=None) -> Artifact | Skipped:
    """Fig. 4 across layers: the mean φ over every pair of seeds at one rank."""
    name = f"fig7_layers_seed_similarity_{factor}"
    rank = seed_rank(sweep, rank)
    if isinstance(rank, str):
        return Skipped(name, rank)
    seeds = sweep.seeds(rank)
    pairs = list(itertools.combinations(seeds, 2))
    F = get_factor(factor).tex
    title = (
        f"{sweep.name}: " + rf"$\phi$({F}$_{{r={rank}}}$ seed a, seed b, i, j) across layers, mean over "
        f"{_plural(len(pairs), 'pair')} of {_plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))})"
    )
    runs = [(sweep.run(rank, a), sweep.run(rank, b)) for a, b in pairs]

    def top(values: np.ndarray) -> Interval:  # φ(1, 1) per pair -> the (S, S) matrix pair_interval reads
        S, M = len(seeds), np.full((len(seeds), len(seeds)), np.nan)
        for (ia, ib), v in zip(itertools.combinations(range(S), 2), values, strict=True):
            M[ia, ib] = v
        return pair_interval(M)

    return _across_layers(sweep, name, runs, factor, layers, title, top)


def random_floor(i: int, j: int, n: int) -> float:
    """E[φ(i, j)] for independent uniformly random subspaces of R^n."""
    return float(random_phi_baseline(i, j, n)[i - 1, j - 1])
