"""One table: {LoRA run, full fine-tuning run, PEFT folder} × every analysis of ΔW, each checked
against the dense computation on ΔW = d.delta_weight() (torch.linalg.svd), and the ΔW protocol
itself (products and SVDs of each kind equal the dense ones; a factored ΔW is never formed)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import full_run, lora_run, peft_folder, random_factors

from lorascope import analysis as la
from lorascope.analysis import adapter_map as am
from lorascope.analysis.linalg import random_orthonormal
from lorascope.analysis.trajectory import Reference, step_metrics
from lorascope.delta import factored_svd, truncated_svd
from lorascope.errors import LorascopeError
from lorascope.run_format import Adapter, DenseDelta
from lorascope.runs import load_run

OUT, IN, RANK = 24, 32, 4
MODULES = [f"encoder.layer.0.attention.self.{m}" for m in ("query", "value")]
SHAPES = {m: (OUT, IN) for m in MODULES}
KINDS = ("lora", "full", "peft")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{kind: (final run, a ΔW of the same kind at an earlier step)} for the three kinds of run."""
    root = tmp_path_factory.mktemp("delta-table")
    factors = random_factors(SHAPES, RANK, seed=0)
    early = {m: (A, 0.3 * B) for m, (A, B) in random_factors(SHAPES, RANK, seed=1).items()}
    init = {m: (A - 0.01, torch.zeros_like(B)) for m, (A, B) in factors.items()}
    g = torch.Generator().manual_seed(2)
    dense = {m: torch.randn(OUT, IN, generator=g) for m in MODULES}
    dense_early = {m: 0.5 * d + 0.1 * torch.randn(OUT, IN, generator=g) for m, d in dense.items()}
    lora = load_run(lora_run(root, "r4-s0", factors, init=init, snapshots={5: early}))
    full = load_run(full_run(root, "full-s0", dense, snapshots={5: dense_early}))
    peft = load_run(peft_folder(root, "peft", factors))
    return {
        "lora": (lora, lora.load_checkpoint(5)),
        "full": (full, full.load_checkpoint(5)),
        "peft": (peft, peft.adapters),
    }


@pytest.fixture(scope="module")
def W():
    g = torch.Generator().manual_seed(7)
    return torch.randn(OUT, IN, generator=g, dtype=torch.float64)


def _dense(d) -> torch.Tensor:
    return d.delta_weight().double()


