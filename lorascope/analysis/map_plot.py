"""The adapter map as a clustered heatmap: dendrogram on top, the N × N similarity below.

Rows and columns follow the dendrogram (average linkage on 1 − similarity); the colour bar is
fixed to [0, 1] and marks the random floor, which the title states too. Returns (fig, axes);
never saves (see `lorascope.writers.write_figure`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.gridspec import GridSpec

from lorascope.analysis.adapter_map import leaf_order, map_linkage

MAP_CMAP = "viridis"  # as the φ heatmaps (plots.PHI_CMAP)
ANNOTATE_MAX = 15  # write the value in each cell up to this many adapters
LABELS_MAX = 80  # name every row and column up to this many adapters


def _floor_range(floor, N: int) -> tuple[float, float] | None:
    if floor is None:
        return None
    F = np.asarray(floor.to_numpy() if hasattr(floor, "to_numpy") else floor, dtype=float)
    if F.ndim == 0:
        return float(F), float(F)
    off = F[~np.eye(N, dtype=bool)] if F.shape == (N, N) else F.ravel()
    return float(off.min()), float(off.max())


def _floor_text(lo: float, hi: float) -> str:
    return f"{lo:.2g}" if np.isclose(lo, hi, rtol=1e-3) else f"{lo:.2g}–{hi:.2g}"


def plot_adapter_map(
    similarity,
    names=None,
    *,
    floor=None,
    linkage=None,
    title: str | None = None,
    annotate: bool | None = None,
    cmap: str = MAP_CMAP,
):
    """Clustered heatmap of an adapter map.

    similarity: (N, N) array or DataFrame (its index gives the names); names: N labels.
    floor: the random floor, a number or an (N, N) array (its off-diagonal range is shown).
    linkage: a scipy linkage matrix (default: `map_linkage(similarity)`). annotate: write values
    in the cells (default: N ≤ 15). Returns (fig, (ax_dendrogram, ax_heatmap, ax_colorbar)).
    """
    from scipy.cluster.hierarchy import dendrogram

    S = np.asarray(similarity.to_numpy() if hasattr(similarity, "to_numpy") else similarity, dtype=float)
    N = S.shape[0]
    if S.ndim != 2 or S.shape != (N, N) or N < 2:
        raise ValueError(f"plot_adapter_map needs an N × N similarity with N ≥ 2, got shape {S.shape}")
    if names is None:
        names = list(similarity.index) if hasattr(similarity, "index") else [str(i) for i in range(N)]
    names = [str(n) for n in names]
    Z = map_linkage(S) if linkage is None else np.asarray(linkage)
    order = leaf_order(Z)
    annotate = N <= ANNOTATE_MAX if annotate is None else annotate

    # Cells of ~0.22 in for N ≤ 50 names, shrinking beyond so the figure stays printable.
    cell = 0.5 if N <= 8 else 0.32 if N <= 15 else 0.22 if N <= 50 else max(12.0 / N, 0.03)
    side = max(3.0, cell * N)
    label_room = 0.0 if N > LABELS_MAX else min(2.5, 0.07 * max(len(n) for n in names) + 0.3)
    fig = plt.figure(figsize=(side + label_room + 1.3, side + label_room + 1.6), constrained_layout=True)
    grid = GridSpec(2, 2, figure=fig, height_ratios=[1.0, side], width_ratios=[side, 0.25])
    ax_tree = fig.add_subplot(grid[0, 0])
    ax_map = fig.add_subplot(grid[1, 0])
    ax_bar = fig.add_subplot(grid[1, 1])
    fig.add_subplot(grid[0, 1]).set_visible(False)

    # The dendrogram's leaves sit at x = 5, 15, 25, ...; the heatmap's cell centres at 0..N−1,
    # so the tree is drawn on [0, 10 N] and the heatmap on [−0.5, N − 0.5]: columns line up.
    dendrogram(Z, ax=ax_tree, no_labels=True, color_threshold=0, above_threshold_color="0.3")
    ax_tree.set_xlim(0, 10 * N)
    ax_tree.set_ylabel("1 − similarity", fontsize=8)
    ax_tree.tick_params(labelsize=7, bottom=False)
    for spine in ("top", "right", "bottom"):
        ax_tree.spines[spine].set_visible(False)

    # aspect "auto": the heatmap fills its column exactly as the tree above does (cells stay
    # square because the grid cell is); an "equal" aspect would shrink it out of line.
    im = ax_map.imshow(S[np.ix_(order, order)], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest",
                   aspect="auto")  # fmt: skip
    ax_map.set_xlim(-0.5, N - 0.5)
    if N <= LABELS_MAX:
        size = 9 if N <= 15 else 7 if N <= 30 else 6 if N <= 50 else 5
        ax_map.set_xticks(range(N), [names[i] for i in order], rotation=90, fontsize=size)
        ax_map.set_yticks(range(N), [names[i] for i in order], fontsize=size)
    else:
        ax_map.set_xticks([])
        ax_map.set_yticks([])
        ax_map.set_xlabel(f"{N} adapters in dendrogram order", fontsize=9)
    ax_map.tick_params(length=2)
    if annotate:
        ordered = S[np.ix_(order, order)]
        for r in range(N):
            for c in range(N):
                v = ordered[r, c]
                ax_map.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.6 else "white")  # fmt: skip

    cbar = fig.colorbar(im, cax=ax_bar)
    cbar.set_ticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    cbar.ax.tick_params(labelsize=8)
    cbar.set_label(r"mean $\phi(i, i)$, $i \leq k$", fontsize=9)
    floor_span = _floor_range(floor, N)
    heading = title or "adapter map"
    if floor_span is not None:
        lo, hi = floor_span
        for value in {lo, hi}:
            cbar.ax.axhline(value, color="red", lw=1.5)
        cbar.ax.text(-0.15, hi, "random", transform=cbar.ax.get_yaxis_transform(), color="red",
                     fontsize=7, va="center", ha="right", rotation=90)  # fmt: skip
        heading += f"\nrandom floor {_floor_text(lo, hi)} (red mark on the colour bar)"
    fig.suptitle(heading, fontsize=10)
    return fig, (ax_tree, ax_map, ax_bar)
