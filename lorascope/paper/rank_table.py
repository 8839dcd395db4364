"""The rank table: held-out metric, trainable parameters and cost per run.

The paper's Tables 6 and 18 in spirit: what each rank buys, and what it costs.
"""

from __future__ import annotations

import pandas as pd

from lorascope.paper.artifact import Artifact
from lorascope.paper.sweep import Sweep

# summary.json key -> column, in the order a reader wants them; absent keys are left out.
COLUMNS = {
    "val_accuracy": "accuracy",
    "val_loss": "val loss",
    "val_perplexity": "perplexity",
    "update_params": "update params",
    "trainable_params": "trainable params",
    "steps": "steps",
    "wall_time_s": "wall time (s)",
    "tokens_per_s": "tokens/s",
    "peak_memory_mb": "peak memory (MB)",
}


def metric_of(summary: dict) -> tuple[str, float] | None:
    """The run's headline held-out metric: accuracy for classification, else perplexity, else loss."""
    for key in ("val_accuracy", "val_perplexity", "val_loss"):
        if isinstance(summary.get(key), int | float):
            return key, float(summary[key])
    return None


def rank_frame(sweep: Sweep) -> pd.DataFrame:
    rows = []
    every = [((rank, seed), run) for (rank, seed), run in sweep.runs.items()]
    every += [(("full", seed), run) for seed, run in sweep.full.items()]  # full fine-tuning, after the ranks
    for (rank, seed), run in every:
        row = {"r": rank, "seed": seed}
        initial = run.summary.get("initial_eval") or {}
        for key, col in COLUMNS.items():
            if key in run.summary:
                row[col] = run.summary[key]
            if key in initial and key.startswith("val_"):
                row[f"{col} at step 0"] = initial[key]
        rows.append(row)
    frame = pd.DataFrame(rows)
    ordered = ["r", "seed"] + [c for c in frame.columns if c not in ("r", "seed")]
    return frame[ordered]


def rank_table(sweep: Sweep) -> Artifact:
    frame = rank_frame(sweep)
    caption = f"{sweep.name}: held-out metric, parameters and cost of each adapter."
    return Artifact("table_ranks", frame, table=frame.set_index(["r", "seed"]), caption=caption)
