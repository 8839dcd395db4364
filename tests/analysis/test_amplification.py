"""Amplification (paper Table 7) on planted W and ΔW with hand-computed answers."""

import importlib
import math

import numpy as np
import pytest
import torch

from lorascope import analysis as la
from lorascope.analysis import truncated
from lorascope.analysis.amplification import random_projection
from lorascope.errors import LorascopeError
from lorascope.run_format import Adapter, DenseDelta

# W = diag(4, 3, 2) in a (4, 3) matrix: W's singular directions are the coordinate axes.
W = torch.zeros(4, 3, dtype=torch.float64)
W[0, 0], W[1, 1], W[2, 2] = 4.0, 3.0, 2.0


def test_rank_one_delta_along_a_weak_direction_of_W():
    A = torch.tensor([[0.0, 0.0, 1.0]])  # (1, 3)
    B = torch.tensor([[0.0], [0.0], [2.0], [0.0]])  # (4, 1)
    res = la.amplification(W, Adapter(A, B, 0.5))  # ΔW = e2 e2ᵀ
    assert res["k"] == 1
    assert res["w_norm"] == pytest.approx(math.sqrt(29))
    assert res["dw_norm"] == pytest.approx(1.0)
    assert res["proj_dw"] == pytest.approx(2.0)  # e2ᵀ W e2 = W[2, 2]
    assert res["proj_w"] == pytest.approx(4.0)  # W's top direction
    assert res["amplification"] == pytest.approx(0.5)


def test_rank_two_delta_and_k():
    A = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # (2, 3)
    B = torch.tensor([[0.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 0.0]])  # ΔW = 2 e2e2ᵀ + 3 e1e1ᵀ
    res = la.amplification(W, Adapter(A, B, 1.0))
    assert res["k"] == 2
    assert res["dw_norm"] == pytest.approx(math.sqrt(13))
    assert res["proj_dw"] == pytest.approx(math.sqrt(13))  # ‖diag(3, 2)‖_F
    assert res["proj_w"] == pytest.approx(5.0)  # ‖diag(4, 3)‖_F
    assert res["amplification"] == pytest.approx(1.0)
    top1 = la.amplification(W, Adapter(A, B, 1.0), k=1)  # U = V = e1 (σ = 3 > 2)
    assert top1["proj_dw"] == pytest.approx(3.0)
    assert top1["proj_w"] == pytest.approx(4.0)
    assert top1["amplification"] == pytest.approx(math.sqrt(13) / 3)
    with pytest.raises(LorascopeError, match="exceeds the rank"):
        la.amplification(W, Adapter(A, B, 1.0), k=3)


def test_random_projection_is_seeded_and_has_the_expected_size():
    g = torch.Generator().manual_seed(0)
    Wb = torch.randn(60, 50, generator=g, dtype=torch.float64)
    A, B = torch.randn(4, 50, generator=g), torch.randn(60, 4, generator=g)
    res = la.amplification(Wb, Adapter(A, B, 1.0), seed=3)
    U, V = la.random_orthonormal(60, 4, 3), la.random_orthonormal(50, 4, 4)
    assert res["proj_random"] == pytest.approx(float(torch.linalg.matrix_norm(U.T @ Wb @ V)))
    # E‖UᵀWV‖²_F = (k / out)(k / in) ‖W‖²_F for random orthonormal U, V.
    sq = [la.amplification(Wb, Adapter(A, B, 1.0), seed=s)["proj_random"] ** 2 for s in range(0, 80, 2)]
    expected = (4 / 60) * (4 / 50) * float(torch.linalg.matrix_norm(Wb)) ** 2
    assert np.mean(sq) == pytest.approx(expected, rel=0.25)
    assert res["proj_random"] < res["proj_w"]


def test_zero_delta_and_bad_shapes():
    res = la.amplification(W, Adapter(torch.ones(2, 3), torch.zeros(4, 2), 1.0))
    assert res["dw_norm"] == 0.0 and math.isnan(res["proj_dw"]) and math.isnan(res["amplification"])
    with pytest.raises(LorascopeError, match="does not match"):
        la.amplification(W.T, Adapter(torch.ones(2, 3), torch.zeros(4, 2), 1.0))


def test_w_delta_similarity_figure8():
    A = torch.tensor([[0.0, 0.0, 1.0]])
    B = torch.tensor([[0.0], [0.0], [2.0], [0.0]])
    phi = la.w_delta_similarity(W, Adapter(A, B, 1.0), side="right")
    assert phi.shape == (3, 1)
    np.testing.assert_allclose(phi[:, 0], [0.0, 0.0, 1.0], atol=1e-12)  # ΔW's direction is W's third
    np.testing.assert_allclose(
        la.w_delta_similarity(W, Adapter(A, B, 1.0), side="left", top_w=2)[:, 0], [0.0, 0.0], atol=1e-12
    )


