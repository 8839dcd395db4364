"""What a sweep folder holds: one row per run folder, read from summary.json and config.yaml only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lorascope.errors import LorascopeError
from lorascope.run_format import read_config, read_summary
from lorascope.runs import list_runs, parse_run_name

# The numbers `ls` shows, from summary.json, in this order (a run shows those it has).
METRICS = ("val_accuracy", "val_loss", "val_perplexity", "final_loss", "steps")


def run_row(path: Path) -> dict:
    """One line of `ls`: run, rank, seed, status, final metrics, wall time (s), and why it failed."""
    row: dict = {"run": path.name}
    try:
        summary, config = read_summary(path), read_config(path)
    except LorascopeError as e:  # one unreadable run is reported, never fatal for the listing
        return {**row, "status": "unreadable", "reason": str(e)}
    rank, seed = parse_run_name(path.name) or (None, None)
    row.update(
        rank=config.get("rank", rank),
        seed=config.get("seed", seed),
        status=summary.get("status", "incomplete"),
    )
    row.update({k: summary[k] for k in METRICS if isinstance(summary.get(k), int | float)})
    row["wall_time_s"] = summary.get("wall_time_s")
    if summary.get("reason"):
        row["reason"] = summary["reason"]
    return row


def sweep_table(sweep: str | Path) -> pd.DataFrame:
    """`ls`: one row per run folder of a sweep, indexed by run name, in rank-then-seed order."""
    folders = list_runs(sweep)
    if not folders:
        raise LorascopeError(f"{sweep}: holds no run folders")
    table = pd.DataFrame([run_row(p) for p in folders]).set_index("run")
    columns = ["rank", "seed", "status", *METRICS, "wall_time_s", "reason"]
    return table[[c for c in columns if c in table.columns]]
