"""φ grids: known answers, invariants, the random baselines, and the run-pair matching."""

import numpy as np
import pytest
import torch
from analysis_fixtures import MODULES, make_run, shared_directions

from lorascope import analysis as la
from lorascope.compare import run_similarity
from lorascope.errors import LorascopeError
from lorascope.run_format import Adapter
from lorascope.runs import load_run


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _naive_phi(U1, U2):
    r1, r2 = U1.shape[1], U2.shape[1]
    out = np.zeros((r1, r2))
    for i in range(1, r1 + 1):
        for j in range(1, r2 + 1):
            out[i - 1, j - 1] = float(torch.linalg.matrix_norm(U1[:, :i].T @ U2[:, :j]) ** 2) / min(i, j)
    return out


def test_phi_of_a_basis_with_itself_is_one_everywhere():
    U = la.factor_basis(_rand(6, 30))
    phi = la.phi_grid(U, U)
    assert phi.shape == (6, 6)
    np.testing.assert_allclose(np.diag(phi), 1.0, atol=1e-12)
    np.testing.assert_allclose(phi, 1.0, atol=1e-12)  # ‖U_iᵀU_j‖² = min(i, j)


def test_orthogonal_subspaces_give_zero():
    Q = torch.linalg.qr(_rand(20, 7))[0]
    np.testing.assert_allclose(la.phi_grid(Q[:, :3], Q[:, 3:]), 0.0, atol=1e-14)


def test_phi_grid_equals_naive_double_loop():
    U1, U2 = la.factor_basis(_rand(5, 16, seed=1)), la.factor_basis(_rand(9, 16, seed=2))
    phi = la.phi_grid(U1, U2)
    np.testing.assert_allclose(phi, _naive_phi(U1, U2), atol=1e-12)
    # Two random subspaces of dimensions 5 and 9 in R^16: neither contains the other.
    assert phi[-1, -1] < 1


def test_a_full_basis_contains_every_subspace():
    U = la.factor_basis(_rand(5, 16, seed=1))
    full = torch.linalg.qr(_rand(16, 16, seed=3))[0]  # spans R^16
    phi = la.phi_grid(U, full)
    np.testing.assert_allclose(phi[:, -1], 1.0, atol=1e-12)  # ‖U_iᵀ Q‖²_F = i for every i
    np.testing.assert_allclose(phi.diagonal(), _naive_phi(U, full).diagonal(), atol=1e-12)


def test_phi_refuses_bases_that_are_not_orthonormal():
    A = _rand(3, 16, seed=4)
    with pytest.raises(LorascopeError, match="not an orthonormal basis"):
        la.phi_grid(A.T, la.factor_basis(A))  # the factor itself, not its singular vectors
    U = la.factor_basis(A)
    with pytest.raises(LorascopeError, match="U2 is not an orthonormal basis"):
        la.phi_grid(U, 1.01 * U)  # 2 % off in norm: far beyond round-off
    with pytest.raises(LorascopeError, match="not an orthonormal basis"):
        la.phi_grid(U, torch.full_like(U, float("nan")))
    # float32 bases carry float32 round-off, which is accepted
    np.testing.assert_allclose(la.phi_grid(U.float(), U.float()), 1.0, atol=1e-5)


def test_phi_above_one_is_raised_not_clamped():
    from lorascope.analysis.similarity import _phi_of_cross

    with pytest.raises(LorascopeError, match="not orthonormal"):
        _phi_of_cross(torch.tensor([[1.01]], dtype=torch.float64), tol=1e-6)
    assert _phi_of_cross(torch.tensor([[1.0 + 1e-9]], dtype=torch.float64), tol=1e-6)[0, 0] > 1.0


def test_phi_grid_rejects_bases_of_different_spaces():
    with pytest.raises(LorascopeError, match="different spaces"):
        la.phi_grid(torch.eye(4)[:, :2], torch.eye(5)[:, :2])


def test_subspace_similarity_invariant_to_rotating_and_rescaling_rows():
    A1, A2 = _rand(4, 20, seed=3), _rand(6, 20, seed=4)
    base = la.subspace_similarity(A1, A2)
    Q = torch.linalg.qr(_rand(4, 4, seed=5))[0]
    np.testing.assert_allclose(la.subspace_similarity(Q @ A1, A2), base, atol=1e-10)
    np.testing.assert_allclose(la.subspace_similarity(7.5 * A1, 0.01 * A2), base, atol=1e-10)
    # Rescaling single rows changes the σ order but not the row space: φ(r1, r2) is unchanged.
    D = torch.diag(torch.tensor([1.0, 10.0, 0.1, 3.0], dtype=torch.float64))
    assert la.subspace_similarity(D @ A1, A2)[-1, -1] == pytest.approx(base[-1, -1], abs=1e-10)


