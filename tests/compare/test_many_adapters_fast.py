"""The fast routes of `lorascope subspace` and `merge` (issue #22, scale) equal the straightforward ones.

Batched factored bases against `delta_svd` module by module; the lower-triangle Gram against Z Zᵀ; the
float32 n × n route (eigvalsh + subspace iteration for the top vectors) against the float64 whole
eigendecomposition on a planted case; `run_subspace`'s batched loading against per-module bases; a merge's
factored cosine and randomized top-k SVD against the dense and block Krylov ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_many_adapters import MODULES, N_IN, planted_basis, planted_factors, write_adapter

from lorascope import analysis as la
from lorascope.analysis import merging as mg
from lorascope.analysis import shared_subspace as ss
from lorascope.analysis import subspace_floor as sf
from lorascope.analysis.linalg import numerical_rank
from lorascope.compare import merges, run_merge, run_subspace
from lorascope.run_format import Adapter
from lorascope.runs import load_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("side", ["right", "left"])
def test_factored_bases_equal_delta_svd_module_by_module(side):
    b, r, n_in, n_out = 5, 4, 30, 22
    A = torch.randn(b, r, n_in, generator=_g(1), dtype=torch.float64)
    B = torch.randn(b, n_out, r, generator=_g(2), dtype=torch.float64)
    B[3, :, -1] = 0.0  # a rank-deficient module: its last σ is 0
    s = torch.tensor([2.0, -0.5, 1.0, 3.0, -1.5], dtype=torch.float64)
    U, S = ss.factored_bases(A, B, s, side)
    assert U.shape == (b, n_in if side == "right" else n_out, r) and S.shape == (b, r)
    for j in range(b):
        Uj, Sj, Vj = la.delta_svd(A[j], B[j], float(s[j]))
        ref = Vj if side == "right" else Uj
        np.testing.assert_allclose(S[j].numpy(), Sj.numpy(), atol=1e-12)
        rank = numerical_rank(Sj)
        np.testing.assert_allclose(U[j, :, :rank].numpy(), ref[:, :rank].numpy(), atol=1e-10)
        # ΔW_j itself, from this side's basis and σ and the other side projected: s B A = U S Vᵀ
        D = float(s[j]) * B[j] @ A[j]
        if side == "right":
            np.testing.assert_allclose((D @ U[j]).norm(dim=0).numpy(), S[j].numpy(), atol=1e-10)
        else:
            np.testing.assert_allclose((U[j].T @ D).norm(dim=1).numpy(), S[j].numpy(), atol=1e-10)


def test_gram_lower_holds_the_lower_triangle_of_z_zt():
    Z = torch.randn(37, 50, generator=_g(3), dtype=torch.float64)
    for blocks in (1, 3, 8):
        M = ss.gram_lower(Z, blocks)
        np.testing.assert_allclose(torch.tril(M).numpy(), torch.tril(Z @ Z.T).numpy(), atol=1e-12)
        np.testing.assert_allclose(
            torch.linalg.eigvalsh(M).numpy(), torch.linalg.eigvalsh(Z @ Z.T).numpy(), atol=1e-11
        )


def _planted(n: int, N: int, k: int, r: int, seed: int = 5):
    P = planted_basis(n, k, seed=seed)
    g = _g(seed)
    bases, weights = [], []
    for _ in range(N):
        A = 0.3 * torch.randn(r, n, generator=g, dtype=torch.float64)
        A[:k] += 3.0 * (torch.randn(k, k, generator=g, dtype=torch.float64) @ P.T)
        U = torch.linalg.qr(A.T)[0]
        bases.append(U)
        weights.append(torch.full((r,), 1.0 / r, dtype=torch.float64))
    return P, bases, weights


def test_the_float32_route_equals_the_float64_whole_eigendecomposition(monkeypatch):
    """n = 64, K = 40 · 8 = 320 > n: the n × n route. Whole: float64 eigh. Fast: float32 products, float32
    eigvalsh, subspace iteration for the top vectors, as a 7B module at N = 500 takes it."""
    k = 3
    P, bases, weights = _planted(64, 40, k, 8)
    whole = ss.shared_subspace(bases, weights)
    monkeypatch.setattr(ss, "GRAM_FLOAT32", 0)
    monkeypatch.setattr(ss, "EIGH_MAX", 16)
    Z32 = ss.stack(bases, weights).to(torch.float32)
    fast = ss.shared_subspace_of(Z32, [8] * 40)
    lam1 = whole.eigenvalues[0]
    np.testing.assert_allclose(fast.eigenvalues, whole.eigenvalues, atol=1e-5 * lam1)
    np.testing.assert_allclose(fast.energy, whole.energy, atol=1e-5)
    assert fast.basis.dtype == torch.float64 and fast.basis.shape == whole.basis.shape
    np.testing.assert_allclose((fast.basis.T @ fast.basis).numpy(), np.eye(fast.basis.shape[1]), atol=1e-6)
    # the Ritz vectors capture E(m) to the float32 tolerance: the coverage means follow the curve
    keep = fast.coverage.shape[1]
    np.testing.assert_allclose(
        fast.coverage.mean(0), whole.energy[:keep], atol=2 * ss.VECTOR_TOL[torch.float32]
    )
    np.testing.assert_allclose(fast.coverage, whole.coverage, atol=1e-3)
    phi = la.phi_grid(fast.basis[:, :k], P)[k - 1, k - 1]
    assert phi > 0.98 and abs(phi - la.phi_grid(whole.basis[:, :k], P)[k - 1, k - 1]) < 1e-5
    Pf, Pw = fast.basis[:, :k] @ fast.basis[:, :k].T, whole.basis[:, :k] @ whole.basis[:, :k].T
    assert float((Pf - Pw).norm()) < 1e-4


def test_the_floor_in_float32_lies_in_the_float64_floor_band(monkeypatch):
    weights = [torch.full((4,), 0.25, dtype=torch.float64)] * 12  # K = 48 > n = 30
    exact = sf.random_floor(30, weights, trials=32, seed=1)
    monkeypatch.setattr(ss, "GRAM_FLOAT32", 0)
    monkeypatch.setattr(ss, "EIGH_MAX", 8)
    fast = sf.random_floor(30, weights, trials=32, seed=1)
    assert exact.contains(fast.energy_mean, atol=1e-6)  # float32 rounding where E reaches 1
    np.testing.assert_allclose(fast.energy_mean[-1], 1.0, atol=1e-5)


def test_trials_and_modules_on_two_cores_equal_one_at_a_time(tmp_path):
    # module_map runs each trial (and each module) on one thread, two at a time: the same numbers
    weights = [torch.full((4,), 0.25, dtype=torch.float64)] * 12
    one = sf.random_floor(30, weights, trials=8, seed=3)
    planted = {m: planted_basis(N_IN, 2, seed=70 + j) for j, m in enumerate(MODULES)}
    folders = [write_adapter(tmp_path, f"r4-s{s}", planted_factors(4, planted, s)) for s in range(3)]
    alone = run_subspace(folders, trials=4)
    torch.set_num_threads(2)
    try:
        two = sf.random_floor(30, weights, trials=8, seed=3)
        both = run_subspace(folders, trials=4)
        assert torch.get_num_threads() == 2  # restored after the pool
    finally:
        torch.set_num_threads(1)
    np.testing.assert_array_equal(one.energy_mean, two.energy_mean)
    np.testing.assert_array_equal(one.eig_sd, two.eig_sd)
    assert list(alone.results) == list(both.results)
    for mod in alone.results:
        np.testing.assert_array_equal(alone.results[mod].eigenvalues, both.results[mod].eigenvalues)
        np.testing.assert_array_equal(alone.results[mod].coverage, both.results[mod].coverage)


def test_run_subspace_batched_bases_equal_the_per_module_route(tmp_path):
    planted = {m: planted_basis(N_IN, 2, seed=60 + j) for j, m in enumerate(MODULES)}
    factors = [planted_factors(4, planted, s) for s in range(5)]
    folders = [write_adapter(tmp_path, f"r4-s{s}", f) for s, f in enumerate(factors)]
    for side in ("right", "left"):
        for k in (None, 3):
            rep = run_subspace(folders, side=side, k=k, trials=4)
            for m in MODULES:
                bases, weights = [], []
                for f in folders:
                    a = load_run(f).adapters[m]
                    U, S, V = la.delta_svd(a.A, a.B, a.scaling)
                    basis = V if side == "right" else U
                    top = S.shape[0] if k is None else k
                    rank = numerical_rank(S[:top])
                    bases.append(basis[:, :rank])
                    weights.append(ss.adapter_weights(S[:rank], False))
                ref = ss.shared_subspace(bases, weights)
                got = rep.results[m]
                assert got.widths == ref.widths
                np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, atol=1e-6)
                np.testing.assert_allclose(got.coverage, ref.coverage, atol=1e-5)


# ----------------------------------------------------------------------------- merge


def test_the_factored_cosine_equals_the_dense_one():
    g = _g(8)
    A, B = (
        torch.randn(4, 30, generator=g, dtype=torch.float64),
        torch.randn(22, 4, generator=g, dtype=torch.float64),
    )
    A2, B2 = (
        torch.randn(6, 30, generator=g, dtype=torch.float64),
        torch.randn(22, 6, generator=g, dtype=torch.float64),
    )
    merged = 0.7 * B @ A - 1.3 * B2 @ A2
    U, S, V = la.delta_svd(torch.cat([A, A2]), torch.cat([0.7 * B, -1.3 * B2], 1), 1.0)
    for delta in (Adapter(A, B, 2.0), Adapter(A2, B2, -0.5)):
        np.testing.assert_allclose(mg.cosine_factored(delta, U, S, V), mg.cosine(delta, merged), atol=1e-12)


def test_merge_measures_through_the_randomized_svd_equal_the_exact_ones(tmp_path, monkeypatch):
    """A dense merged ΔW (TIES) at least LOWRANK_MIN entries large takes torch.svd_lowrank: here forced
    on a small one, against the block Krylov route; PEFT's own time is reported."""
    factors = [planted_factors(4, {}, s) for s in range(3)]
    folders = [write_adapter(tmp_path, f"r4-s{s}", f) for s, f in enumerate(factors)]
    exact = run_merge(folders, "ties", density=0.5)
    monkeypatch.setattr(merges, "LOWRANK_MIN", 0)
    fast = run_merge(folders, "ties", density=0.5)
    cols = ["retention", "retention_left", "retention_right", "phi_left", "phi_right", "cosine"]
    np.testing.assert_allclose(fast.adapters[cols].to_numpy(), exact.adapters[cols].to_numpy(), atol=1e-4)
    assert fast.meta["peft_seconds"] > 0
