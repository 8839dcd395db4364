"""How low-rank is ΔW? Its spectrum for each LoRA rank beside full fine-tuning, over seeds.

fig_spectrum        σ_k/σ_1 of ΔW and its cumulative energy at one layer, mean over seeds (band: 95 %
                    bootstrap interval over seeds), beside a same-shape N(0, 1) matrix, the control
table_energy_rank   the rank holding 90 % of ΔW's energy (and the stable and effective ranks) per method
                    and kind: mean over seeds and layers with a 95 % stratified bootstrap interval over
                    seeds (layers as strata)

The finding (Biderman et al. 2024): full fine-tuning's 90 %-energy rank is ≥ 10× a typical LoRA rank,
read from its interval over full seeds; and below the Gaussian control's, where ΔW has structure at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lorascope.analysis.nulls import gaussian_energy_rank
from lorascope.analysis.plots import method_styles
from lorascope.analysis.stats import Interval, seed_interval
from lorascope.compare.spectra import spectrum_frames
from lorascope.names import kind_label, layer_index, module_kind
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.full_pairs import NO_FULL, seeds_text
from lorascope.paper.intruder_figs import per_column
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import fmt, interval

METRICS = ("energy_rank", "stable_rank", "effective_rank")
TYPICAL_RANK = 8  # "a typical LoRA rank" (the paper's r = 8), when the sweep has it
BIDERMAN = 10.0  # full fine-tuning's 90 %-energy rank ≥ 10× a typical LoRA rank


@dataclass(frozen=True)
class EnergyRank:
    """One (method, kind): the three ranks of ΔW over seeds, layers as strata."""

    method: str  # "r=8" or "full"
    kind: str
    energy_rank: Interval
    stable_rank: Interval
    effective_rank: Interval
    modules: int


@dataclass(frozen=True)
class SpectrumResult:
    rows: list[EnergyRank]
    typical: int  # the LoRA rank full's is compared with
    shapes: dict[str, tuple[int, int]]  # kind -> (out, in)
    gaussian: dict[str, float]  # kind -> 90 %-energy rank of a same-shape N(0, 1) matrix

    def full(self, kind: str) -> EnergyRank:
        return next(r for r in self.rows if r.method == "full" and r.kind == kind)

    def ratio(self, kind: str) -> Interval:
        """Full's 90 %-energy rank / the typical LoRA rank, with its interval."""
        e, t = self.full(kind).energy_rank, self.typical
        return Interval(e.mean / t, e.lo / t, e.hi / t, e.n_seeds, e.level)


def _runs(sweep: Sweep) -> list[tuple[str, int, object]]:
    lora = [(f"r={r}", s, run) for (r, s), run in sweep.runs.items()]
    return [*lora, *(("full", s, run) for s, run in sweep.full.items())]


