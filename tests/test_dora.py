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