def _same_span(U: torch.Tensor, V: torch.Tensor, atol: float = 1e-6) -> None:
    """Orthonormal U, V (n, k) span the same subspace (the signs of singular vectors are free)."""
    torch.testing.assert_close(U @ U.T, V @ V.T, atol=atol, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_spectrum_is_the_dense_svd(runs, kind):
    for m in MODULES:
        d = runs[kind][0].adapters[m]
        res = la.spectrum(d)
        ref = torch.linalg.svdvals(_dense(d)).numpy()[: len(res.singular_values)]
        assert len(res.singular_values) == (RANK if kind != "full" else min(OUT, IN))
        np.testing.assert_allclose(res.singular_values, ref, rtol=1e-5)
        expected = la.spectrum_metrics(ref)
        for key in ("fro_norm", "stable_rank", "effective_rank", "energy_rank"):
            assert res[key] == pytest.approx(expected[key], rel=1e-5), key


@pytest.mark.parametrize("kind", KINDS)
def test_amplification_is_the_dense_computation(runs, W, kind):
    k = 3
    for m in MODULES:
        d = runs[kind][0].adapters[m]
        D = _dense(d)
        U, _, Vh = torch.linalg.svd(D, full_matrices=False)
        s_w = torch.linalg.svdvals(W)
        U_r, V_r = random_orthonormal(OUT, k, 0), random_orthonormal(IN, k, 1)
        res = la.amplification(W, d, k=k, device="cpu")
        assert res.k == k
        assert res.dw_norm == pytest.approx(float(torch.linalg.matrix_norm(D)), rel=1e-5)
        assert res.w_norm == pytest.approx(float(torch.linalg.matrix_norm(W)), rel=1e-12)
        assert res.proj_dw == pytest.approx(
            float(torch.linalg.matrix_norm(U[:, :k].T @ W @ Vh[:k].T)), rel=1e-5
        )
        assert res.proj_w == pytest.approx(float(torch.linalg.vector_norm(s_w[:k])), rel=1e-9)
        assert res.proj_random == pytest.approx(float(torch.linalg.matrix_norm(U_r.T @ W @ V_r)), rel=1e-12)
        assert res.amplification == pytest.approx(res.dw_norm / res.proj_dw, rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_intruder_dimensions_are_the_dense_ones(runs, W, kind):
    for m in MODULES:
        d = runs[kind][0].adapters[m]
        U_w = torch.linalg.svd(W, full_matrices=False)[0]
        U_ft, S_ft, _ = torch.linalg.svd(W + _dense(d), full_matrices=False)
        ref = (U_ft[:, :5].T @ U_w).abs().amax(1).numpy()
        res = la.intruder_dimensions(W, d, k=5, eps=0.5, device="cpu")
        np.testing.assert_allclose(res.max_cos, ref, atol=1e-5)
        np.testing.assert_allclose(res.sigma, S_ft[:5].numpy(), rtol=1e-5)
        assert res.count == int((ref < 0.5).sum()) and res.indices == [
            int(i) for i in np.flatnonzero(ref < 0.5)
        ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_w_delta_similarity_is_phi_of_the_dense_bases(runs, W, kind, side):
    U_w, _, Vh_w = torch.linalg.svd(W, full_matrices=False)
    for m in MODULES:
        d = runs[kind][0].adapters[m]
        U, _, Vh = torch.linalg.svd(_dense(d), full_matrices=False)
        got = la.w_delta_similarity(W, d, side=side, top_w=5, k=3, device="cpu")
        ref = la.phi_grid(U_w[:, :5], U[:, :3]) if side == "left" else la.phi_grid(Vh_w[:5].T, Vh[:3].T)
        np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("factor", ["dW-right", "dW-left"])
def test_factor_phi_of_delta_is_phi_of_the_dense_bases(runs, kind, factor):
    spec = la.get_factor(factor)
    bases, refs = [], []
    for m in MODULES:
        d = runs[kind][0].adapters[m]
        U, _, Vh = torch.linalg.svd(_dense(d), full_matrices=False)
        ref = (Vh[:3].T if factor == "dW-right" else U[:, :3]).contiguous()
        basis, S = spec.basis(d, k=3)
        assert basis.shape == (spec.dim(d), 3) and spec.applies(d)
        _same_span(basis, ref, atol=1e-5)
        bases.append(basis)
        refs.append(ref)
    np.testing.assert_allclose(la.phi_grid(*bases), la.phi_grid(*refs), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_factors_of_a_and_b_apply_to_lora_only(runs, kind):
    d = runs[kind][0].adapters[MODULES[0]]
    spec = la.get_factor("A")
    if kind == "full":
        assert d.factors is None and not spec.applies(d)
        with pytest.raises(LorascopeError, match="needs LoRA factors"):
            spec.basis(d)
    else:
        basis, _ = spec.basis(d)
        _same_span(basis, torch.linalg.svd(d.factors.A.double(), full_matrices=False)[2].T)


@pytest.mark.parametrize("kind", KINDS)
def test_trajectory_step_metrics_are_the_dense_ones(runs, kind):
    final_run, early = runs[kind]
    for m in MODULES:
        final, step = final_run.adapters[m], early[m]
        ref = Reference.of(final, None, k=2, label=m)
        got = step_metrics(step, ref)
        D_t, D_T = _dense(step), _dense(final)
        U_t, S_t, Vh_t = torch.linalg.svd(D_t, full_matrices=False)
        U_T, _, Vh_T = torch.linalg.svd(D_T, full_matrices=False)
        assert got["dW_norm"] == pytest.approx(float(torch.linalg.matrix_norm(D_t)), rel=1e-5)
        assert got["stable_rank"] == pytest.approx(float((S_t**2).sum() / S_t[0] ** 2), rel=1e-5)
        assert got["phi_in_11"] == pytest.approx(float((Vh_t[0] @ Vh_T[0]) ** 2), abs=1e-5)
        assert got["phi_out_11"] == pytest.approx(float((U_t[:, 0] @ U_T[:, 0]) ** 2), abs=1e-5)
        assert got["phi_in_kk"] == pytest.approx(float(la.phi_grid(Vh_t[:2].T, Vh_T[:2].T)[1, 1]), abs=1e-5)
        if kind == "full":  # no factors: the B column has nothing to measure
            assert np.isnan(got["B_norm"])
        else:
            assert got["B_norm"] == pytest.approx(float(torch.linalg.matrix_norm(step.factors.B.double())))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("factor", ["dW-right", "dW-left"])
def test_adapter_map_scores_are_those_of_the_dense_bases(runs, kind, factor):
    ds = [runs[kind][0].adapters[m] for m in MODULES]
    got = [am.top_basis(factor, 3, d) for d in ds]
    refs = []
    for d in ds:
        U, _, Vh = torch.linalg.svd(_dense(d), full_matrices=False)
        refs.append((Vh[:3].T if factor == "dW-right" else U[:, :3]).contiguous())
    score, k_pair = am.map_scores([U for U, _ in got])
    ref_score, _ = am.map_scores(refs)
    assert (k_pair == 3).all()
    np.testing.assert_allclose(score, ref_score, atol=1e-5)


def test_the_analyses_take_a_factored_and_a_dense_delta_alike(W):
    """The same ΔW as LoRA factors and as a dense matrix: every analysis gives the same numbers."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(RANK, IN, generator=g, dtype=torch.float64)
    B = torch.randn(OUT, RANK, generator=g, dtype=torch.float64)
    lora, dense = Adapter(A, B, 0.5), DenseDelta(0.5 * B @ A)
    S = la.spectrum(lora).singular_values
    np.testing.assert_allclose(S, la.spectrum(dense).singular_values[:RANK], rtol=1e-10)
    np.testing.assert_allclose(la.spectrum(dense).singular_values[RANK:], 0.0, atol=1e-10)
    amp = la.amplification(W, lora, device="cpu")
    assert amp.k == RANK
    for key, value in la.amplification(W, dense, k=RANK, device="cpu").asdict().items():
        assert amp[key] == pytest.approx(value, rel=1e-8), key
    np.testing.assert_allclose(
        la.intruder_dimensions(W, lora, device="cpu").max_cos,
        la.intruder_dimensions(W, dense, device="cpu").max_cos,
        atol=1e-8,
    )
    np.testing.assert_allclose(
        la.w_delta_similarity(W, lora, top_w=6, device="cpu"),
        la.w_delta_similarity(W, dense, top_w=6, k=RANK, device="cpu"),
        atol=1e-8,
    )
    with pytest.raises(LorascopeError, match="give k"):
        la.amplification(W, dense)
    with pytest.raises(LorascopeError, match="does not match"):
        la.amplification(W.T, lora)


# ----------------------------------------------------------------------------- the protocol itself


def _kinds():
    g = torch.Generator().manual_seed(4)
    A, B = torch.randn(3, 20, generator=g), torch.randn(15, 3, generator=g)
    return {"lora": Adapter(A, B, -1.5), "dense": DenseDelta(torch.randn(15, 20, generator=g))}


@pytest.mark.parametrize("name", ["lora", "dense"])
def test_products_and_svd_equal_the_dense_ones(name):
    d = _kinds()[name]
    D = _dense(d)
    assert d.shape == tuple(D.shape) == (d.out_features, d.in_features)
    g = torch.Generator().manual_seed(5)
    X, Y = (
        torch.randn(20, 4, generator=g, dtype=torch.float64),
        torch.randn(15, 4, generator=g, dtype=torch.float64),
    )
    torch.testing.assert_close(d.matvec(X), D @ X, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d.rmatvec(Y), D.T @ Y, rtol=1e-6, atol=1e-6)
    U, S, V = d.svd()
    assert U.dtype == S.dtype == V.dtype == torch.float64
    assert S.shape[0] == (d.rank if d.rank is not None else min(d.shape))
    torch.testing.assert_close((U * S) @ V.T, D, rtol=1e-5, atol=1e-5)
    assert bool((S[:-1] >= S[1:]).all())
    np.testing.assert_allclose(S.numpy(), torch.linalg.svdvals(D)[: S.shape[0]].numpy(), rtol=1e-5)
    U2, S2, V2 = d.svd(2)
    assert U2.shape == (15, 2) and V2.shape == (20, 2)
    torch.testing.assert_close(S2, S[:2])


def test_the_algorithms_of_the_truncated_svd_agree():
    g = torch.Generator().manual_seed(6)
    Q1 = torch.linalg.qr(torch.randn(40, 30, generator=g, dtype=torch.float64))[0]
    Q2 = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))[0]
    M = (Q1 * torch.linspace(10, 1, 30, dtype=torch.float64)) @ Q2.T
    ref = truncated_svd(M, 5, "lapack")
    for algorithm in ("arpack", "krylov", "auto"):
        U, S, V = truncated_svd(M, 5, algorithm)
        np.testing.assert_allclose(S.numpy(), ref[1].numpy(), rtol=1e-10)
        _same_span(U, ref[0], atol=1e-8)
        _same_span(V, ref[2], atol=1e-8)
    assert truncated_svd(M)[1].shape == (30,)
    with pytest.raises(LorascopeError, match="algorithm must be"):
        truncated_svd(M, 2, "power")
    with pytest.raises(LorascopeError, match="use lapack"):
        truncated_svd(M, 30, "arpack")


class NeverDense(Adapter):
    """LoRA factors whose ΔW must never be formed."""

    def delta_weight(self):
        raise AssertionError("a factored ΔW was formed")


def test_a_factored_delta_is_never_formed(W):
    g = torch.Generator().manual_seed(8)
    d = NeverDense(torch.randn(RANK, IN, generator=g), torch.randn(OUT, RANK, generator=g), 2.0)
    other = NeverDense(torch.randn(RANK, IN, generator=g), torch.randn(OUT, RANK, generator=g), 1.0)
    la.spectrum(d)
    la.amplification(W, d, device="cpu")
    la.intruder_dimensions(W, d, k=3, device="cpu")
    la.w_delta_similarity(W, d, top_w=4, device="cpu")
    la.delta_similarity(d, other)
    am.top_basis("dW-left", 3, d)
    step_metrics(d, Reference.of(other, None, k=2))
    # ΔW of 10⁵ × 10⁵ (80 GB in float64) has its SVD and products from the 4-column factors.
    n = 100_000
    big = NeverDense(torch.randn(RANK, n, generator=g), torch.randn(n, RANK, generator=g), 1.0)
    U, S, V = big.svd()
    assert U.shape == (n, RANK) and V.shape == (n, RANK)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    torch.testing.assert_close(big.matvec(x), (U * S) @ (V.T @ x), rtol=1e-8, atol=1e-6)
    np.testing.assert_allclose(la.spectrum(big).singular_values, factored_svd(big.A, big.B)[1].numpy())


def test_no_code_asks_which_kind_a_delta_is():
    """Outside the ΔW classes no code tests for the kind of ΔW or fakes an adapter."""
    root = Path(__file__).resolve().parents[2] / "lorascope"
    pattern = re.compile(r'is_factored|isinstance\(.*(Adapter|DenseDelta)\)|SimpleNamespace|getattr\(.*"A"')
    found = [
        f"{path.relative_to(root)}:{i}"
        for path in root.rglob("*.py")
        if path.name != "delta.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found