def spectrum_table(sweep: Sweep) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(metrics, σ) of ΔW for every run (each LoRA rank and seed, each full seed) and module, long
    format with columns method, seed, module, kind, layer; None without a full fine-tuning run."""
    if not sweep.full:
        return None
    tables, sigmas = [], []
    for method, seed, run in _runs(sweep):
        table, sigma = spectrum_frames(run, sweep.modules)
        for frame in (table := table.reset_index(), sigma):
            frame.insert(0, "method", method)
            frame.insert(1, "seed", seed)
            frame["kind"] = frame["module"].map(lambda m: kind_label(module_kind(m)))
            frame["layer"] = frame["module"].map(layer_index)
        tables.append(table)
        sigmas.append(sigma)
    return pd.concat(tables, ignore_index=True), pd.concat(sigmas, ignore_index=True)


def energy_ranks(table: pd.DataFrame) -> list[EnergyRank]:
    """Per (method, kind): each rank over seeds × modules (one module per layer: the strata)."""
    rows = []
    for (method, kind), d in table.groupby(["method", "kind"], sort=False):
        wide = {m: d.pivot(index="seed", columns="module", values=m).to_numpy() for m in METRICS}
        rows.append(EnergyRank(method, kind, *(seed_interval(wide[m]) for m in METRICS), len(d)))
    return rows


def _band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """curves (n_seeds, K) -> mean and the 95 % interval over seeds per k (None for one seed)."""
    cis = per_column(curves[:, None, :]) if len(curves) > 1 else None
    lo, hi = (np.array([c.lo for c in cis]), np.array([c.hi for c in cis])) if cis else (None, None)
    return curves.mean(axis=0), lo, hi


def _draw(ax, k, y, lo, hi, style, label):
    ax.plot(k, y, label=label, marker="o" if len(k) == 1 else None, ms=4, **style)  # r = 1: one point
    if lo is not None:
        ax.fill_between(k, lo, hi, color=style["color"], alpha=0.2, lw=0)


def fig_spectrum(sweep: Sweep, layer=None) -> list[Artifact | Skipped]:
    frames = spectrum_table(sweep)
    if frames is None:
        return [Skipped("fig_spectrum", NO_FULL)]
    table, sigmas = frames
    layer = sweep.middle_layer if layer is None else layer
    full = sweep.full[min(sweep.full)]
    shapes = {kind_label(k): tuple(full.adapters[sweep.module(layer, k)].shape) for k in sweep.kinds}
    typical = TYPICAL_RANK if TYPICAL_RANK in sweep.ranks else sweep.ranks[len(sweep.ranks) // 2]
    result = SpectrumResult(
        energy_ranks(table), typical, shapes, {k: gaussian_energy_rank(s) for k, s in shapes.items()}
    )
    methods = list(dict.fromkeys(table["method"]))
    styles = method_styles(methods)
    fig, axes = plt.subplots(len(sweep.kinds), 2, figsize=(10, 3.4 * len(sweep.kinds) + 0.3), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    for row, kind in zip(axes, sweep.kinds, strict=True):
        m, label = sweep.module(layer, kind), kind_label(kind)
        for method in methods:
            d = sigmas[(sigmas.method == method) & (sigmas.module == m)]
            s = d.pivot(index="seed", columns="k", values="sigma").to_numpy()  # (n_seeds, K)
            if not s.size or (s[:, 0] <= 0).any():
                continue
            k = np.arange(1, s.shape[1] + 1)
            er = next(r for r in result.rows if r.method == method and r.kind == label).energy_rank
            n = len(s)
            _draw(row[0], k, *_band(s / s[:, :1]), styles[method], f"{method} ({n} seed{'s' * (n > 1)})")
            energy = np.cumsum(s**2, axis=1) / np.sum(s**2, axis=1, keepdims=True)
            k90 = interval(er) if er.has_interval else fmt(er.mean)
            _draw(row[1], k, *_band(energy), styles[method], f"{method}: $k_{{90}}$ = {k90}")
        # The control: a same-shape N(0, 1) matrix, an update with no low-rank structure at all.
        g = np.linalg.svd(np.random.default_rng(0).standard_normal(shapes[label]), compute_uv=False)
        k = np.arange(1, len(g) + 1)
        out_dim, in_dim = shapes[label]
        row[0].plot(k, g / g[0], color="0.6", ls="--", lw=1, label=f"Gaussian {out_dim}×{in_dim}")
        row[1].plot(k, np.cumsum(g**2) / np.sum(g**2), color="0.6", ls="--", lw=1,
                    label=f"Gaussian (control): $k_{{90}}$ = {fmt(result.gaussian[label])}")  # fmt: skip
        row[1].axhline(0.9, color="0.5", ls="--", lw=1)
        row[0].set(xscale="log", yscale="log", xlabel="k", ylabel=r"$\sigma_k / \sigma_1$",
                   title=f"{label}, layer {layer}: singular values of $\\Delta W$")  # fmt: skip
        row[1].set(xscale="log", ylim=(0, 1.02), xlabel="k", ylabel="cumulative energy",
                   title=f"{label}, layer {layer}: cumulative energy ($k_{{90}}$: all layers)")  # fmt: skip
        row[0].legend(fontsize=7, frameon=False, loc="lower left")
        row[1].legend(fontsize=7, frameon=False, loc="lower right")
        for ax in row:
            ax.grid(alpha=0.3, lw=0.5)
    fig.suptitle(
        f"{sweep.name}: the spectrum of $\\Delta W$, LoRA ranks beside full fine-tuning; mean over seeds "
        f"(band: 95 % interval over seeds)\n{seeds_text(sweep)}; $k_{{90}}$: mean over seeds and layers "
        "[95 % interval]", fontsize=10,
    )  # fmt: skip
    energy = pd.DataFrame(
        [
            {"method": r.method, "kind": r.kind, "seeds": r.energy_rank.n_seeds, "modules": r.modules,
             **{f"{m}{end}": getattr(getattr(r, m), a) for m in METRICS
                for end, a in (("", "mean"), ("_lo", "lo"), ("_hi", "hi"))}}
            for r in result.rows
        ]
    )  # fmt: skip
    caption = (
        f"{sweep.name}: the rank holding 90 % of ΔW's energy (Σσ²), its stable rank ‖ΔW‖²_F/‖ΔW‖²_2 and "
        "effective rank, for each LoRA rank and full fine-tuning: mean over seeds and layers with a 95 % "
        "stratified bootstrap interval over seeds (layers as strata)."
    )
    return [
        Artifact("fig_spectrum", sigmas, fig=fig, result=result),
        Artifact("table_energy_rank", energy, table=energy.set_index(["method", "kind"]), caption=caption,
                 result=result),
    ]  # fmt: skip
