"""A sweep as one self-contained HTML page: `lorascope report SWEEP` (and `lorascope figures` writes it).

    from lorascope.report import write_report
    write_report("runs/minilm-bbc")        # -> runs/minilm-bbc/figures/report.html

The page holds the runs table (status, rank, seed, method, metrics, wall time, why a run failed, and
each run's config.yaml and summary.json on demand), findings.md rendered, and every file of the figures
folder by recipe: the figures inline with their caption, the tables rendered, and each file (CSV, PDF,
LaTeX, Markdown) as a download inside the page.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lorascope.report.collect import REPORT, Report, collect
from lorascope.report.page import render

__all__ = ["Report", "collect", "render", "write_report"]

log = logging.getLogger(__name__)


def write_report(
    sweep: str | Path, figures_dir: str | Path | None = None, out: str | Path | None = None
) -> Path:
    """Write the page to `out` (default: FIGURES/report.html, FIGURES = SWEEP/figures) and return its path."""
    from lorascope.run_format import atomic_write

    report = collect(sweep, figures_dir)
    page = render(report)
    default_dir = Path(figures_dir) if figures_dir else Path(sweep) / "figures"
    path = Path(out) if out else default_dir / REPORT
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    log.info("wrote %s (%.1f MB)", path, len(page) / 2**20)
    return path
