"""Intruder dimensions: found when planted, absent when ΔW = 0 or ΔW boosts W's own direction."""

import numpy as np
import pytest
import torch

from lorascope import analysis as la
from lorascope.analysis import truncated
from lorascope.analysis.intruders import intruder_curve
from lorascope.errors import LorascopeError
from lorascope.run_format import Adapter, DenseDelta

# Small matrices: on a shared 2-core CPU, OpenMP threads cost more than they give.
pytestmark = pytest.mark.usefixtures("one_thread")


def _planted_W(n=24, seed=0):
    """W = U diag(σ) Vᵀ with well-separated σ, so W's singular vectors are well defined."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    sigma = torch.linspace(10.0, 0.5, n, dtype=torch.float64)
    return U @ torch.diag(sigma) @ V.T, U, V


def test_no_intruders_without_a_delta():
    W, _, _ = _planted_W()
    res = la.intruder_dimensions(W, DenseDelta(torch.zeros_like(W)))
    assert res["count"] == 0 and res["indices"] == []
    np.testing.assert_allclose(res["max_cos"], 1.0, atol=1e-8)


def test_planted_intruder_is_found():
    W, U, V = _planted_W()
    # A new output direction spread evenly over W's 8 weakest ones: max |cos| = 1/√8 ≈ 0.35 < 0.5.
    u_new = U[:, -8:].sum(dim=1) / np.sqrt(8)
    delta = 30.0 * torch.outer(u_new, V[:, 0])
    res = la.intruder_dimensions(W, DenseDelta(delta), k=5, eps=0.5)
    assert res["count"] == 1 and res["indices"] == [0]  # stronger than σ_1(W): it is the top vector
    assert res["max_cos"].shape == (5,)
    assert res["max_cos"][0] < 0.5 and np.all(res["max_cos"][1:] >= 0.5)


def test_boosting_an_existing_direction_is_not_an_intruder():
    W, U, V = _planted_W()
    res = la.intruder_dimensions(W, DenseDelta(30.0 * torch.outer(U[:, 3], V[:, 3])))
    assert res["count"] == 0


def test_bad_inputs():
    W, _, _ = _planted_W(6)
    with pytest.raises(LorascopeError, match="does not match"):
        la.intruder_dimensions(W, DenseDelta(torch.zeros(6, 5)))
    with pytest.raises(LorascopeError, match="k must be"):
        la.intruder_dimensions(W, DenseDelta(torch.zeros_like(W)), k=7)


# ----------------------------------------------------------------------------- matrix-free, cached, curve


def _dense_reference(W, delta, k, eps):
    """Intruders as computed before: dense SVDs of W and of W + ΔW."""
    U_w = torch.linalg.svd(W.double(), full_matrices=False)[0]
    U_ft = torch.linalg.svd(W.double() + delta.double(), full_matrices=False)[0][:, :k]
    max_cos = (U_ft.T @ U_w).abs().amax(dim=1).numpy()
    return max_cos, int((max_cos < eps).sum())


def test_factors_dense_and_reference_agree_on_real_weights():
    from test_truncated import real_weights

    g = torch.Generator().manual_seed(0)
    for name, W in real_weights().items():
        A = torch.randn(4, W.shape[1], generator=g, dtype=torch.float64)
        B = torch.randn(W.shape[0], 4, generator=g, dtype=torch.float64)
        s = 0.3 * float(torch.linalg.matrix_norm(W, ord=2)) / float(torch.linalg.matrix_norm(B @ A, ord=2))
        ref_cos, ref_count = _dense_reference(W, s * B @ A, 10, 0.5)
        for delta in (Adapter(A, B, s), DenseDelta(s * B @ A)):
            res = la.intruder_dimensions(W, delta, k=10, eps=0.5)
            np.testing.assert_allclose(res["max_cos"], ref_cos, atol=1e-6, err_msg=name)
            assert res["count"] == ref_count
        # W's left basis through W Wᵀ's eigenvectors or the SVD: the same test result.
        for method in ("eigh", "svd"):
            U_w = truncated.left_basis(W, method=method)
            res = la.intruder_dimensions(W, Adapter(A, B, s), k=10, U_w=U_w)
            np.testing.assert_allclose(res["max_cos"], ref_cos, atol=1e-6, err_msg=f"{name} {method}")


def test_planted_intruder_from_factors_is_found():
    W, U, V = _planted_W(32)
    b = U[:, -16:].sum(dim=1) / 4.0  # spread over W's 16 weakest directions: max |cos| = 1/4
    a = V[:, -1]
    res = la.intruder_dimensions(W, Adapter(a[None, :], b[:, None], 50.0), k=5)
    ref_cos, _ = _dense_reference(W, 50.0 * torch.outer(b, a), 5, 0.5)
    np.testing.assert_allclose(res["max_cos"], ref_cos, atol=1e-9)
    assert res["indices"] == [0] and res["max_cos"][0] < 0.3  # ≈ (50/4 + σ_32) / 50: mostly b
    assert res["sigma"][0] == pytest.approx(50.0, rel=1e-2)
    none = la.intruder_dimensions(W, Adapter(a[None, :], 0 * b[:, None], 50.0), k=5)
    assert none["count"] == 0


def test_curve_counts_below_each_eps():
    eps, count = intruder_curve([0.2, 0.45, 0.8, 1.0], eps=[0.1, 0.2, 0.3, 0.5, 0.9])
    assert count.tolist() == [0, 0, 1, 2, 3]  # strictly below ε: 0.2 is not an intruder at ε = 0.2
    eps, count = intruder_curve(np.array([0.3]))
    assert eps[0] == pytest.approx(0.1) and eps[-1] == pytest.approx(0.9) and len(eps) == 17
    assert np.all(np.diff(count) >= 0)
    with pytest.raises(LorascopeError, match="eps must be"):
        la.intruder_dimensions(torch.eye(4), DenseDelta(torch.zeros(4, 4)), k=2, eps=0.0)
