"""What a figure recipe produces: a figure and the numbers behind it, or a table, under one file stem."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lorascope.run_format import atomic_write_text
from lorascope.writers import write_figure, write_table

log = logging.getLogger(__name__)


@dataclass
class Artifact:
    """One output of a recipe: `fig` with `data` (the CSV beside it), a `table` (CSV, Markdown, LaTeX),
    or a Markdown `text`."""

    stem: str
    data: pd.DataFrame | None = None
    fig: object | None = None
    table: pd.DataFrame | None = None
    caption: str = ""
    facts: dict = field(default_factory=dict)  # numbers findings.md quotes (recipes not yet typed)
    result: object | None = None  # the typed result its finding reads (a dataclass of the recipe's module)
    text: str | None = None  # a Markdown document (findings.md) instead of a figure or table

    def write(self, out: Path, formats=("png", "pdf")) -> list[Path]:
        if self.text is not None:
            path = out / f"{self.stem}.md"
            atomic_write_text(path, self.text)
            log.info("wrote %s", path)
            return [path]
        if self.fig is not None:
            return write_figure(self.fig, out / self.stem, self.data, formats)
        return write_table(self.table if self.table is not None else self.data, out / self.stem)


@dataclass
class Skipped:
    """A recipe that cannot run on this sweep, and the command that would make it possible."""

    recipe: str
    reason: str

    def __str__(self) -> str:
        return f"{self.recipe}: skipped: {self.reason}"

    def lines(self) -> list[str]:
        """What a findings.md section says in place of its verdict."""
        return [f"Not testable: {self.reason}.", ""]
