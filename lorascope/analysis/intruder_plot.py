"""The intruder-dimension curve (Shuttleworth et al. 2024, Fig. 2 style): intruders against ε.

Takes the long-format curve of `lorascope.compare.w_and_delta.intruder_tables` (run, module, eps, count)
and returns (fig, axes); never saves (see lorascope.writers.write_figure). matplotlib is imported when a
figure is drawn, and its backend is left to the caller.
"""

from __future__ import annotations

import pandas as pd

AGGREGATES = ("mean", "sum")


def plot_intruder_curve(
    curve: pd.DataFrame,
    *,
    agg: str = "mean",
    k: int | None = None,
    eps: float | None = 0.5,
    by_module: bool = False,
    title: str | None = None,
    labels: dict[str, str] | None = None,
):
    """Intruder count against ε, one line per run (e.g. per LoRA rank, and full fine-tuning).

    curve: columns run, module, eps, count, and optionally lo, hi: a band drawn around each line (e.g.
    the 95 % interval over seeds of a mean count; drawn with by_module, where each panel holds one row
    per run and ε; nan lo/hi, one seed, draw none). agg: "mean" (intruders per module) or "sum" (over all
    modules). by_module: one panel per module name instead of aggregating. k: the number of top
    singular vectors examined, drawn as the ceiling; eps: a vertical line at the ε the table used;
    labels: legend text per run (default the run's name).
    Returns (fig, axes), axes a 1-D array of panels.
    """
    import matplotlib.pyplot as plt

    from lorascope.analysis.plots import method_styles

    if agg not in AGGREGATES:
        raise ValueError(f"agg must be one of {', '.join(AGGREGATES)}, got {agg!r}")
    missing = {"run", "module", "eps", "count"} - set(curve.columns)
    if missing or curve.empty:
        raise ValueError("plot_intruder_curve needs a non-empty curve with columns run, module, eps, count")
    panels = list(dict.fromkeys(curve["module"])) if by_module else [None]
    ncols = min(len(panels), 4)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False, sharey=True, constrained_layout=True
    )
    runs = list(dict.fromkeys(curve["run"]))
    styles = method_styles(map(str, runs))
    for ax, module in zip(axes.flat, panels, strict=False):
        part = curve if module is None else curve[curve["module"] == module]
        for run in runs:
            lines = part[part["run"] == run].groupby("eps")["count"]
            y = lines.sum() if agg == "sum" and module is None else lines.mean()
            label = (labels or {}).get(str(run), str(run))
            ax.plot(y.index, y.to_numpy(), marker="o", ms=2.5, label=label, **styles[str(run)])
            if {"lo", "hi"} <= set(part.columns) and module is not None:
                band = part[part["run"] == run].groupby("eps")[["lo", "hi"]].mean()
                if band.notna().all(axis=None):
                    color = styles[str(run)]["color"]
                    ax.fill_between(band.index, band.lo, band.hi, color=color, alpha=0.18, lw=0)
        if k is not None and (agg == "mean" or module is not None):
            ax.axhline(k, color="0.6", ls=":", lw=1)
        if eps is not None:
            ax.axvline(eps, color="0.6", ls="--", lw=1)
        ax.set_xlabel(r"$\epsilon$")
        ax.set_title(module if module is not None else "", fontsize=9)
        ax.grid(alpha=0.3, lw=0.5)
        ax.tick_params(labelsize=8)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    what = "per module" if agg == "mean" or by_module else "over all modules"
    for ax in axes[:, 0]:
        ax.set_ylabel(f"intruder dimensions ({what})")
    if len(runs) <= 12:
        axes.flat[0].legend(fontsize=7, frameon=False, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, axes.ravel()
