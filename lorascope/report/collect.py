"""What the sweep report shows, read from files only: the runs of a sweep and the files of its figures
folder, grouped by the recipe that wrote them (`lorascope.paper.catalog`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from lorascope.compare.sweeps import sweep_table
from lorascope.paper.catalog import DESCRIPTIONS
from lorascope.run_format import CONFIG_FILE as RUN_CONFIG
from lorascope.run_format import SUMMARY_FILE, read_config
from lorascope.runs import list_runs

log = logging.getLogger(__name__)

# Recipe -> the file stems it writes (prefixes), in the order the page shows them.
STEMS = {
    "fig3": ("fig3_rank_similarity",),
    "fig4": ("fig4_seed_similarity",),
    "fig6": ("fig6_layers_rank_similarity",),
    "fig7": ("fig7_layers_seed_similarity",),
    "fig8": ("fig8_w_vs_delta",),
    "table7": ("table7_amplification",),
    "spectrum": ("fig_spectrum", "table_energy_rank"),
    "intruders": ("fig_intruders", "table_intruders"),
    "lora_vs_full": ("fig_lora_vs_full",),
    "cross_task": ("fig_cross_task",),
    "trajectory": ("trajectory_",),
    "ranks": ("table_ranks",),
}
NAV = {
    "fig3": "Fig. 3", "fig4": "Fig. 4", "fig6": "Fig. 6", "fig7": "Fig. 7", "fig8": "Fig. 8",
    "table7": "Table 7", "spectrum": "Spectrum", "intruders": "Intruders", "lora_vs_full": "LoRA vs full",
    "cross_task": "Cross-task", "trajectory": "Trajectories", "ranks": "Rank table", "other": "Other files",
}  # fmt: skip
# The φ figures come once per factor (FIGURE_FACTORS): what each suffix means.
FACTOR_NOTES = {
    "_A": "on A, the paper's analysis",
    "_dA": "on A − A0, the learned part of A",
    "_dW-right": "on ΔW's input-side singular vectors",
}
IMAGES = (".svg", ".png")  # shown inline, SVG first: the browser draws it sharp at any size
FINDINGS = "findings.md"
REPORT = "report.html"


@dataclass
class Item:
    """One figure or table: the files of one stem (stem.png, stem.pdf, stem.csv, stem.md, ...)."""

    stem: str
    files: dict[str, Path] = field(default_factory=dict)  # suffix -> path

    @property
    def image(self) -> Path | None:
        return next((self.files[s] for s in IMAGES if s in self.files), None)

    @property
    def table(self) -> Path | None:
        return self.files.get(".md") if self.image is None else None

    @property
    def caption(self) -> str:
        note = next((n for suffix, n in FACTOR_NOTES.items() if self.stem.endswith(suffix)), "")
        if self.stem.startswith("trajectory_"):
            return f"run {self.stem.removeprefix('trajectory_')}"
        if self.stem.endswith("_all_layers"):
            return "every layer"
        if self.stem.endswith("_all_modules"):
            return "every module"
        return note


@dataclass
class Section:
    key: str
    title: str
    items: list[Item]

    @property
    def label(self) -> str:
        return NAV.get(self.key, self.key)


@dataclass
class RunInfo:
    name: str
    row: dict
    config: str  # config.yaml as written
    summary: str  # summary.json as written


@dataclass
class Report:
    sweep: Path
    runs: list[RunInfo]
    columns: list[str]
    sections: list[Section]
    findings: str | None  # findings.md's Markdown
    figures_dir: Path | None


def _items(folder: Path) -> dict[str, Item]:
    items: dict[str, Item] = {}
    for path in sorted(folder.iterdir()):
        # Pages (this report, or one written there under another name) are not figures of the sweep.
        if not path.is_file() or path.name == FINDINGS or path.suffix == ".html" or path.name.startswith("."):
            continue
        items.setdefault(path.stem, Item(path.stem)).files[path.suffix] = path
    return items


def sections(folder: Path) -> list[Section]:
    """The figures folder's files as one section per recipe, and the files no recipe claims last."""
    items = _items(folder)
    out = []
    for key, prefixes in STEMS.items():
        claimed = [i for s, i in items.items() if s.startswith(prefixes)]
        claimed.sort(key=lambda i: (next(n for n, p in enumerate(prefixes) if i.stem.startswith(p)), i.stem))
        for i in claimed:
            items.pop(i.stem)
        if claimed:
            out.append(Section(key, DESCRIPTIONS[key], claimed))
    if items:
        out.append(Section("other", "Other files", list(items.values())))
    return out


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def collect(sweep: str | Path, figures_dir: str | Path | None = None) -> Report:
    """The runs of `sweep` (every run folder, failed and incomplete included) and the files of its
    figures folder (default SWEEP/figures; a sweep without figures still gets its runs table)."""
    sweep = Path(sweep)
    table = sweep_table(sweep)  # LorascopeError for a folder without runs
    folder = Path(figures_dir) if figures_dir else sweep / "figures"
    runs = []
    for path in list_runs(sweep):
        row = {"run": path.name, **table.loc[path.name].dropna().to_dict()}
        try:
            method = read_config(path).get("method") or "lora"
        except Exception:  # an unreadable config is already the row's reason
            method = None
        row = {"run": row.pop("run"), "method": method, **row}
        runs.append(RunInfo(path.name, row, _text(path / RUN_CONFIG), _text(path / SUMMARY_FILE)))
    columns = ["run", "method", *[c for c in table.columns]]
    if not folder.is_dir():
        log.warning("%s: no figures folder; the report holds the runs only (run lorascope figures %s)",
                    folder, sweep)  # fmt: skip
        return Report(sweep, runs, columns, [], None, None)
    findings = folder / FINDINGS
    return Report(sweep, runs, columns, sections(folder), _text(findings) or None, folder)
