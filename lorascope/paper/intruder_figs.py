"""Intruder dimensions (Shuttleworth et al. 2024) of each LoRA rank beside full fine-tuning, over seeds.

fig_intruders       intruders among the top-k left singular vectors of W + ΔW against ε, per module
                    kind: mean over seeds and layers, band: 95 % stratified bootstrap interval over
                    seeds (layers as strata)
table_intruders     the count at ε = eps per method and kind, mean [lo, hi]

The finding: full fine-tuning has fewer intruders than LoRA, read from the interval of the paired
difference full − LoRA (LoRA seed s against full seed s, else the lowest full seed) at several ε,
since counts this small reverse with ε.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lorascope.analysis.stats import Interval, seed_interval
from lorascope.names import kind_label, layer_index, module_kind
from lorascope.paper.artifact import Artifact
from lorascope.paper.full_pairs import pairing_note, seed_pairs
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import decide

REPORT_EPS = (0.3, 0.5, 0.7, 0.9)  # the ε the finding reports the difference at


@dataclass(frozen=True)
class Counts:
    """One (method, kind): intruder counts over seeds and layers at every ε of the curve."""

    method: str  # "r=8" or "full"
    kind: str
    seeds: list[int]
    eps: np.ndarray  # (E,)
    counts: np.ndarray  # (n_seeds, n_layers, E)
    curve: list[Interval]  # per ε: mean over seeds and layers, interval over seeds

    def at(self, eps: float) -> Interval:
        return self.curve[int(np.argmin(np.abs(self.eps - eps)))]


@dataclass(frozen=True)
class FullMinusLora:
    """One (LoRA rank, kind): full − LoRA intruders per module, paired by seed, at every ε."""

    rank: int
    kind: str
    pairs: list[tuple[int, int]]  # (LoRA seed, full seed)
    eps: np.ndarray
    diff: list[Interval]

    def at(self, eps: float) -> Interval:
        return self.diff[int(np.argmin(np.abs(self.eps - eps)))]

    def verdict(self, eps: float) -> str:
        """'Full fine-tuning has fewer intruders': the interval of full − LoRA below 0."""
        return decide(self.at(eps), 0.0, above=False)

    @property
    def reversals(self) -> list[float]:
        """The ε where the mean difference changes sign (zeros skipped)."""
        out, last = [], 0.0
        for e, ci in zip(self.eps, self.diff, strict=True):
            sign = np.sign(round(ci.mean, 12))
            if sign and last and sign != last:
                out.append(float(e))
            last = sign or last
        return out


@dataclass(frozen=True)
class Intruders:
    k: int
    eps: float  # the table's ε
    counts: list[Counts]
    diffs: list[FullMinusLora]
    note: str  # how LoRA seeds were paired with full seeds


def per_column(x: np.ndarray) -> list[Interval]:
    """x (n_seeds, n_strata, C) -> one stratified interval over seeds per column c (a curve's points)."""
    return [seed_interval(x[..., c]) for c in range(x.shape[-1])]


def _by_run(curve: pd.DataFrame) -> dict[tuple[str, int, str], np.ndarray]:
    """(method, seed, kind) -> (n_layers, E) counts, layers in order."""
    out = {}
    for (method, seed, kind), d in curve.groupby(["method", "seed", "kind"], sort=False):
        wide = d.pivot_table(index="layer", columns="eps", values="count")
        out[(method, int(seed), kind)] = wide.to_numpy()
    return out


def intruder_result(sweep: Sweep, curve: pd.DataFrame, k: int, eps: float) -> Intruders:
    grid = np.sort(curve.eps.unique())
    runs = _by_run(curve)
    kinds = list(dict.fromkeys(curve.kind))
    methods = [*(f"r={r}" for r in sweep.ranks), *(["full"] if sweep.full else [])]
    counts = []
    for method in methods:
        seeds = sorted(sweep.full) if method == "full" else sweep.seeds(int(method[2:]))
        for kind in kinds:
            x = np.stack([runs[(method, s, kind)] for s in seeds])  # (seeds, layers, E)
            counts.append(Counts(method, kind, seeds, grid, x, per_column(x)))
    diffs = []
    for rank in sweep.ranks if sweep.full else []:
        pairs = seed_pairs(sweep, rank)
        for kind in kinds:
            d = np.stack([runs[("full", f, kind)] - runs[(f"r={rank}", s, kind)] for s, f in pairs])
            diffs.append(FullMinusLora(rank, kind, pairs, grid, per_column(d)))
    return Intruders(k, eps, counts, diffs, pairing_note(sweep) if sweep.full else "")


def _runs(sweep: Sweep) -> dict[str, object]:
    runs = {f"r={r}/{s}": run for (r, s), run in sweep.runs.items()}
    return runs | {f"full/{s}": run for s, run in sweep.full.items()}


def _label(frame: pd.DataFrame) -> pd.DataFrame:
    """run 'r=8/0' -> method 'r=8', seed 0; kind and layer from the module name."""
    method, seed = frame.pop("run").str.split("/", expand=True).T.to_numpy()
    frame.insert(0, "run", method)
    frame.insert(1, "seed", seed.astype(int))
    frame.insert(3, "kind", frame["module"].map(lambda m: kind_label(module_kind(m))))
    frame.insert(4, "layer", frame["module"].map(layer_index))
    return frame


def fig_intruders(sweep: Sweep, device: str = "auto", k: int = 10, eps: float = 0.5) -> list[Artifact]:
    """Intruder dimensions of W + ΔW against ε for every LoRA run and every full run of the sweep; the
    figure and tables pool seeds and layers (see the module docstring)."""
    from lorascope.analysis.intruder_plot import plot_intruder_curve
    from lorascope.compare.w_and_delta import intruder_tables

    table, curve = (_label(f) for f in intruder_tables(_runs(sweep), k=k, eps=eps, device=device))
    result = intruder_result(sweep, curve.rename(columns={"run": "method"}), k, eps)
    summary = pd.DataFrame(
        [
            {"run": c.method, "module": c.kind, "eps": e, "count": ci.mean, "lo": ci.lo, "hi": ci.hi,
             "seeds": len(c.seeds)}
            for c in result.counts
            for e, ci in zip(c.eps, c.curve, strict=True)
        ]
    )  # fmt: skip
    note = f"\n{result.note}" if result.note else ""
    title = (
        f"{sweep.name}: intruder dimensions among the top-{k} of W + ΔW,\nmean over seeds and layers "
        f"(band: 95 % interval over seeds){note}"
    )
    seeds = {c.method: len(c.seeds) for c in result.counts}
    labels = {m: f"{m} ({n} seed{'s' if n > 1 else ''})" for m, n in seeds.items()}
    fig, _ = plot_intruder_curve(summary, k=k, eps=eps, by_module=True, title=title, labels=labels)
    at = pd.DataFrame(
        [
            {"run": c.method, "kind": c.kind, "intruders (mean)": c.at(eps).mean, "95 % lo": c.at(eps).lo,
             "95 % hi": c.at(eps).hi, "seeds": len(c.seeds)}
            for c in result.counts
        ]
    )  # fmt: skip
    caption = (
        f"{sweep.name}: intruder dimensions among the top-{k} left singular vectors of W + ΔW at ε = {eps}: "
        "mean over seeds and layers with a 95 % stratified bootstrap interval over seeds (layers as strata)."
    )
    return [
        Artifact("fig_intruders", summary, fig=fig, result=result),
        Artifact("table_intruders", at, table=at.set_index(["run", "kind"]), caption=caption, result=result),
        Artifact("table_intruders_all_modules", table, table=table.set_index(["run", "seed", "module"])),
    ]
