"""The top-k of W + s·BA from W's cached decomposition equals the dense SVD, and a warm run never
multiplies by W: planted cases, real MiniLM / SmolLM2 weights, the tiny sharded bf16 Llama."""

from collections import Counter

import numpy as np
import pytest
import torch
from weights_fixtures import llama_modules, peft_folder, random_adapters, save_tiny_llama

from lorascope import analysis as la
from lorascope import base_model, runs, wspectra
from lorascope.analysis import truncated
from lorascope.analysis.w_plus_delta import top_of_w_plus_delta
from lorascope.compare import w_and_delta as compare_base
from lorascope.errors import LorascopeError
from lorascope.run_format import Adapter

pytestmark = pytest.mark.usefixtures("one_thread")


def _dense(W, A, B, s, k):
    """max_j |u_iᵀ u_j(W)| and σ_i of the top-k of W + s·BA from two dense float64 SVDs."""
    U_w = torch.linalg.svd(W.double(), full_matrices=False)[0]
    U_ft, S_ft, _ = torch.linalg.svd(W.double() + s * B.double() @ A.double(), full_matrices=False)
    return (U_ft[:, :k].T @ U_w).abs().amax(1).numpy(), S_ft[:k].numpy()


def _exact_basis(W):
    U, S, _ = torch.linalg.svd(W.double(), full_matrices=False)
    return U, S, W.double().T @ U


@pytest.mark.parametrize("shape", [(40, 40), (60, 30), (30, 60)])  # square, tall (Q_B needed), wide
@pytest.mark.parametrize("dense_n", [10**6, 0])  # dense eigh of the core, block Krylov on it
def test_equals_the_dense_svd_of_w_plus_delta(shape, dense_n):
    g = torch.Generator().manual_seed(sum(shape))
    W = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.linspace(
        3, 0.2, shape[1], dtype=torch.float64
    )
    A = torch.randn(3, shape[1], generator=g, dtype=torch.float64)
    B = torch.randn(shape[0], 3, generator=g, dtype=torch.float64)
    ref_cos, ref_sigma = _dense(W, A, B, 0.7, 8)
    res = top_of_w_plus_delta(*_exact_basis(W), A, B, 0.7, 8, dense_n=dense_n)
    np.testing.assert_allclose(res["max_cos"].numpy(), ref_cos, atol=1e-9)
    np.testing.assert_allclose(res["sigma"].numpy(), ref_sigma, rtol=1e-10)


