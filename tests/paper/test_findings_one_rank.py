"""findings.md on a sweep of one rank and one seed: what cannot be tested says so, never "no"."""

from __future__ import annotations

import pytest
import torch
from test_paper import write_run

from lorascope.paper.recipes import make_figures

pytestmark = pytest.mark.usefixtures("one_thread")


def test_findings_of_a_one_rank_sweep_never_state_an_untestable_verdict(tiny_bert, tmp_path):
    sweep = tmp_path / "tiny-bert-toy"
    shared = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(5)), dim=0)
    write_run(sweep, tiny_bert, 8, 0, shared)
    written, skipped = make_figures(
        sweep, tmp_path / "out", formats=("png",), recipes=["fig3", "table7", "findings"]
    )
    text = (tmp_path / "out" / "findings.md").read_text()
    assert "rank 0" not in text and all("rank 0" not in s.reason for s in skipped)
    assert "needs two ranks" in text
    # the runs have their A0: the control is not testable because no comparison was made
    assert "no adapter_init" not in text
    assert "## Initialisation control\n\nNot testable:" in text
    assert "larger than at r = 8" not in text
    assert "amplification at a smaller rank than another: not testable" in text
