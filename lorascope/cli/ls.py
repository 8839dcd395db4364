"""`lorascope ls SWEEP`: what a sweep holds, from summary.json and config.yaml only (no tensors, no torch)."""

from __future__ import annotations

from pathlib import Path

from lorascope.cli.output import text


def add_ls(sub) -> None:
    p = sub.add_parser(
        "ls",
        help="list the runs of a sweep",
        description=(
            "One row per run folder of SWEEP: rank, seed, status, final metrics and wall time, "
            "read from summary.json (no tensors are loaded)."
        ),
    )
    p.add_argument("sweep", metavar="SWEEP", type=Path, help="sweep folder, e.g. runs/minilm-bbc")
    p.set_defaults(func=cmd_ls)


def cmd_ls(args) -> int:
    from lorascope.compare.sweeps import sweep_table

    table = sweep_table(args.sweep)
    table["wall_time_s"] = table["wall_time_s"].map(duration)
    print(text(table.rename(columns={"wall_time_s": "wall_time"})))  # a metric a run lacks prints as --
    return 0


def duration(seconds) -> str:
    """A wall time as 12.3s, 4m05s or 2h03m; "-" when absent."""
    if seconds is None or seconds != seconds:  # absent, or NaN in a frame
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"