def test_planted_shared_directions_are_found_and_independent_ones_are_not():
    shared = shared_directions(64, 2)
    A1 = 0.02 * _rand(8, 64, seed=6)
    A2 = 0.02 * _rand(32, 64, seed=7)
    A1[:2] += 5 * shared.T.double()
    A2[:2] += 5 * shared.T.double()
    phi = la.subspace_similarity(A1, A2)
    assert phi[1, 1] > 0.99  # i = j = 2: the two shared directions
    assert phi[2, 2] < 0.75  # the third direction is not shared
    independent = la.subspace_similarity(_rand(8, 64, seed=8), _rand(32, 64, seed=9))
    assert independent[1, 1] < 0.3


def test_random_phi_baseline_is_max_over_n():
    grid = la.random_phi_baseline(2, 3, 10)
    np.testing.assert_allclose(grid, [[0.1, 0.2, 0.3], [0.2, 0.2, 0.3]])
    with pytest.raises(LorascopeError):
        la.random_phi_baseline(0, 3, 10)


def test_gaussian_baseline_mean_matches_max_over_n_within_sampling_error():
    n, seeds = 40, 200
    samples = la.gaussian_phi_samples((4, n), (6, n), n_seeds=seeds, seed=1)
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(seeds)
    expected = la.random_phi_baseline(4, 6, n)
    assert np.all(np.abs(mean - expected) < 4 * se + 1e-3)
    np.testing.assert_allclose(
        la.gaussian_phi_baseline((4, n), (6, n), n_seeds=3, seed=2),
        la.gaussian_phi_samples((4, n), (6, n), n_seeds=3, seed=2).mean(axis=0),
    )


def test_factor_helpers_agree_with_dense_bases():
    A1, A2 = _rand(3, 12, seed=10), _rand(5, 12, seed=11)
    B1, B2 = _rand(9, 3, seed=12), _rand(9, 5, seed=13)
    A1_0, A2_0 = _rand(3, 12, seed=14), _rand(5, 12, seed=15)
    dense = torch.linalg.svd
    np.testing.assert_allclose(
        la.b_similarity(B1, B2),
        la.phi_grid(dense(B1, full_matrices=False)[0], dense(B2, full_matrices=False)[0]),
    )
    np.testing.assert_allclose(
        la.learned_a_similarity(A1, A1_0, A2, A2_0), la.subspace_similarity(A1 - A1_0, A2 - A2_0)
    )
    W1, W2 = B1 @ A1, B2 @ A2
    U1, _, Vh1 = dense(W1, full_matrices=False)
    U2, _, Vh2 = dense(W2, full_matrices=False)
    np.testing.assert_allclose(
        la.delta_similarity(Adapter(A1, B1, 1.0), Adapter(A2, B2, 1.0), "right"),
        la.phi_grid(Vh1[:3].T, Vh2[:5].T),
        atol=1e-10,
    )
    np.testing.assert_allclose(
        la.delta_similarity(Adapter(A1, B1, 1.0), Adapter(A2, B2, 1.0), "left"),
        la.phi_grid(U1[:, :3], U2[:, :5]),
        atol=1e-10,
    )


def test_layer_parsing_and_module_selection():
    assert la.layer_index("encoder.layer.3.attention.self.query") == 3
    assert la.layer_index("model.layers.12.self_attn.q_proj") == 12
    assert la.layer_index("classifier") is None
    assert la.parse_layers("0,2,5-7") == {0, 2, 5, 6, 7}
    with pytest.raises(LorascopeError, match="--layers"):
        la.parse_layers("a-b")
    assert la.select_modules(MODULES, "value", {1}) == ["encoder.layer.1.attention.self.value"]
    with pytest.raises(LorascopeError, match="no module matches"):
        la.select_modules(MODULES, "q_proj")
    with pytest.raises(LorascopeError, match="not a valid regex"):
        la.select_modules(MODULES, "(")
    assert la.match_modules(["a", "b"], ["b", "c"]) == (["b"], ["a"], ["c"])