# ----------------------------------------------------------------------------- the truncated route


def _dense_reference(W, A, B, s, k, seed=0):
    """Table 7 exactly as computed before the truncated route: dense SVDs of W and of ΔW."""
    W = W.double()
    dW = s * (B.double() @ A.double())
    U, S, Vh = torch.linalg.svd(dW)
    U, V = U[:, :k], Vh[:k].T
    sigma_w = torch.linalg.svdvals(W)
    U_r, V_r = la.random_orthonormal(W.shape[0], k, seed), la.random_orthonormal(W.shape[1], k, seed + 1)
    proj_dw = float(torch.linalg.matrix_norm(U.T @ W @ V))
    return {
        "w_norm": float(torch.linalg.vector_norm(sigma_w)),
        "dw_norm": float(torch.linalg.matrix_norm(dW)),
        "proj_dw": proj_dw,
        "proj_w": float(torch.linalg.vector_norm(sigma_w[:k])),
        "proj_random": float(torch.linalg.matrix_norm(U_r.T @ W @ V_r)),
        "amplification": float(torch.linalg.matrix_norm(dW)) / proj_dw,
    }


# Small matrices: on a shared 2-core CPU, OpenMP threads cost more than they give.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def real_W():
    from test_truncated import real_weights

    return real_weights()


def test_real_weights_equal_the_dense_reference(real_W):
    g = torch.Generator().manual_seed(0)
    for name, Wr in real_W.items():
        for r in (4, 16):
            A = torch.randn(r, Wr.shape[1], generator=g, dtype=torch.float64) / r**0.5
            B = 0.02 * torch.randn(Wr.shape[0], r, generator=g, dtype=torch.float64)
            ref = _dense_reference(Wr, A, B, 2.0, r)
            got = la.amplification(Wr, Adapter(A, B, 2.0))
            for key, value in ref.items():
                assert got[key] == pytest.approx(value, rel=1e-9), (name, r, key)
            # A dense ΔW (a full fine-tuning run) gives the same numbers at the same k.
            dense = la.amplification(Wr, DenseDelta(2.0 * B @ A), k=r)
            for key, value in ref.items():
                assert dense[key] == pytest.approx(value, rel=1e-6), (name, r, key)


def test_figure8_truncated_equals_dense(real_W):
    g = torch.Generator().manual_seed(1)
    for name, Wr in real_W.items():
        A = torch.randn(8, Wr.shape[1], generator=g, dtype=torch.float64)
        B = torch.randn(Wr.shape[0], 8, generator=g, dtype=torch.float64)
        U_w, _, Vh_w = torch.linalg.svd(Wr.double(), full_matrices=False)
        U, _, V = la.delta_svd(A, B, 1.0)
        for side, ref_basis, basis in (("left", U_w, U), ("right", Vh_w.T, V)):
            ref = la.phi_grid(ref_basis[:, :32], basis)
            got = la.w_delta_similarity(Wr, Adapter(A, B, 1.0), side=side, top_w=32)
            np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"{name} {side}")
        # Every direction of W (a dense SVD): on the side where W's basis is complete, φ(m, j) = 1.
        side = "left" if Wr.shape[0] <= Wr.shape[1] else "right"
        full = la.w_delta_similarity(Wr, Adapter(A, B, 1.0), side=side)
        assert full.shape == (min(Wr.shape), 8)
        np.testing.assert_allclose(full[-1], 1.0, atol=1e-9)


def test_cached_top_k_is_used_and_checked():
    A, B = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0], [0.0], [2.0], [0.0]])
    before = truncated.SVD_CALLS.copy()
    top = truncated.top_svd(W, 2)
    res = la.amplification(W, Adapter(A, B, 0.5), w_top=top)
    assert truncated.SVD_CALLS - before == {"top": 1}  # only the call above
    assert res["proj_w"] == pytest.approx(4.0)
    with pytest.raises(LorascopeError, match="top-1"):  # rank 2 needs W's top-2
        la.amplification(W, Adapter(torch.ones(2, 3), torch.ones(4, 2), 1.0), w_top=truncated.top_svd(W, 1))
    with pytest.raises(LorascopeError, match="give k"):
        la.amplification(W, DenseDelta(torch.ones(4, 3)))


