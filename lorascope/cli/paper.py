"""`lorascope figures SWEEP` (the LoRA paper's Section 7 and findings.md) and `lorascope report SWEEP`.

`figures` writes what `lorascope.paper.make_figures` lays out (SWEEP/figures by default), then the
report page of it; `report` writes the page alone (`lorascope.report.write_report`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorascope.cli import options
from lorascope.cli.output import formats, progress, report_paths


def add_figures(sub) -> None:
    from lorascope.paper.catalog import DESCRIPTIONS, FIGURE_FACTORS

    p = sub.add_parser(
        "figures",
        help="every figure and table of the LoRA paper's Section 7, and findings.md",
        description="Render the LoRA paper's Section 7 analyses for a sweep:\n\n"
        + "\n".join(f"  {k:<9} {v}" for k, v in DESCRIPTIONS.items())
        + "\n\nFigures are written as PNG/PDF with the CSV of their numbers beside them, tables as CSV,\n"
        "Markdown and LaTeX. Recipes the sweep cannot feed (no second seed, say) are skipped with\n"
        "the command that would make them possible.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", metavar="SWEEP", type=Path, help="sweep folder, e.g. runs/minilm-bbc")
    options.add_out(p, "SWEEP/figures")
    options.add_format(p, "png,pdf")
    p.add_argument(
        "--only", metavar="LIST", help=f"only these recipes, e.g. fig3,table7 ({', '.join(DESCRIPTIONS)})"
    )
    p.add_argument(
        "--factor", action="append", choices=FIGURE_FACTORS, help="factor(s) for the φ figures (default: all)"
    )
    p.add_argument("--layer", type=int, help="layer of the single-layer figures (default: the middle one)")
    options.add_device(p)
    p.set_defaults(func=cmd_figures)


def cmd_figures(args) -> int:
    from lorascope.paper import FIGURE_FACTORS, default_out, make_figures
    from lorascope.report import write_report

    out = args.out or default_out(args.sweep)
    written, skipped = make_figures(
        args.sweep,
        out,
        formats=formats(args),
        recipes=args.only.split(",") if args.only else None,
        factors=args.factor or FIGURE_FACTORS,
        layer=args.layer,
        progress=progress(),
        device=args.device,
    )
    for s in skipped:
        print(s)
    report_paths(written)
    if (out / "findings.md").is_file():
        print(f"findings: {out / 'findings.md'}")
    print(f"report: {write_report(args.sweep, out)}")  # the page of all of it
    return 0


def add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of a sweep: runs, figures, tables, findings",
        description=(
            "Write one HTML page holding the runs table of SWEEP (status, rank, seed, method, metrics, "
            "wall time, why a run failed, each run's config on demand), findings.md, and every figure "
            "and table of `lorascope figures` with its files. Everything is inside the page (no server, "
            "no network): open it from disk, mail it, attach it to a notebook."
        ),
    )
    p.add_argument("sweep", metavar="SWEEP", type=Path, help="sweep folder, e.g. runs/minilm-bbc")
    p.add_argument(
        "--out", metavar="FILE", type=Path, help="the page to write (default: FIGURES/report.html)"
    )
    p.add_argument(
        "--figures",
        metavar="DIR",
        type=Path,
        help="the folder `lorascope figures` wrote (default: SWEEP/figures)",
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from lorascope.report import write_report

    print(f"report: {write_report(args.sweep, args.figures, args.out)}")
    return 0