def test_run_similarity_matches_modules_and_agrees_with_library(tmp_path):
    shared = shared_directions(32, 2)
    a = load_run(make_run(tmp_path, "r4-s0", 4, shared=shared, seed=0))
    b = load_run(make_run(tmp_path, "r8-s1", 8, modules=MODULES[1:] + ["extra.0.q"], shared=shared, seed=1))
    pair = run_similarity(a, b, "A")
    assert list(pair.grids) == MODULES[1:]
    assert pair.only_a == MODULES[:1] and pair.only_b == ["extra.0.q"]
    m = MODULES[1]
    np.testing.assert_allclose(
        pair.grids[m].to_numpy(), la.subspace_similarity(a.adapters[m].A, b.adapters[m].A)
    )
    assert pair.grids[m].index[0] == 1 and pair.grids[m].columns[-1] == 8
    summary = pair.summary()
    assert summary.loc[m, "phi_11"] == pytest.approx(pair.grids[m].iloc[0, 0])
    assert summary.loc[m, "phi_diag_mean"] == pytest.approx(np.diag(pair.grids[m].to_numpy()).mean())
    assert summary.loc[m, "random_floor"] == pytest.approx(np.mean(np.arange(1, 5) / 32))
    long = pair.long()
    assert len(long) == 3 * 4 * 8 and list(long.columns) == ["module", "i", "j", "phi"]
    row = long[(long.module == m) & (long.i == 2) & (long.j == 5)]
    assert float(row.phi.iloc[0]) == pytest.approx(pair.grids[m].loc[2, 5])
    dA = run_similarity(a, b, "dA", modules="value")
    A0a, A0b = a.init[MODULES[1]].A, b.init[MODULES[1]].A
    np.testing.assert_allclose(
        dA.grids[MODULES[1]].to_numpy(),
        la.learned_a_similarity(a.adapters[MODULES[1]].A, A0a, b.adapters[MODULES[1]].A, A0b),
    )


def test_run_similarity_errors(tmp_path):
    a = load_run(make_run(tmp_path, "r4-s0", 4))
    other = load_run(make_run(tmp_path, "r4-s1", 4, modules=["model.layers.0.q_proj"]))
    with pytest.raises(LorascopeError, match="share no module"):
        run_similarity(a, other)
    wide = load_run(make_run(tmp_path, "r4-s2", 4, n_in=48))
    with pytest.raises(LorascopeError, match="different shapes"):
        run_similarity(a, wide)
    no_init = load_run(make_run(tmp_path, "r4-s3", 4, with_init=False))
    with pytest.raises(LorascopeError, match="adapter_init"):
        run_similarity(a, no_init, "dA")
    with pytest.raises(LorascopeError, match="unknown factor"):
        run_similarity(a, a, "C")


@pytest.mark.parametrize("side", ["right", "left"])
def test_factor_phi_gram_route_equals_the_basis_route(side):
    from lorascope.analysis.linalg import factor_svd
    from lorascope.analysis.similarity import factor_phi, phi_grid

    g = torch.Generator().manual_seed(0)
    X1, X2 = torch.randn(6, 40, generator=g), torch.randn(9, 40, generator=g)
    X2[:3] += 5 * X1[:3]  # shared directions, and σ spread over two orders of magnitude
    X1[5] *= 1e-2
    if side == "left":
        X1, X2 = X1.T, X2.T
    dense = phi_grid(factor_svd(X1, side)[0], factor_svd(X2, side)[0])
    np.testing.assert_allclose(factor_phi(X1, X2, side), dense, atol=1e-9)


def test_factor_phi_falls_back_for_rank_deficient_and_wide_factors(caplog):
    from lorascope.analysis import similarity
    from lorascope.analysis.linalg import factor_svd
    from lorascope.analysis.similarity import factor_phi, phi_grid

    similarity._WARNED.discard("q")
    g = torch.Generator().manual_seed(1)
    X1, X2 = torch.randn(4, 12, generator=g), torch.randn(4, 12, generator=g)
    X1[3] = 0  # rank 3: the Gram route would divide by σ = 0
    grid = factor_phi(X1, X2, label="q")
    np.testing.assert_allclose(grid, phi_grid(factor_svd(X1)[0], factor_svd(X2)[0]), atol=1e-12)
    assert "q: factor is rank-deficient" in caplog.text
    for _ in range(5):  # a figure compares one factor with many: said once, not once per comparison
        factor_phi(X1, torch.randn(4, 12, generator=g), label="q")
    assert caplog.text.count("q: factor is rank-deficient") == 1
    wide = torch.randn(16, 8, generator=g)  # r > n: at most n directions
    assert factor_phi(wide, wide).shape == (8, 8)
