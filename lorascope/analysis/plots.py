"""Paper-style figures: φ heatmaps (LoRA paper Figures 3, 4, 8) and ΔW spectra.

Every function takes computed results and returns (fig, axes); none saves (see `lorascope.writers`).
Heatmaps put i on the vertical axis with i = 1 at the top and j on the horizontal axis,
one panel per module, and share one colour bar fixed to [0, 1] so panels compare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

PHI_CMAP = "viridis"
FULL = "full"  # the label of a full fine-tuning run beside LoRA ranks


def method_styles(labels) -> dict[str, dict]:
    """Line styles for runs compared in one panel: LoRA ranks along viridis, full fine-tuning (label
    "full") in thick black, so that the control stands apart from the ranks."""
    labels = list(labels)
    ranks = [label for label in labels if label != FULL]
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(ranks), 1)))
    styles = {label: {"color": color, "lw": 1.3} for label, color in zip(ranks, colors, strict=False)}
    if FULL in labels:
        styles[FULL] = {"color": "black", "lw": 2.0}
    return styles


def _ticks(r: int, max_ticks: int = 8) -> list[int]:
    """1 and multiples of a power-of-two step: 1, 8, 16, ..., 64 for r = 64; all of 1..r when small."""
    if r <= max_ticks:
        return list(range(1, r + 1))
    step = 2 ** math.ceil(math.log2(r / max_ticks))
    return [1] + list(range(step, r + 1, step))


def _values(grid) -> np.ndarray:
    return np.asarray(grid.to_numpy() if hasattr(grid, "to_numpy") else grid, dtype=float)


def plot_phi(
    grids: Mapping[str, object],
    *,
    ncols: int | None = None,
    row_label: str = "i",
    col_label: str = "j",
    suptitle: str | None = None,
    cmap: str = PHI_CMAP,
    panel_size: float = 2.6,
    floors: Mapping[str, object] | None = None,
):
    """Heatmaps of φ grids, one panel per entry: {title: (r1, r2) array or DataFrame}.

    Rows are i = 1..r1 from top to bottom, columns j = 1..r2 left to right; colour fixed to
    [0, 1]. `floors` {title: (r1, r2) array or a number}: the random floor of that panel (e.g.
    `random_phi_baseline`, max(i, j)/n); cells where φ does not exceed it are hatched, so that an
    overlap chance alone gives is never read as shared. Returns (fig, axes) with axes a 2-D array
    (unused panels hidden)."""
    items = list(grids.items())
    if not items:
        raise ValueError("plot_phi needs at least one grid")
    n = len(items)
    r1, r2 = _values(items[0][1]).shape
    # Wide grids (8 x 64) get wider panels, but never so wide that the rows become slivers.
    aspect = min(max(r2 / r1, 0.8), 1.8)
    ncols = ncols or min(n, 4 if aspect <= 1.2 else 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel_size * aspect * ncols + 1.2, panel_size * nrows + (0.5 if suptitle else 0.2)),
        squeeze=False,
        constrained_layout=True,
    )
    im = None
    for ax, (title, grid) in zip(axes.flat, items, strict=False):
        phi = _values(grid)
        a, b = phi.shape
        # extent puts cell (i, j) centred on integer coordinates; origin upper keeps i = 1 on top.
        im = ax.imshow(
            phi,
            cmap=cmap,
            vmin=0.0,
            vmax=1.0,
            origin="upper",
            extent=(0.5, b + 0.5, a + 0.5, 0.5),
            aspect="auto",
            interpolation="nearest",
        )
        if floors is not None and title in floors:
            hatch_below_floor(ax, phi, floors[title])
        ax.set_xticks(_ticks(b))
        ax.set_yticks(_ticks(a))
        ax.tick_params(labelsize=8, length=2)
        ax.set_title(title, fontsize=10)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    # One label per axis for the whole figure: every panel shares the same i and j.
    fig.supxlabel(col_label, fontsize=10)
    fig.supylabel(row_label, fontsize=10)
    cbar = fig.colorbar(im, ax=axes, shrink=0.9, aspect=30, pad=0.02)
    cbar.set_label(r"$\phi(i, j)$")
    cbar.set_ticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return fig, axes


def hatch_below_floor(ax, phi: np.ndarray, floor) -> None:
    """Hatch the cells of a φ heatmap (drawn with `plot_phi`'s extent) where φ ≤ floor, and outline them.

    floor: an array shaped like phi, or a number."""
    below = np.asarray(phi, dtype=float) <= np.broadcast_to(np.asarray(floor, dtype=float), phi.shape)
    if not below.any():
        return
    a, b = phi.shape
    x, y = np.arange(1, b + 1), np.arange(1, a + 1)
    mask = below.astype(float)
    if a == 1 or b == 1:  # contourf needs two rows and columns: mark single cells instead
        ii, jj = np.nonzero(below)
        ax.plot(jj + 1, ii + 1, "x", color="white", ms=4, mew=0.8)
        return
    ax.contourf(x, y, mask, levels=[0.5, 1.5], colors="none", hatches=["////"])
    ax.contour(x, y, mask, levels=[0.5], colors="white", linewidths=0.6)


FLOOR_NOTE = "hatched: φ ≤ its random floor"


def plot_spectrum(spectra: Mapping[str, object], *, energy: float = 0.9, normalize: bool = True):
    """ΔW spectra {module: σ (k,) descending}: left σ_k (σ_k / σ_1 if normalize) on a log scale,
    right the cumulative energy Σ_{i≤k} σ_i² / Σ σ² with the `energy` threshold marked.

    Lines are coloured by module order; a legend is drawn for up to 10 modules. Returns (fig, axes)."""
    items = [(m, np.asarray(s, dtype=float)) for m, s in spectra.items()]
    if not items:
        raise ValueError("plot_spectrum needs at least one spectrum")
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), constrained_layout=True)
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(items)))
    for color, (module, s) in zip(colors, items, strict=True):
        k = np.arange(1, len(s) + 1)
        total = float(np.sum(s**2))
        y = s / s[0] if normalize and s[0] > 0 else s
        positive = y > 0  # log scale: σ = 0 (rank-deficient ΔW) has no point to draw
        axes[0].plot(k[positive], y[positive], marker="o", ms=2.5, lw=1.2, color=color, label=module)
        if total > 0:
            axes[1].plot(k, np.cumsum(s**2) / total, lw=1.2, color=color, label=module)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("k")
    axes[0].set_ylabel(r"$\sigma_k / \sigma_1$" if normalize else r"$\sigma_k$")
    axes[0].set_title(r"singular values of $\Delta W$", fontsize=10)
    axes[1].axhline(energy, color="0.5", ls="--", lw=1)
    axes[1].text(1, energy + 0.01, f"{energy:.0%}", color="0.4", fontsize=8, va="bottom")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_xlabel("k")
    axes[1].set_ylabel(r"$\Sigma_{i \leq k}\, \sigma_i^2 \,/\, \Sigma_i\, \sigma_i^2$")
    axes[1].set_title("cumulative energy", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3, lw=0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    if len(items) <= 10:
        axes[1].legend(fontsize=7, loc="lower right", frameon=False)
    return fig, axes
