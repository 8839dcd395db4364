"""Amplification (paper Table 7) on planted W and ΔW with hand-computed answers."""

import math

import numpy as np
import pytest
import torch

from lorascope import analysis as la
from lorascope.errors import LorascopeError

# W = diag(4, 3, 2) in a (4, 3) matrix: W's singular directions are the coordinate axes.
W = torch.zeros(4, 3, dtype=torch.float64)
W[0, 0], W[1, 1], W[2, 2] = 4.0, 3.0, 2.0


def test_rank_one_delta_along_a_weak_direction_of_W():
    A = torch.tensor([[0.0, 0.0, 1.0]])  # (1, 3)
    B = torch.tensor([[0.0], [0.0], [2.0], [0.0]])  # (4, 1)
    res = la.amplification(W, A, B, scaling=0.5)  # ΔW = e2 e2ᵀ
    assert res["k"] == 1
    assert res["w_norm"] == pytest.approx(math.sqrt(29))
    assert res["dw_norm"] == pytest.approx(1.0)
    assert res["proj_dw"] == pytest.approx(2.0)  # e2ᵀ W e2 = W[2, 2]
    assert res["proj_w"] == pytest.approx(4.0)  # W's top direction
    assert res["amplification"] == pytest.approx(0.5)


def test_rank_two_delta_and_k():
    A = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # (2, 3)
    B = torch.tensor([[0.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 0.0]])  # ΔW = 2 e2e2ᵀ + 3 e1e1ᵀ
    res = la.amplification(W, A, B, scaling=1.0)
    assert res["k"] == 2
    assert res["dw_norm"] == pytest.approx(math.sqrt(13))
    assert res["proj_dw"] == pytest.approx(math.sqrt(13))  # ‖diag(3, 2)‖_F
    assert res["proj_w"] == pytest.approx(5.0)  # ‖diag(4, 3)‖_F
    assert res["amplification"] == pytest.approx(1.0)
    top1 = la.amplification(W, A, B, scaling=1.0, k=1)  # U = V = e1 (σ = 3 > 2)
    assert top1["proj_dw"] == pytest.approx(3.0)
    assert top1["proj_w"] == pytest.approx(4.0)
    assert top1["amplification"] == pytest.approx(math.sqrt(13) / 3)
    with pytest.raises(LorascopeError, match="exceeds the rank"):
        la.amplification(W, A, B, 1.0, k=3)


def test_random_projection_is_seeded_and_has_the_expected_size():
    g = torch.Generator().manual_seed(0)
    Wb = torch.randn(60, 50, generator=g, dtype=torch.float64)
    A, B = torch.randn(4, 50, generator=g), torch.randn(60, 4, generator=g)
    res = la.amplification(Wb, A, B, 1.0, seed=3)
    U, V = la.random_orthonormal(60, 4, 3), la.random_orthonormal(50, 4, 4)
    assert res["proj_random"] == pytest.approx(float(torch.linalg.matrix_norm(U.T @ Wb @ V)))
    # E‖UᵀWV‖²_F = (k / out)(k / in) ‖W‖²_F for random orthonormal U, V.
    sq = [la.amplification(Wb, A, B, 1.0, seed=s)["proj_random"] ** 2 for s in range(0, 80, 2)]
    expected = (4 / 60) * (4 / 50) * float(torch.linalg.matrix_norm(Wb)) ** 2
    assert np.mean(sq) == pytest.approx(expected, rel=0.25)
    assert res["proj_random"] < res["proj_w"]


def test_zero_delta_and_bad_shapes():
    res = la.amplification(W, torch.ones(2, 3), torch.zeros(4, 2), 1.0)
    assert res["dw_norm"] == 0.0 and math.isnan(res["proj_dw"]) and math.isnan(res["amplification"])
    with pytest.raises(LorascopeError, match="does not match"):
        la.amplification(W.T, torch.ones(2, 3), torch.zeros(4, 2), 1.0)


def test_w_delta_similarity_figure8():
    A = torch.tensor([[0.0, 0.0, 1.0]])
    B = torch.tensor([[0.0], [0.0], [2.0], [0.0]])
    phi = la.w_delta_similarity(W, A, B, 1.0, side="right")
    assert phi.shape == (3, 1)
    np.testing.assert_allclose(phi[:, 0], [0.0, 0.0, 1.0], atol=1e-12)  # ΔW's direction is W's third
    np.testing.assert_allclose(
        la.w_delta_similarity(W, A, B, side="left", top_w=2)[:, 0], [0.0, 0.0], atol=1e-12
    )
