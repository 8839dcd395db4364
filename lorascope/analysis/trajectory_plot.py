"""The trajectory figure: how each quantity of `lorascope.analysis.trajectory` moves over the steps.

One panel per quantity, one colour per module kind (its mean over layers, with markers), and the
layers' spread as a min–max band or as thin lines. Returns (fig, axes); never saves
(see `lorascope.writers.write_figure`) and never picks a matplotlib backend.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lorascope.errors import LorascopeError

# (columns, title, y label); a second column is drawn dashed in the same colour.
PANELS = [
    (("dA_rel",), r"$\|A_t - A_0\|_F \,/\, \|A_0\|_F$", "relative change of A"),
    (("B_norm",), r"$\|B_t\|_F$", "norm"),
    (("dW_norm",), r"$\|\Delta W_t\|_F$", "norm"),
    (("stable_rank",), r"stable rank of $\Delta W_t$", r"$\|\Delta W\|_F^2 / \|\Delta W\|_2^2$"),
    (("energy_rank",), r"energy rank of $\Delta W_t$ (90 %)", "directions"),
    (("phi_in_11", "phi_in_kk"), r"$\phi(\Delta W_t, \Delta W_T)$, input side", r"$\phi$"),
    (("phi_out_11", "phi_out_kk"), r"$\phi(\Delta W_t, \Delta W_T)$, output side", r"$\phi$"),
    (("phi_A_A0",), r"$\phi(A_t, A_0)$, $k = r$", r"$\phi$"),
]
SPREADS = ("band", "lines", "none")


def _label(kind: str) -> str:
    """ "attention.self.query" -> "query"; "attention.output.dense" stays whole (it says more)."""
    return kind if kind.endswith("output.dense") else kind.rsplit(".", 1)[-1]


def _by_layer(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """(step × module) table of one column for one kind."""
    return frame.pivot_table(index="step", columns="module", values=column, aggfunc="first", dropna=False)


def plot_trajectory(
    frame: pd.DataFrame,
    *,
    spread: str = "band",
    threshold: float | None = 0.9,
    ncols: int = 4,
    panel_size: tuple[float, float] = (3.1, 2.4),
    suptitle: str | None = None,
):
    """Trajectory panels from `run_trajectory` / `trajectory_frame` output (columns as COLUMNS there).

    Per kind: the mean over its modules (layers) at each step, with the min–max over layers as a band
    (spread="band"), one thin line per layer ("lines") or nothing ("none"). In the φ-to-final panels
    φ(1, 1) is solid and φ(k, k) dashed, the `threshold` of `first_step_reached` is a grey line and
    the random floor k/n of φ(k, k) a dotted one; the φ(A_t, A0) panel shows its floor r/in.
    Returns (fig, axes), axes a 2-D array (unused panels hidden)."""
    if spread not in SPREADS:
        raise LorascopeError(f"spread must be one of {', '.join(SPREADS)}, got {spread!r}")
    needed = {"module", "kind", "step", "rank", "k", "in_features", "out_features"}
    needed |= {c for cols, _, _ in PANELS for c in cols}
    missing = sorted(needed - set(frame.columns))
    if missing or frame.empty:
        raise LorascopeError(
            f"not a trajectory frame: {'empty' if frame.empty else 'no ' + ', '.join(missing)}"
        )
    kinds = list(dict.fromkeys(frame["kind"]))
    colors = dict(zip(kinds, plt.get_cmap("tab10")(np.arange(len(kinds)) % 10), strict=True))
    nrows = -(-len(PANELS) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.6),
        squeeze=False, constrained_layout=True,
    )  # fmt: skip
    for ax, (columns, title, ylabel) in zip(axes.flat, PANELS, strict=False):
        for kind in kinds:
            part = frame[frame["kind"] == kind]
            for column, style in zip(columns, ("-", "--"), strict=False):
                table = _by_layer(part, column)
                steps = table.index.to_numpy()
                values = table.to_numpy(dtype=float)
                drawn = ~np.isnan(values).all(axis=1)  # NaN (φ at step 0): nothing to draw
                if not drawn.any():
                    continue
                steps, values = steps[drawn], values[drawn]
                color = colors[kind]
                if spread == "band" and values.shape[1] > 1:
                    lo, hi = np.nanmin(values, axis=1), np.nanmax(values, axis=1)
                    ax.fill_between(steps, lo, hi, color=color, alpha=0.15 if style == "-" else 0.08, lw=0)
                elif spread == "lines" and values.shape[1] > 1:
                    ax.plot(steps, values, color=color, lw=0.6, alpha=0.35, ls=style)
                ax.plot(steps, np.nanmean(values, axis=1), color=color, ls=style, lw=1.6, marker="o", ms=2.5)
        if columns[0].startswith("phi"):
            ax.set_ylim(-0.02, 1.04)
            if columns[0] == "phi_A_A0":
                floor, name = float((frame["rank"] / frame["in_features"]).max()), "r/n"
            else:
                n = frame["in_features"] if "_in_" in columns[0] else frame["out_features"]
                floor, name = float((frame["k"] / n).max()), "k/n"
                if threshold is not None:
                    ax.axhline(threshold, color="0.6", lw=0.8, ls="--")
                    ax.text(0.99, threshold, f"{threshold:g}", transform=ax.get_yaxis_transform(),
                            ha="right", va="top", fontsize=7, color="0.4")  # fmt: skip
            ax.axhline(floor, color="0.5", lw=0.8, ls=":")
            ax.text(0.99, floor, f"random floor {name} = {floor:.2g}", transform=ax.get_yaxis_transform(),
                    ha="right", va="bottom", fontsize=7, color="0.4")  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, lw=0.5)
    for ax in axes.flat[len(PANELS) :]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colors[k], lw=1.6, marker="o", ms=2.5) for k in kinds]
    labels = [_label(k) for k in kinds]
    handles += [plt.Line2D([], [], color="0.3", ls="-"), plt.Line2D([], [], color="0.3", ls="--")]
    labels += [r"$\phi(1, 1)$", rf"$\phi(k, k)$, $k \leq {int(frame['k'].max())}$"]
    spread_text = {"band": "mean over layers, band min–max", "lines": "mean over layers, thin: each layer"}
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False,
               title=spread_text.get(spread, "mean over layers"), title_fontsize=8)  # fmt: skip
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return fig, axes
