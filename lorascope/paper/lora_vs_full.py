"""LoRA versus full fine-tuning on one sweep (a sweep trained with `method=lora,full`).

fig_spectrum        the normalised spectrum σ_k/σ_1 of ΔW and its cumulative energy, each LoRA rank
                    beside full fine-tuning, per module kind at one layer; table_energy_rank: the
                    rank holding 90 % of ΔW's energy (Biderman et al. 2024: full fine-tuning's is
                    10–100× a typical LoRA rank), median over layers
fig_lora_vs_full    φ(U_r, V_j) with U_r a LoRA rank's top-r directions of ΔW and V_j full
                    fine-tuning's top-j, on the input and the output side, normalised by the random
                    floor as (φ − floor)/(1 − floor): does a low-rank adapter find the top directions
                    of the full update? (for j ≥ r: how much of LoRA's top-r lies in full's top-j; for
                    j < r the reverse, full's top-j in LoRA's top-r)
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from lorascope.analysis.factors import get_factor
from lorascope.analysis.plots import method_styles
from lorascope.analysis.similarity import grid_frame, long_grid, phi_grid, random_phi_baseline
from lorascope.compare.spectra import spectrum_frames
from lorascope.names import kind_label, layer_index, module_kind
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.sweep import Sweep

NO_FULL = "needs a full fine-tuning run in the sweep: run `python sweep.py method=full`"
TOP_J = 64  # full fine-tuning's top directions compared with LoRA's (its ΔW has min(out, in) of them)
SIDES = {"input": "dW-right", "output": "dW-left"}


def _lora_runs(sweep: Sweep) -> dict[int, object]:
    """Seed-0 (or lowest seed) LoRA run of each rank, by rank, and the full run of the same seed."""
    return {rank: sweep.run(rank) for rank in sweep.ranks}


def _full(sweep: Sweep):
    return sweep.full[min(sweep.full)] if sweep.full else None


def spectrum_table(sweep: Sweep) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(metrics, σ) of ΔW per method (each LoRA rank, and full) and module, long format; None without
    a full fine-tuning run."""
    full = _full(sweep)
    if full is None:
        return None
    rows = []
    for label, run in [*((f"r={r}", run) for r, run in _lora_runs(sweep).items()), ("full", full)]:
        table, sigmas = spectrum_frames(run, sweep.modules)
        table = table.reset_index()
        table.insert(0, "method", label)
        rows.append((table, sigmas.assign(method=label)))
    return pd.concat([t for t, _ in rows], ignore_index=True), pd.concat(
        [s for _, s in rows], ignore_index=True
    )


