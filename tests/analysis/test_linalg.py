"""Factor bases and the factored SVD of ΔW against the plain dense computation."""

import pytest
import torch

from lorascope import analysis as la
from lorascope.errors import LorascopeError


def _proj(U: torch.Tensor) -> torch.Tensor:
    return U @ U.T


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_factor_basis_right_is_orthonormal_descending_and_spans_row_space():
    A = _rand(5, 20)
    V = la.factor_basis(A, side="right")
    assert V.shape == (20, 5) and V.dtype == torch.float64
    torch.testing.assert_close(V.T @ V, torch.eye(5, dtype=torch.float64))
    _, S, Vh = torch.linalg.svd(A, full_matrices=False)
    torch.testing.assert_close(_proj(V), _proj(Vh.T))
    # Columns by descending σ: ‖A v_k‖ = σ_k.
    torch.testing.assert_close(torch.linalg.vector_norm(A @ V, dim=0), S)


def test_factor_basis_left_for_B():
    B = _rand(30, 4, seed=1)
    U = la.factor_basis(B, side="left")
    assert U.shape == (30, 4)
    torch.testing.assert_close(_proj(U), _proj(torch.linalg.svd(B, full_matrices=False)[0]))


def test_factor_basis_accepts_float32_and_numpy():
    A = _rand(3, 7).float()
    torch.testing.assert_close(
        _proj(la.factor_basis(A.numpy())), _proj(la.factor_basis(A.double())), atol=1e-6, rtol=0
    )


def test_factor_basis_rejects_bad_side_and_shape():
    with pytest.raises(LorascopeError, match="side"):
        la.factor_basis(_rand(2, 3), side="up")
    with pytest.raises(LorascopeError, match="2-D"):
        la.factor_basis(torch.zeros(3))


def _check_against_dense(A, B, s, rank):
    U, S, V = la.delta_svd(A, B, s)
    dense = s * (B.double() @ A.double())
    Ud, Sd, Vhd = torch.linalg.svd(dense, full_matrices=False)
    k = S.shape[0]
    assert k == min(B.shape[0], A.shape[1], A.shape[0])
    torch.testing.assert_close(S, Sd[:k], atol=1e-10, rtol=1e-10)
    assert torch.all(S[:-1] >= S[1:])
    torch.testing.assert_close(U.T @ U, torch.eye(k, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(V.T @ V, torch.eye(k, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(U @ torch.diag(S) @ V.T, dense, atol=1e-10, rtol=1e-10)
    # The subspaces of the nonzero part agree (up to sign: compare projectors).
    torch.testing.assert_close(_proj(U[:, :rank]), _proj(Ud[:, :rank]), atol=1e-8, rtol=0)
    torch.testing.assert_close(_proj(V[:, :rank]), _proj(Vhd[:rank].T), atol=1e-8, rtol=0)
    assert torch.all(S[rank:] <= 1e-10 * max(float(S[0]), 1.0))


def test_delta_svd_matches_dense_full_rank():
    _check_against_dense(_rand(6, 40, seed=2), _rand(50, 6, seed=3), 2.5, rank=6)


def test_delta_svd_matches_dense_rank_deficient_B():
    B = _rand(50, 2, seed=4) @ _rand(2, 6, seed=5)  # rank 2 of r = 6
    _check_against_dense(_rand(6, 40, seed=6), B, 0.5, rank=2)


def test_delta_svd_B_zero_at_init_gives_zero_spectrum():
    U, S, V = la.delta_svd(_rand(4, 10), torch.zeros(12, 4), 2.0)
    assert torch.all(S == 0)
    torch.testing.assert_close(U.T @ U, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(V.T @ V, torch.eye(4, dtype=torch.float64))


def test_delta_svd_rank_larger_than_a_dimension():
    _check_against_dense(_rand(16, 10, seed=7), _rand(8, 16, seed=8), 1.0, rank=8)


def test_delta_svd_negative_scaling_keeps_singular_values_positive():
    A, B = _rand(3, 9, seed=9), _rand(7, 3, seed=10)
    _check_against_dense(A, B, -2.0, rank=3)


def test_delta_svd_float32_inputs_agree_with_float64_dense():
    A, B = _rand(8, 64, seed=11).float(), _rand(64, 8, seed=12).float()
    S = la.delta_svd(A, B, 1.0)[1]
    Sd = torch.linalg.svdvals(B.double() @ A.double())[:8]
    torch.testing.assert_close(S, Sd, rtol=1e-12, atol=0)


def test_delta_svd_rejects_mismatched_factors():
    with pytest.raises(LorascopeError, match="want A"):
        la.delta_svd(_rand(4, 10), _rand(12, 3), 1.0)


def test_random_orthonormal_is_orthonormal_and_seeded():
    Q = la.random_orthonormal(30, 5, seed=3)
    torch.testing.assert_close(Q.T @ Q, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(Q, la.random_orthonormal(30, 5, seed=3))
    assert not torch.allclose(Q, la.random_orthonormal(30, 5, seed=4))