def test_planted_new_direction_outside_a_tall_ws_column_space():
    """W (50, 20) has a 30-dimensional null left space; ΔW = s·b aᵀ with b in it is the top direction of
    W + ΔW, nearly orthogonal to every u_j(W) (up to the cross term s·W a bᵀ): found only through Q_B."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(50, 20, generator=g, dtype=torch.float64)
    U, S, WtU = _exact_basis(W)
    b = torch.randn(50, generator=g, dtype=torch.float64)
    b = b - U @ (U.T @ b)
    b = b / b.norm()
    a = torch.randn(20, generator=g, dtype=torch.float64)
    s = 10.0 * float(S[0]) / float(a.norm())
    res = top_of_w_plus_delta(U, S, WtU, a[None, :], b[:, None], s, 3)
    ref_cos, _ = _dense(W, a[None, :], b[:, None], s, 3)
    np.testing.assert_allclose(res["max_cos"].numpy(), ref_cos, atol=1e-9)
    assert float(res["max_cos"][0]) < 0.1
    assert float(res["sigma"][0]) > float(S[0])
    res_i = la.intruder_dimensions(W, Adapter(a[None, :], b[:, None], s), k=3, w_basis=(U, S, WtU))
    assert res_i["indices"][0] == 0


def test_bad_shapes_are_refused():
    W = torch.randn(6, 5, dtype=torch.float64)
    U, S, WtU = _exact_basis(W)
    with pytest.raises(LorascopeError, match="shapes do not fit"):
        top_of_w_plus_delta(U, S, WtU, torch.zeros(2, 4), torch.zeros(6, 2), 1.0, 2)


def test_real_weights_cached_route_equals_the_dense_reference(tmp_path):
    """MiniLM's and SmolLM2's real W: counts equal, cosines to 1e-6 through the float32 cache entry;
    to 1e-9 from an exact decomposition."""
    from test_truncated import real_weights

    cache = wspectra.SpectraCache(tmp_path)
    g = torch.Generator().manual_seed(0)
    for name, W in real_weights().items():
        A = torch.randn(4, W.shape[1], generator=g, dtype=torch.float64)
        B = torch.randn(W.shape[0], 4, generator=g, dtype=torch.float64)
        s = 0.3 * float(torch.linalg.matrix_norm(W, ord=2)) / float(torch.linalg.matrix_norm(B @ A, ord=2))
        ref_cos, ref_sigma = _dense(W, A, B, s, 10)
        exact = top_of_w_plus_delta(*_exact_basis(W), A, B, s, 10)
        np.testing.assert_allclose(exact["max_cos"].numpy(), ref_cos, atol=1e-9, err_msg=name)
        res = la.intruder_dimensions(W, Adapter(A, B, s), k=10, eps=0.5, w_basis=cache.entry(W).basis())
        np.testing.assert_allclose(res["max_cos"], ref_cos, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(res["sigma"], ref_sigma, rtol=1e-6, err_msg=name)
        assert res["count"] == int((ref_cos < 0.5).sum()), name


class _Counting(torch.Tensor):
    """W as read from the base (and what is derived from it), recording every operation on its values
    by name with the elements it touched."""

    ops: Counter = Counter()
    NOT_A_READ = {"__get__", "__getitem__", "detach", "cpu", "size", "dim", "numel", "__len__", "__repr__"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name not in cls.NOT_A_READ:
            cls.ops[name] += sum(a.numel() for a in args if isinstance(a, _Counting))
        return super().__torch_function__(func, types, args, kwargs or {})


FINGERPRINT = {"copy_"}  # ‖W‖_F: a block of rows at a time copied into a float64 buffer
PROBE = {"contiguous", "view", "numpy"}  # the index's probe: a few rows hashed


def test_tiny_llama_equals_dense_and_a_warm_run_makes_no_pass_over_w(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASCOPE_CACHE", str(tmp_path / "cache"))
    state = save_tiny_llama(tmp_path / "base")
    adapters = random_adapters(state, llama_modules(), scaling=8.0)
    run = runs.load_run(peft_folder(tmp_path, tmp_path / "base", adapters))
    cold, _ = compare_base.intruder_tables(run, k=10)
    for row in cold.itertuples():
        a = run.adapters[row.module]
        ref_cos, _ = _dense(state[row.module + ".weight"], a.A, a.B, a.scaling, 10)
        assert row.count == int((ref_cos < 0.5).sum()), row.module
        assert row.min_max_cos == pytest.approx(float(ref_cos.min()), abs=1e-6)
    # Warm: W is read for the fingerprint (one pass, ‖W‖_F) and the index probe, and nothing else.
    read = base_model.Checkpoint.weight

    def counted(self, *args, **kwargs):
        return read(self, *args, **kwargs).as_subclass(_Counting)

    monkeypatch.setattr(base_model.Checkpoint, "weight", counted)
    _Counting.ops.clear()
    before = dict(truncated.SVD_CALLS)
    warm, _ = compare_base.intruder_tables(run, k=10)
    total = sum(state[m + ".weight"].numel() for m in llama_modules())
    assert set(_Counting.ops) <= FINGERPRINT | PROBE, _Counting.ops  # no product, no other conversion
    assert _Counting.ops["copy_"] == total  # W's values converted once: the fingerprint's pass
    assert dict(truncated.SVD_CALLS) == before
    assert warm.equals(cold)
