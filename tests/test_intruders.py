"""Intruder dimensions: found when planted, absent when ΔW = 0 or ΔW boosts W's own direction."""

import numpy as np
import pytest
import torch

from lorascope import analysis as la
from lorascope.errors import LorascopeError


def _planted_W(n=24, seed=0):
    """W = U diag(σ) Vᵀ with well-separated σ, so W's singular vectors are well defined."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    sigma = torch.linspace(10.0, 0.5, n, dtype=torch.float64)
    return U @ torch.diag(sigma) @ V.T, U, V


def test_no_intruders_without_a_delta():
    W, _, _ = _planted_W()
    res = la.intruder_dimensions(W, torch.zeros_like(W))
    assert res["count"] == 0 and res["indices"] == []
    np.testing.assert_allclose(res["max_cos"], 1.0, atol=1e-8)


def test_planted_intruder_is_found():
    W, U, V = _planted_W()
    # A new output direction spread evenly over W's 8 weakest ones: max |cos| = 1/√8 ≈ 0.35 < 0.5.
    u_new = U[:, -8:].sum(dim=1) / np.sqrt(8)
    delta = 30.0 * torch.outer(u_new, V[:, 0])
    res = la.intruder_dimensions(W, delta, k=5, eps=0.5)
    assert res["count"] == 1 and res["indices"] == [0]  # stronger than σ_1(W): it is the top vector
    assert res["max_cos"].shape == (5,)
    assert res["max_cos"][0] < 0.5 and np.all(res["max_cos"][1:] >= 0.5)


def test_boosting_an_existing_direction_is_not_an_intruder():
    W, U, V = _planted_W()
    res = la.intruder_dimensions(W, 30.0 * torch.outer(U[:, 3], V[:, 3]))
    assert res["count"] == 0


def test_bad_inputs():
    W, _, _ = _planted_W(6)
    with pytest.raises(LorascopeError, match="differ in shape"):
        la.intruder_dimensions(W, torch.zeros(6, 5))
    with pytest.raises(LorascopeError, match="k must be"):
        la.intruder_dimensions(W, torch.zeros_like(W), k=7)
