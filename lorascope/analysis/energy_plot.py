"""The share of ΔW's energy in W's top-r versus bottom-r singular subspaces, per module (PiSSA / MiLoRA)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lorascope.analysis.amplification import ENERGY_COLUMNS


def plot_energy_share(table: pd.DataFrame, title: str):
    """Grouped bars per module (rows of `table`, indexed by module): the four `energy_share` columns.

    A random ΔW puts about r/min(out, in) of its energy in any r directions: the dotted line."""
    import matplotlib.pyplot as plt

    modules = list(table.index)
    x = np.arange(len(modules))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(modules) + 2), 3.5))
    width = 0.2
    for i, col in enumerate(ENERGY_COLUMNS):
        ax.bar(x + (i - 1.5) * width, table[col].to_numpy(float), width, label=col.removeprefix("energy_"))
    ax.set_xticks(x, [m.rsplit(".", 3)[-3] + "." + m.rsplit(".", 1)[-1] if m.count(".") >= 3 else m
                      for m in modules], rotation=90, fontsize=6)  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of ‖ΔW‖²_F")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
