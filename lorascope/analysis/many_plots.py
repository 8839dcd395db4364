"""Figures of many adapters: the shared-subspace energy curve against its floor, per layer, and the
interference heatmaps of a merge. Each takes computed frames and returns (fig, axes); none saves.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from lorascope.names import kind_label

FLOOR_COLOR = "0.55"


def _kinds(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["kind"]))


def plot_energy_curves(curve: pd.DataFrame, table: pd.DataFrame, *, title: str | None = None):
    """E(m) against m (log scale) per module kind, one line per layer coloured by layer, with the floor
    of random adapters (dashed mean, shaded band) and the m the table reads marked.

    curve: `SubspaceReport.curve()`; table: `SubspaceReport.table()` (kind, layer, m per module)."""
    kinds = _kinds(table)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds) + 0.6, 3.6), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    layers = sorted({int(x) for x in table["layer"].dropna()}) or [0]
    cmap = plt.get_cmap("viridis")
    for ax, kind in zip(axes[0], kinds, strict=True):
        mods = table.index[table["kind"] == kind]
        for mod in mods:
            c = curve[curve["module"] == mod]
            layer = table.loc[mod, "layer"]
            pos = layers.index(int(layer)) / max(len(layers) - 1, 1) if layer == layer else 0.0
            ax.plot(c["m"], c["energy"], color=cmap(0.9 * pos), lw=1.2,
                    label=f"layer {int(layer)}" if layer == layer else mod)  # fmt: skip
        first = curve[curve["module"] == mods[0]]
        ax.fill_between(first["m"], first["floor_lo"], first["floor_hi"], color=FLOOR_COLOR, alpha=0.3, lw=0)
        ax.plot(first["m"], first["floor_mean"], color=FLOOR_COLOR, ls="--", lw=1.2, label="random floor")
        m = int(table.loc[mods[0], "m"])
        ax.axvline(m, color="0.3", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("m (shared directions)")
        ax.set_title(f"{kind_label(kind)} (n = {int(table.loc[mods[0], 'n'])})", fontsize=10)
        ax.grid(alpha=0.3, lw=0.5)
        ax.tick_params(labelsize=8)
        if len(mods) <= 12:
            ax.legend(fontsize=7, loc="lower right", frameon=False)
    axes[0][0].set_ylabel("energy share E(m)")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, axes


def plot_layer_profile(table: pd.DataFrame, *, title: str | None = None):
    """Per module kind against the layer: E(m) with the floor's mean and band (top row) and the number of
    directions shared beyond chance (bottom row)."""
    kinds = _kinds(table)
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.0 * len(kinds) + 0.6, 5.2), squeeze=False,
                             constrained_layout=True, sharex="col")  # fmt: skip
    for j, kind in enumerate(kinds):
        t = table[table["kind"] == kind].sort_values("layer")
        x = t["layer"].to_numpy(dtype=float) if t["layer"].notna().all() else np.arange(len(t))
        top, bottom = axes[0][j], axes[1][j]
        top.fill_between(x, t["floor"], t["floor_hi"], color=FLOOR_COLOR, alpha=0.3, lw=0)
        top.plot(x, t["floor"], color=FLOOR_COLOR, ls="--", lw=1.2, label="random floor")
        top.plot(x, t["energy"], marker="o", ms=3, lw=1.3, color="C0", label="adapters")
        top.set_ylim(0, 1.02)
        top.set_title(f"{kind_label(kind)}: E(m = {int(t['m'].iloc[0])})", fontsize=10)
        bottom.bar(x, t["shared_dims"], color="C0", width=0.6)
        bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.set_xlabel("layer")
        bottom.set_title("directions above the floor", fontsize=10)
        for ax in (top, bottom):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3, lw=0.5)
            ax.tick_params(labelsize=8)
        if j == 0:
            top.legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, axes


def plot_interference(
    left: pd.DataFrame, right: pd.DataFrame, floors: tuple[float, float], *, title: str | None = None
):
    """Two N × N heatmaps of ‖U_iᵀU_j‖²_F / min(k_i, k_j), output side (left) and input side (right),
    colour fixed to [0, 1], the mean random floor in each title."""
    N = len(left)
    size = min(max(3.2, 0.32 * N + 1.5), 9.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.2, size + 0.4), constrained_layout=True)
    im = None
    for ax, frame, floor, side in zip(axes, (left, right), floors, ("output side (U)", "input side (V)"),
                                      strict=True):  # fmt: skip
        values = frame.to_numpy(dtype=float).copy()
        im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="magma", interpolation="nearest")
        ax.set_title(f"{side}; random floor {floor:.3g}", fontsize=10)
        if N <= 30:
            ax.set_xticks(range(N), [str(c) for c in frame.columns], rotation=90, fontsize=7)
            ax.set_yticks(range(N), [str(i) for i in frame.index], fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    cbar = fig.colorbar(im, ax=axes, shrink=0.85, aspect=30, pad=0.02)
    cbar.set_label(r"$\|U_i^\top U_j\|_F^2 / \min(k_i, k_j)$")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, axes


def plot_retention(retention: pd.DataFrame, *, title: str | None = None):
    """Per adapter: retention ‖P_merged ΔW_i‖² / ‖ΔW_i‖² as bars, the random floor as a line."""
    N = len(retention)
    fig, ax = plt.subplots(figsize=(min(max(4.0, 0.35 * N + 2.0), 14.0), 3.4), constrained_layout=True)
    x = np.arange(N)
    ax.bar(x, retention["retention"], color="C0", width=0.7, label="retention")
    ax.plot(
        x, retention["retention_floor"], color=FLOOR_COLOR, ls="--", marker="_", ms=12, label="random floor"
    )
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(r"$\|P\,\Delta W_i\|_F^2 / \|\Delta W_i\|_F^2$")
    ax.set_xticks(x, [str(i) for i in retention.index], rotation=90 if N > 6 else 0, fontsize=7)
    ax.grid(alpha=0.3, lw=0.5, axis="y")
    ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig, ax
