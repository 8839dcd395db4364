"""Does a low-rank adapter find the top directions of the full update? (a sweep trained with
`method=lora,full`)

fig_lora_vs_full    φ(U_r, V_j) with U_r a LoRA rank's top-r directions of ΔW and V_j full fine-tuning's
                    top-j, on the input and the output side, normalised by the random floor as
                    (φ − floor)/(1 − floor), floor = max(r, j)/n, so chance reads 0 for every r (for
                    j ≥ r: how much of LoRA's top-r lies in full's top-j; for j < r the reverse). Each
                    curve is the mean over LoRA seeds (seed s against full seed s, else the lowest full
                    seed) and layers, with a 95 % stratified bootstrap band over seeds (layers as strata);
                    the grey band is 95 % of the same mean over random subspaces, normalised alike.
                    The finding: φ(1, 1), mean [lo, hi] over seeds; LoRA's top direction is found when
                    its interval lies above FOUND.

The spectrum (`spectrum_figs`) and intruder (`intruder_figs`) recipes compare the same runs; they are
re-exported here, where the recipes look for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lorascope.analysis.nulls import random_subspace_phi_draws
from lorascope.analysis.similarity import phi_grid, random_phi_baseline
from lorascope.analysis.stats import N_NULL, Interval, NullSummary, null_summary, seed_interval
from lorascope.names import kind_label, layer_index, module_kind
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.full_pairs import NO_FULL, pairing_note, seed_pairs
from lorascope.paper.intruder_figs import per_column
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import decide

TOP_J = 64  # full fine-tuning's top directions compared with LoRA's (its ΔW has min(out, in) of them)
SIDES = ("input", "output")  # ΔW's right (V) and left (U) singular vectors: factors dW-right, dW-left
FOUND = 0.5  # φ(1, 1) above this: LoRA's top direction lies mostly in full fine-tuning's top direction


@dataclass(frozen=True)
class Curve:
    """One (kind, side, LoRA rank): φ(r, j) against full's top-j, over seed pairs and layers."""

    kind: str
    side: str
    rank: int
    n: int
    pairs: list[tuple[int, int]]  # (LoRA seed, full seed)
    phi: np.ndarray  # (n_pairs, n_layers, J): φ(r, j), j = 1..J
    phi_11: Interval  # φ(1, 1): LoRA's top direction against full's
    null_11: NullSummary  # φ(1, 1) of random subspaces, the same mean over pairs and layers
    phi_rr: Interval | None  # φ(r, r), None when r > J
    normalised: list[Interval]  # (φ(r, j) − floor) / (1 − floor), j = 1..J
    null_band: np.ndarray  # (2, J): 2.5 and 97.5 percentiles of the normalised random mean

    @property
    def floor(self) -> np.ndarray:
        """max(r, j)/n, j = 1..J."""
        return random_phi_baseline(self.rank, self.phi.shape[-1], self.n)[-1]

    @property
    def verdict(self) -> str:
        return decide(self.phi_11, FOUND)


@dataclass(frozen=True)
class LoraVsFull:
    curves: list[Curve]
    layers: list[int]
    note: str  # how LoRA seeds were paired with full seeds ('' when all same-seed)


def _normalise(phi, floor):
    return (phi - floor) / np.clip(1 - floor, 1e-12, None)


def _sides(delta, k: int | None = None) -> dict[str, object]:
    """{"input": V (in, k), "output": U (out, k)}: ΔW's top-k singular vectors of each side, one SVD
    (the bases of the factors dW-right and dW-left)."""
    U, _, V = delta.svd(k)
    return {"input": V, "output": U}


def _grids(sweep: Sweep, rank: int, bases: dict) -> tuple[dict, dict]:
    """(kind, side) -> (n_pairs, n_layers, r, J) φ grids of LoRA's top-r against full's top-J, and
    (kind, side) -> n, the dimension of that side. `bases` caches full's bases across ranks."""
    out: dict[tuple[str, str], list] = {}
    dims: dict[tuple[str, str], int] = {}
    modules = sorted(sweep.modules, key=lambda m: layer_index(m) or 0)
    for s, f in seed_pairs(sweep, rank):
        lora, full = sweep.run(rank, s), sweep.full[f]
        per: dict[tuple[str, str], list] = {}
        for m in modules:
            if (f, m) not in bases:
                bases[(f, m)] = _sides(full.adapters[m], TOP_J)
            mine = _sides(lora.adapters[m])
            for side in SIDES:
                V = bases[(f, m)][side]
                per.setdefault((module_kind(m), side), []).append(phi_grid(mine[side], V))
                dims[(module_kind(m), side)] = V.shape[0]
        for key, grids in per.items():
            out.setdefault(key, []).append(grids)
    return {key: np.asarray(v) for key, v in out.items()}, dims


