"""`lorascope report` and the page `lorascope figures` writes: every file and run in one self-contained
page, which a real headless browser loads without an error, every image decoded."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from browser import CHROMIUM, open_page
from test_paper import write_full_run, write_run

from lorascope import run_format, runs
from lorascope.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


class Attributes(HTMLParser):
    """Every value of the data-file and data-run attributes, and every src/href that is not inline."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[str] = []
        self.runs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.files += [a["data-file"]] if "data-file" in a else []
        self.runs += [a["data-run"]] if "data-run" in a else []
        for key in ("src", "href"):
            value = a.get(key)
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)


def _parse(page: Path) -> Attributes:
    parser = Attributes()
    parser.feed(page.read_text())
    return parser


@pytest.fixture(scope="module")
def reported(tiny_bert, tmp_path_factory):
    """A synthetic sweep (4 LoRA runs, full fine-tuning, one failed and one unfinished run) and what
    `lorascope figures` wrote for it, the page included."""
    sweep = tmp_path_factory.mktemp("report") / "tiny-bert-toy"
    shared = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(5)), dim=0)
    for rank, seed in [(1, 0), (4, 0), (8, 0), (8, 1)]:
        write_run(sweep, tiny_bert, rank, seed, shared)
    write_full_run(sweep, tiny_bert, shared)
    failed = sweep / "r2-s0"
    run_format.write_config(failed, {"rank": 2, "seed": 0, "note": "<script>alert(1)</script>"})
    run_format.write_summary(failed, {"status": "failed", "reason": "loss nan at step 3: the run diverged"})
    run_format.write_config(sweep / "r16-s0", {"rank": 16, "seed": 0})  # killed before its summary
    out = sweep / "figures"
    recipes = "fig3,fig6,spectrum,ranks,findings"
    assert cli_main(["figures", str(sweep), "--out", str(out), "--only", recipes]) == 0
    # The spectrum also as SVG: the page then shows the SVG (sharp at any zoom), the PNG as a file.
    assert (
        cli_main(["figures", str(sweep), "--out", str(out), "--only", "spectrum", "--format", "svg,png"]) == 0
    )
    return sweep, out


def test_figures_writes_a_page_holding_every_file_it_wrote_and_every_run(reported):
    sweep, out = reported
    page = out / "report.html"
    assert page.is_file()
    found = _parse(page)
    written = sorted(p.name for p in out.iterdir() if p.name != "report.html")
    assert {"fig3_rank_similarity_A.png", "fig_spectrum.csv", "table_ranks.tex", "findings.md"} <= set(
        written
    )
    assert sorted(found.files) == written  # each file once, inside the page
    assert found.runs == [p.name for p in runs.list_runs(sweep)]
    assert {"r2-s0", "r16-s0", "full-s0"} <= set(found.runs)
    assert found.external == []  # nothing to fetch: no server, no network
    text = page.read_text()
    assert "loss nan at step 3: the run diverged" in text and "incomplete" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert(1)" not in text
    assert "<h1>Findings on" in text  # findings.md rendered, not quoted
    assert re.search(r'id="fig_spectrum"><img id="img\d+" src="data:image/svg\+xml;base64,', text)


def test_report_command_writes_where_asked_and_refuses_a_folder_without_runs(reported, tmp_path, capsys):
    sweep, out = reported
    assert cli_main(["report", str(sweep), "--out", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'r.html'}"
    assert sorted(_parse(tmp_path / "r.html").files) == sorted(_parse(out / "report.html").files)
    assert cli_main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lorascope: error: {tmp_path}: holds no run folders"
    ]


def test_a_sweep_without_figures_gets_its_runs_table(reported, tmp_path):
    sweep, _ = reported
    bare = tmp_path / "bare"
    shutil.copytree(sweep / "r1-s0", bare / "r1-s0")
    assert cli_main(["report", str(bare)]) == 0
    found = _parse(bare / "figures" / "report.html")
    assert found.runs == ["r1-s0"] and found.files == []


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_page_loads_in_a_browser_without_errors_and_every_image_decodes(reported, tmp_path):
    _, out = reported
    shot = tmp_path / "report.png"
    clicks = (
        "document.getElementById('toggle-configs').click();"  # every config open, then closed
        "document.getElementById('toggle-configs').click();"
        "document.querySelector('#runs-table th:nth-child(3)').click();"  # sort by rank
        "document.querySelector('.card img').click(); document.getElementById('zoom').click();"
    )
    seen = open_page(out / "report.html", screenshot=shot, actions=clicks)
    assert seen["problems"] == [], seen["problems"]
    assert seen["title"] == "lorascope: tiny-bert-toy"
    drawn = {p.stem for p in out.iterdir() if p.suffix in (".png", ".svg")}
    cards = [i for i in seen["images"] if i[0] != "zoomed figure"]
    assert sorted(alt for alt, _, _ in cards) == sorted(drawn)
    assert all(complete and width > 0 for _, complete, width in cards), cards
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert json.dumps(seen)  # plain data
