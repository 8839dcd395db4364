"""findings.md from intervals over seeds: a sweep of three seeds reports mean [lo, hi] and verdicts read
from them; a sweep of one seed gives the numbers and says that no interval can be given."""

from __future__ import annotations

import re

import pytest
import torch
from test_paper import write_run

from lorascope.paper.recipes import make_figures

pytestmark = pytest.mark.usefixtures("one_thread")

INTERVAL = re.compile(r"\d\.\d+(e-\d+)? \[-?\d\.\d+(e-\d+)?, -?\d\.\d+(e-\d+)?\]")


def _shared() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(5)), dim=0)


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}")[1].split("\n## ")[0]


def _row(section: str, start: str) -> list[str]:
    line = next(line for line in section.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_three_seeds_give_intervals_and_verdicts(tiny_bert, tmp_path):
    sweep = tmp_path / "tiny-bert-toy"
    for rank in (4, 8):
        for seed in (0, 1, 2):
            write_run(sweep, tiny_bert, rank, seed, _shared())
    make_figures(sweep, tmp_path / "out", formats=("png",), recipes=["fig3", "fig4", "table7", "findings"])
    text = (tmp_path / "out" / "findings.md").read_text()
    fig3 = _section(text, "Fig. 3")
    cells = _row(fig3, "| A − A0 | query |")
    assert INTERVAL.fullmatch(cells[2]), cells[2]  # φ(1, 1) as mean [lo, hi] over the 3 seeds
    lo = float(cells[2].split("[")[1].split(",")[0])
    assert lo > 0.9 and cells[-1] == "holds"  # the planted shared direction: the interval clears 0.5
    fig4 = _section(text, "Fig. 4")
    cells = _row(fig4, "| A − A0 | query |")
    assert INTERVAL.fullmatch(cells[2]) and "200 draws" in cells[3] and "percentile" in cells[3]
    assert cells[-1] == "**holds**"  # above the Gaussian null's 95th percentile
    t7 = _section(text, "Table 7")
    cells = _row(t7, "| query | 4 |")
    assert INTERVAL.fullmatch(cells[2]) and "±" in cells[4] and cells[5].isdigit()
    assert "one seed: no interval" not in fig3 + fig4 + t7


def test_one_seed_says_no_interval_can_be_given(tiny_bert, tmp_path):
    sweep = tmp_path / "tiny-bert-toy"
    for rank in (4, 8):
        write_run(sweep, tiny_bert, rank, 0, _shared())
    make_figures(sweep, tmp_path / "out", formats=("png",), recipes=["fig3", "table7", "findings"])
    text = (tmp_path / "out" / "findings.md").read_text()
    fig3 = _section(text, "Fig. 3")
    cells = _row(fig3, "| A − A0 | query |")
    assert cells[2].endswith("(one seed: no interval)") and float(cells[2].split()[0]) > 0.9
    assert cells[-1] == "one seed: no interval"  # the number is there; no verdict is drawn from it
    assert "Verdict: A: **one seed: no interval**" in fig3
    t7 = _section(text, "Table 7")
    assert "(one seed: no interval)" in _row(t7, "| query | 4 |")[2]
    assert "**one seed: no interval**" in t7
    assert not INTERVAL.search(fig3 + t7)