def lora_vs_full(sweep: Sweep, n_draws: int = N_NULL) -> LoraVsFull:
    """Every (kind, side, LoRA rank): φ(r, j) of LoRA seed s against full seed `full_seed(s)` at every
    layer, j < n; its mean over (seed, layer) cells normalised by the floor max(r, j)/n, with a
    stratified bootstrap interval over seeds per j, and the null of that mean over `cells` random
    subspaces (`n_draws` draws), normalised alike."""
    curves, bases = [], {}
    for rank in sweep.ranks:
        pairs = seed_pairs(sweep, rank)
        grids, dims = _grids(sweep, rank, bases)
        for (kind, side), g in grids.items():  # g: (pairs, layers, r, J)
            n, cells = dims[(kind, side)], g.shape[0] * g.shape[1]
            J = min(g.shape[-1], n - 1)  # j = n spans R^n: φ = floor = 1, nothing to normalise
            g = g[..., :J]
            floor = random_phi_baseline(rank, J, n)[-1]
            phi = g[:, :, -1, :]  # row i = r
            null = _normalise(random_subspace_phi_draws(n, rank, J, n_draws, cells, seed=rank), floor)
            phi_11 = seed_interval(g[:, :, 0, 0])
            curves.append(
                Curve(
                    kind=kind_label(kind),
                    side=side,
                    rank=rank,
                    n=n,
                    pairs=pairs,
                    phi=phi,
                    phi_11=phi_11,
                    null_11=null_summary(
                        phi_11.mean, random_subspace_phi_draws(n, 1, 1, n_draws, cells, seed=1)[:, 0]
                    ),
                    phi_rr=seed_interval(g[:, :, rank - 1, rank - 1]) if rank <= J else None,
                    normalised=per_column(_normalise(phi, floor)),
                    null_band=np.quantile(null, [0.025, 0.975], axis=0),
                )
            )
    return LoraVsFull(curves, sweep.layers, pairing_note(sweep))


def lora_vs_full_frame(result: LoraVsFull) -> pd.DataFrame:
    """The figure's numbers, one row per (kind, side, rank, j): φ(r, j) (mean over seeds and layers),
    the floor max(r, j)/n, the normalised curve with its 95 % interval, and the random band."""
    rows = []
    for c in result.curves:
        J = c.phi.shape[-1]
        rows.append(
            pd.DataFrame(
                {
                    "kind": c.kind,
                    "side": c.side,
                    "rank": c.rank,
                    "n": c.n,
                    "j": np.arange(1, J + 1),
                    "phi": c.phi.mean(axis=(0, 1)),
                    "floor": c.floor,
                    "phi_normalised": [ci.mean for ci in c.normalised],
                    "lo": [ci.lo for ci in c.normalised],
                    "hi": [ci.hi for ci in c.normalised],
                    "random_lo": c.null_band[0],
                    "random_hi": c.null_band[1],
                    "seeds": len(c.pairs),
                    "layers": c.phi.shape[1],
                }
            )  # fmt: skip
        )
    return pd.concat(rows, ignore_index=True)


def fig_lora_vs_full(sweep: Sweep, n_draws: int = N_NULL) -> Artifact | Skipped:
    if not sweep.full:
        return Skipped("fig_lora_vs_full", NO_FULL)
    result = lora_vs_full(sweep, n_draws)
    kinds = list(dict.fromkeys(c.kind for c in result.curves))
    ranks = sweep.ranks
    colors = dict(zip(ranks, plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(ranks))), strict=True))
    fig, axes = plt.subplots(len(kinds), len(SIDES), figsize=(10, 3.3 * len(kinds) + 0.4), squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)  # fmt: skip
    for row, kind in zip(axes, kinds, strict=True):
        for ax, side in zip(row, SIDES, strict=True):
            here = [c for c in result.curves if c.kind == kind and c.side == side]
            j = np.arange(1, here[0].phi.shape[-1] + 1)
            # Each rank's random band is centred on 0; the widest is drawn, so no curve's chance is hidden.
            lo = np.min([c.null_band[0] for c in here], axis=0)
            hi = np.max([c.null_band[1] for c in here], axis=0)
            ax.fill_between(j, lo, hi, color="0.6", alpha=0.35, lw=0, label="random subspaces (95 %)")
            ax.axhline(0.0, color="0.4", lw=0.8, ls=":")
            for c in here:
                mean = [ci.mean for ci in c.normalised]
                n_seeds = len(c.pairs)
                label = f"LoRA r = {c.rank} ({n_seeds} seed{'s' if n_seeds > 1 else ''})"
                ax.plot(j, mean, color=colors[c.rank], lw=1.4, label=label)
                if c.normalised[0].has_interval:
                    ax.fill_between(j, [ci.lo for ci in c.normalised], [ci.hi for ci in c.normalised],
                                    color=colors[c.rank], alpha=0.2, lw=0)  # fmt: skip
            ax.set(xscale="log", ylim=(-0.08, 1.02), title=f"{kind}: {side} side")
            ticks = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= j[-1]]
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.grid(alpha=0.3, lw=0.5)
        row[0].set_ylabel(r"$(\phi - \mathrm{floor}) / (1 - \mathrm{floor})$")
    for ax in axes[-1]:
        ax.set_xlabel("j (top directions of full fine-tuning's ΔW)")
    axes[0, 0].legend(fontsize=7, frameon=False, loc="upper right")
    note = f"\n{result.note}" if result.note else ""
    fig.suptitle(
        f"{sweep.name}: φ(r, j) between LoRA's top-r and full fine-tuning's top-j directions (j ≥ r: LoRA's "
        "inside full's; j < r: full's inside LoRA's),\nnormalised by the floor max(r, j)/n; mean over seeds "
        f"and {len(result.layers)} layers, band: 95 % bootstrap interval over seeds{note}", fontsize=9,
    )  # fmt: skip
    return Artifact("fig_lora_vs_full", lora_vs_full_frame(result), fig=fig, result=result)
