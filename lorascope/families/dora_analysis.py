"""The DoRA paper's ΔM / ΔD per module and snapshot step (its Fig. 2), for `lorascope dora`.

Any run's ΔW works (DoRA, LoRA, a shifted init, full fine-tuning): W′ = W + ΔW against the base W,
read one module at a time from the base checkpoint. Steps: every snapshot of a lorascope run and
its final adapter; a PEFT folder has only its final adapter.
"""

from __future__ import annotations

import logging

import pandas as pd

from lorascope.families.direction import correlation, magnitude_direction
from lorascope.names import select_modules

log = logging.getLogger(__name__)


def dora_frame(run, modules: str | None = None, layers=None) -> pd.DataFrame:
    """One row per (step, module): step, module, delta_m, delta_d (`direction.magnitude_direction`)."""
    from lorascope.base_identity import check_weight
    from lorascope.base_model import open_base

    names = select_modules(list(run.adapters), modules, layers)
    snapshots = list(run.checkpoints()) if run.kind != "peft" else []
    final = int(run.summary.get("steps", 0) or 0) or (max(snapshots, default=0) + 1)
    ckpt = open_base(run)
    rows = []
    for step in [*(s for s in snapshots if s != final), final]:  # the last snapshot is the final adapter
        adapters = run.adapters if step == final else run.load_checkpoint(step)
        for m in names:
            d = adapters[m]
            W = ckpt.weight(m, tuple(d.delta_weight().shape), run.meta.get("fan_in_fan_out"))
            check_weight(run, {m: W})
            rows.append({"step": step, "module": m, **magnitude_direction(W, d.delta_weight())})
    return pd.DataFrame(rows, columns=["step", "module", "delta_m", "delta_d"])


def plot_dora(frame: pd.DataFrame, title: str):
    """ΔD (x) against ΔM (y), one point per (module, step), coloured by step: the paper's Fig. 2."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    pts = ax.scatter(frame["delta_d"], frame["delta_m"], c=frame["step"], cmap="viridis", s=14)
    fig.colorbar(pts, ax=ax, label="step")
    ax.set_xlabel("ΔD (mean 1 − cos)")
    ax.set_ylabel("ΔM (mean |Δ‖w‖|)")
    ax.set_title(f"{title}: r = {correlation(frame['delta_m'], frame['delta_d']):.2f}", fontsize=9)
    fig.tight_layout()
    return fig