def test_a_bf16_w_as_stored_gives_the_numbers_of_its_float64_copy():
    """The comparison layer hands amplification W as stored (bf16): converted block by block, it must
    give exactly what the float64 copy gives (bf16 values are exact in float64)."""
    g = torch.Generator().manual_seed(4)
    W16 = torch.randn(300, 200, generator=g).to(torch.bfloat16)  # 300 rows: more than one block
    A = torch.randn(6, 200, generator=g, dtype=torch.float64)
    B = 0.1 * torch.randn(300, 6, generator=g, dtype=torch.float64)
    got = la.amplification(W16, Adapter(A, B, 0.5))
    ref = la.amplification(W16.double(), Adapter(A, B, 0.5))
    dense = _dense_reference(W16.double(), A, B, 0.5, 6)
    for key, value in ref.asdict().items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    for key, value in dense.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    phi = la.w_delta_similarity(W16, Adapter(A, B, 0.5), top_w=8)
    np.testing.assert_allclose(
        phi, la.w_delta_similarity(W16.double(), Adapter(A, B, 0.5), top_w=8), atol=1e-12
    )


@pytest.mark.parametrize("shape", [(300, 200), (1100, 1000)])  # the float64 Krylov, and the mixed route
def test_several_deltas_of_one_w_equal_their_dense_answers_and_return_what_they_computed(shape):
    """`amplifications`: each ΔW's numbers as its own dense reference; W's top-k and the floors it
    computed handed back (for a cache), equal to `top_svd` and `random_projection`; a known floor and
    a known top-k are used, not recomputed."""
    g = torch.Generator().manual_seed(7)
    Wb = torch.randn(*shape, generator=g).to(torch.bfloat16)
    factors = {
        f"r{r}": (torch.randn(r, shape[1], generator=g), torch.randn(shape[0], r, generator=g))
        for r in (3, 6)
    }
    deltas = {label: Adapter(A, 0.01 * B, 2.0) for label, (A, B) in factors.items()}
    numbers, computed = la.amplifications(Wb, deltas, top_k=8, device="cpu")
    for label, (A, B) in factors.items():
        dense = _dense_reference(Wb, A, 0.01 * B, 2.0, A.shape[0])
        for key, value in dense.items():
            assert numbers[label][key] == pytest.approx(value, rel=1e-9), (label, key)
    U, S, V = computed.top
    assert S.shape == (8,)
    ref_U, ref_S, ref_V = truncated.top_svd(Wb, 8, device="cpu")
    np.testing.assert_allclose(S.numpy(), ref_S.numpy(), rtol=1e-12)
    np.testing.assert_allclose((U * V.sum(0)).abs().numpy(), (ref_U * ref_V.sum(0)).abs().numpy(), atol=1e-9)
    assert set(computed.random) == {3, 6}
    for q, value in computed.random.items():
        assert value == pytest.approx(random_projection(Wb, q), rel=1e-12)
    before = truncated.SVD_CALLS.copy()
    again, nothing = la.amplifications(Wb, deltas, w_top=computed.top, random={3: 1.5}, device="cpu")
    assert truncated.SVD_CALLS - before == {} and nothing.top is None and set(nothing.random) == {6}
    assert again["r3"].proj_random == 1.5 and again["r6"].proj_random == pytest.approx(computed.random[6])
    assert again["r6"].proj_dw == pytest.approx(numbers["r6"].proj_dw, rel=1e-12)
    with pytest.raises(LorascopeError, match="no ΔW"):
        la.amplifications(Wb, {})


def test_a_sweep_wider_than_one_pass_takes_several_and_gives_the_same_numbers(monkeypatch):
    """PASS_COLUMNS caps the columns of one pass over W: 5 ΔW of rank 3 and their floor (18 columns) in
    passes of at most 7 columns give the numbers of the single pass."""
    amp_module = importlib.import_module("lorascope.analysis.amplification")
    g = torch.Generator().manual_seed(8)
    Wb = torch.randn(120, 90, generator=g, dtype=torch.float64)
    deltas = {
        f"s{i}": Adapter(torch.randn(3, 90, generator=g), 0.1 * torch.randn(120, 3, generator=g), 1.0)
        for i in range(5)
    }
    one, one_side = la.amplifications(Wb, deltas, device="cpu")
    passes = []
    real = amp_module.stream_product
    monkeypatch.setattr(
        amp_module, "stream_product", lambda W, X, **kw: passes.append(X.shape[1]) or real(W, X, **kw)
    )
    monkeypatch.setattr(amp_module, "PASS_COLUMNS", 7)
    several, several_side = la.amplifications(Wb, deltas, w_top=one_side.top, device="cpu")
    assert passes == [6, 6, 6]  # two ΔW a pass; the last with the floor's V_r
    for label in deltas:
        for key, value in one[label].asdict().items():
            assert several[label][key] == pytest.approx(value, rel=1e-12), (label, key)
    assert several_side.random == pytest.approx(one_side.random, rel=1e-12)