def fig_spectrum(sweep: Sweep, layer=None) -> list[Artifact | Skipped]:
    frames = spectrum_table(sweep)
    if frames is None:
        return [Skipped("fig_spectrum", NO_FULL)]
    table, sigmas = frames
    layer = sweep.middle_layer if layer is None else layer
    table["kind"] = table["module"].map(lambda m: kind_label(module_kind(m)))
    table["layer"] = table["module"].map(layer_index)
    methods = list(dict.fromkeys(table["method"]))
    fig, axes = plt.subplots(len(sweep.kinds), 2, figsize=(10, 3.4 * len(sweep.kinds)), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    styles = method_styles(methods)
    for row, kind in zip(axes, sweep.kinds, strict=True):
        m = sweep.module(layer, kind)
        for method in methods:
            s = sigmas[(sigmas.method == method) & (sigmas.module == m)].sigma.to_numpy()
            if not s.size or s[0] <= 0:
                continue
            k = np.arange(1, len(s) + 1)
            energy = np.cumsum(s**2) / np.sum(s**2)
            rank90 = int(table[(table.method == method) & (table.module == m)].energy_rank.iloc[0])
            style = styles[method]
            row[0].plot(k[s > 0], (s / s[0])[s > 0], label=method, **style)
            row[1].plot(k, energy, label=f"{method}: 90 % at k = {rank90}", **style)
            row[1].plot([rank90], [energy[rank90 - 1]], "o", ms=4, color=style["color"])
        row[0].set(xscale="log", yscale="log", xlabel="k", ylabel=r"$\sigma_k / \sigma_1$",
                   title=f"{kind_label(kind)}, layer {layer}: singular values of $\\Delta W$")  # fmt: skip
        # The control: a same-shape N(0, 1) matrix, an update with no low-rank structure at all.
        shape = tuple(_full(sweep).adapters[m].shape)
        g = (
            torch.linalg.svdvals(torch.randn(*shape, generator=torch.Generator().manual_seed(0)))
            .double()
            .numpy()
        )
        k = np.arange(1, len(g) + 1)
        row[0].plot(k, g / g[0], color="0.6", ls="--", lw=1, label=f"Gaussian {shape[0]}×{shape[1]}")
        row[1].plot(k, np.cumsum(g**2) / np.sum(g**2), color="0.6", ls="--", lw=1,
                    label=f"Gaussian {shape[0]}×{shape[1]} (control)")  # fmt: skip
        row[1].axhline(0.9, color="0.5", ls="--", lw=1)
        row[1].set(xscale="log", ylim=(0, 1.02), xlabel="k", ylabel="cumulative energy",
                   title=f"{kind_label(kind)}: rank holding 90 % of the energy")  # fmt: skip
        row[1].legend(fontsize=7, frameon=False, loc="lower right")
        for ax in row:
            ax.grid(alpha=0.3, lw=0.5)
    fig.suptitle(
        f"{sweep.name}: the spectrum of $\\Delta W$, LoRA ranks beside full fine-tuning", fontsize=11
    )
    energy = (
        table.groupby(["method", "kind"], sort=False)
        .agg(
            energy_rank=("energy_rank", "median"),
            stable_rank=("stable_rank", "median"),
            effective_rank=("effective_rank", "median"),
            modules=("module", "size"),
        )  # fmt: skip
        .reset_index()
    )
    caption = (
        f"{sweep.name}: median over layers of the rank holding 90 % of ΔW's energy (Σσ²), its stable "
        "rank ‖ΔW‖²_F/‖ΔW‖²_2 and effective rank, for each LoRA rank and for full fine-tuning."
    )
    full = _full(sweep)
    shapes = {kind_label(k): tuple(full.adapters[sweep.module(layer, k)].shape) for k in sweep.kinds}
    facts = {"energy": energy, "layer": layer, "shapes": shapes}
    return [
        Artifact("fig_spectrum", sigmas, fig=fig, facts=facts),
        Artifact(
            "table_energy_rank",
            energy,
            table=energy.set_index(["method", "kind"]),
            caption=caption,
            facts=facts,
        ),
    ]


def lora_vs_full_frame(sweep: Sweep, layer: int) -> pd.DataFrame:
    """φ(i, j) between each LoRA rank's top-i and full fine-tuning's top-j ΔW directions (j ≤ TOP_J),
    per module kind at `layer` and side, long format with the random floor max(i, j)/n beside."""
    full = _full(sweep)
    rows = []
    for kind in sweep.kinds:
        m = sweep.module(layer, kind)
        for side, factor in SIDES.items():
            spec = get_factor(factor)
            V, _ = spec.basis(full.adapters[m], k=TOP_J)
            n = V.shape[0]
            for rank, run in _lora_runs(sweep).items():
                U, _ = spec.basis(run.adapters[m])
                grid = grid_frame(phi_grid(U, V))
                frame = long_grid(grid, kind=kind_label(kind), side=side, rank=rank, n=n)
                frame["floor"] = random_phi_baseline(*grid.shape, n)[frame.i - 1, frame.j - 1]
                frame["phi_normalised"] = (frame.phi - frame.floor) / (1 - frame.floor).clip(lower=1e-12)
                rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def fig_lora_vs_full(sweep: Sweep, layer=None) -> Artifact | Skipped:
    if _full(sweep) is None:
        return Skipped("fig_lora_vs_full", NO_FULL)
    layer = sweep.middle_layer if layer is None else layer
    data = lora_vs_full_frame(sweep, layer)
    kinds, ranks = list(dict.fromkeys(data.kind)), sorted(set(data["rank"]))
    colors = dict(zip(ranks, plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(ranks))), strict=True))
    fig, axes = plt.subplots(len(kinds), len(SIDES), figsize=(10, 3.3 * len(kinds)), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    for row, kind in zip(axes, kinds, strict=True):
        for ax, side in zip(row, SIDES, strict=True):
            for rank in ranks:
                # φ(r, j): the overlap of LoRA's r-dim subspace with full's top-j, / min(r, j). Curves of
                # different r have floors max(r, j)/n from 0.003 to 0.17: drawn normalised,
                # (φ − floor) / (1 − floor), so 0 is chance for every curve.
                d = data[
                    (data.kind == kind) & (data.side == side) & (data["rank"] == rank) & (data.i == rank)
                ]
                ax.plot(d.j, d.phi_normalised, color=colors[rank], lw=1.4, label=f"LoRA r = {rank}")
            ax.axhline(0.0, color="0.4", lw=0.8, ls=":")
            ax.set(xscale="log", ylim=(-0.05, 1.02), xlabel="j (top directions of full fine-tuning's ΔW)",
                   ylabel=r"$(\phi - \mathrm{floor}) / (1 - \mathrm{floor})$",
                   title=f"{kind}, layer {layer}: {side} side")  # fmt: skip
            ax.grid(alpha=0.3, lw=0.5)
        row[0].legend(fontsize=7, frameon=False)
    fig.suptitle(
        f"{sweep.name}: φ(r, j) between LoRA's top-r and full fine-tuning's top-j directions (j ≥ r: LoRA's "
        "inside full's; j < r: full's top-j inside LoRA's), normalised by the floor max(r, j)/n (dotted: "
        "chance)", fontsize=10,
    )  # fmt: skip
    return Artifact("fig_lora_vs_full", data, fig=fig, facts={"layer": layer, "data": data})


def fig_intruders(sweep: Sweep, device: str = "auto", k: int = 10, eps: float = 0.5) -> list[Artifact]:
    """Intruder dimensions of W + ΔW against ε (Shuttleworth et al. 2024), each LoRA rank beside full
    fine-tuning (when the sweep has it), per module kind (mean over layers); table_intruders: the count
    at ε = eps per method, kind and layer."""
    from lorascope.analysis.intruder_plot import plot_intruder_curve
    from lorascope.compare.w_and_delta import intruder_tables

    runs = {f"r={rank}": run for rank, run in _lora_runs(sweep).items()}
    if _full(sweep) is not None:
        runs["full"] = _full(sweep)
    table, curve = intruder_tables(runs, k=k, eps=eps, device=device)
    for frame in (table, curve):
        frame.insert(2, "kind", frame["module"].map(lambda m: kind_label(module_kind(m))))
        frame.insert(3, "layer", frame["module"].map(layer_index))
    by_kind = curve.assign(module=curve["kind"])  # one panel per kind, lines averaged over its layers
    title = f"{sweep.name}: intruder dimensions among the top-{k} of W + ΔW"
    fig, _ = plot_intruder_curve(by_kind, k=k, eps=eps, by_module=True, title=title)
    counts = table.pivot_table(index=["run", "kind"], values="count", aggfunc="mean", sort=False)
    caption = (
        f"{sweep.name}: intruder dimensions among the top-{k} left singular vectors of W + ΔW at ε = {eps}, "
        "mean over layers, each LoRA rank and full fine-tuning."
    )
    facts = {"table": table, "k": k, "eps": eps}
    return [
        Artifact("fig_intruders", curve, fig=fig, facts=facts),
        Artifact(
            "table_intruders",
            table,
            table=counts.rename(columns={"count": "intruders (mean)"}),
            caption=caption,
            facts=facts,
        ),
        Artifact("table_intruders_all_modules", table, table=table.set_index(["run", "module"])),
    ]
