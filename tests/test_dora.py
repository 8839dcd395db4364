"""DoRA's ΔW (PEFT's merge, minus W) and the DoRA paper's magnitude / direction changes ΔM, ΔD."""

from __future__ import annotations

import pytest
import torch

from lorascope.families.direction import correlation, magnitude_direction
from lorascope.families.dora import DoRADelta, dora_weight


def test_dora_weight_is_m_times_the_row_normalised_update():
    g = torch.Generator().manual_seed(0)
    W, A, B = torch.randn(6, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    m = torch.rand(6, generator=g) + 0.5
    Wp = dora_weight(W, A, B, 0.5, m)
    torch.testing.assert_close(torch.linalg.norm(Wp, dim=1), m)  # every row's norm is its magnitude
    V = W + 0.5 * B @ A
    cos = (Wp * V).sum(1) / (torch.linalg.norm(Wp, dim=1) * torch.linalg.norm(V, dim=1))
    torch.testing.assert_close(cos, torch.ones(6))  # and its direction is that of W + s·B A
    # m = ‖W‖ and B = 0 (DoRA's init): ΔW = 0
    d = DoRADelta(A, torch.zeros(6, 2), 0.5, torch.linalg.norm(W, dim=1), lambda: W)
    assert float(d.delta_weight().abs().max()) < 1e-6 and d.rank is None and d.shape == (6, 5)


def test_magnitude_and_direction_changes_known_answers():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(7, 4, generator=g, dtype=torch.float64)
    res = magnitude_direction(W, 0.5 * W)  # a pure rescaling: no direction change
    assert res["delta_d"] == pytest.approx(0, abs=1e-12)
    assert res["delta_m"] == pytest.approx(0.5 * float(torch.linalg.norm(W, dim=1).mean()))
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    res = magnitude_direction(W, W @ Q - W)  # a rotation of every row: no magnitude change
    assert res["delta_m"] == pytest.approx(0, abs=1e-12)
    want = float((1 - (W * (W @ Q)).sum(1) / torch.linalg.norm(W, dim=1) ** 2).mean())
    assert res["delta_d"] == pytest.approx(want)
    assert correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)


def test_dora_command_on_a_peft_dora_adapter(tmp_path):
    """`lorascope dora` on PEFT's DoRA adapter: ΔM, ΔD of (PEFT's merged W) against W, table and figure."""
    import subprocess
    import sys

    import pandas as pd
    from families_fixtures import llama_adapter

    from lorascope.runs import load_run
    from lorascope.weights import open_base

    pytest.importorskip("peft")
    folder, ref = llama_adapter(tmp_path, use_dora=True)
    res = subprocess.run(
        [sys.executable, "-m", "lorascope.cli", "dora", str(folder), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "out" / "dora.csv").set_index("module")
    assert (tmp_path / "out" / "dora_scatter.png").is_file() and "correlation" in res.stdout
    ckpt = open_base(load_run(folder))
    for m, D in ref.items():
        W = ckpt.weight(m, tuple(D.shape))
        want = magnitude_direction(W, D)
        assert table.loc[m, "delta_m"] == pytest.approx(want["delta_m"], rel=1e-5)
        assert table.loc[m, "delta_d"] == pytest.approx(want["delta_d"], rel=1e-4)
