"""The trajectory of every LoRA run of a sweep that saved snapshots (train.snapshot_every=N)."""

from __future__ import annotations

from lorascope.analysis.trajectory import first_step_by_kind, first_step_reached, kind_summary
from lorascope.analysis.trajectory_plot import plot_trajectory
from lorascope.compare.trajectories import run_trajectory
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.sweep import Sweep

NO_SNAPSHOTS = "no run saved snapshots: run `python sweep.py rank=8 train.snapshot_every=5`"


def trajectories(sweep: Sweep, threshold: float = 0.9) -> list[Artifact | Skipped]:
    """One figure (trajectory_<run>) per run with snapshots, its frame as the CSV beside it."""
    out = []
    for run in sweep.runs.values():
        if not run.checkpoints():
            continue
        frame = run_trajectory(run)
        fig, _ = plot_trajectory(
            frame, threshold=threshold, suptitle=f"{sweep.name}/{run.name}: how ΔW forms"
        )
        facts = {
            "run": run.name,
            "by_kind": first_step_by_kind(first_step_reached(frame, threshold=threshold)),
            "summary": kind_summary(frame),
        }
        out.append(Artifact(f"trajectory_{run.name}", frame, fig=fig, facts=facts))
    return out or [Skipped("trajectory", NO_SNAPSHOTS)]
