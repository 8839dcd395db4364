"""Adapter maps: exact agreement with the pairwise φ, invariance to B → BR, A → R⁻¹A (which a
flattened A‖B comparison lacks), planted clusters found again, and one-line errors."""

import logging

import analysis_fixtures
import numpy as np
import pytest
import torch
from analysis_fixtures import MODULES, make_run, shared_directions
from scipy.cluster.hierarchy import fcluster

from lorascope import analysis as la
from lorascope import delta as delta_module
from lorascope.analysis import adapter_map as am
from lorascope.compare.inputs import unique_names
from lorascope.compare.maps import adapter_map
from lorascope.errors import LorascopeError
from lorascope.peft_format import export_peft
from lorascope.run_format import Adapter, DenseDelta
from lorascope.runs import load_run

N_IN, N_OUT = 32, 24


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def write_adapter(root, name, factors, *, base="synthetic", fingerprint=None, alpha=16.0):
    return analysis_fixtures.write_adapter(
        root, name, factors, base=base, fingerprint=fingerprint, alpha=alpha
    )


def random_factors(rank, seed, modules=MODULES):
    return {m: (_rand(rank, N_IN, seed=seed * 10 + i), _rand(N_OUT, rank, seed=seed * 10 + i + 5))
            for i, m in enumerate(modules)}  # fmt: skip


def flat_cosine(run_a, run_b):
    """What tools that compare flattened adapters do: cos(vec(A‖B)_a, vec(A‖B)_b) over all modules."""

    def vec(run):
        return torch.cat([torch.cat([a.A.ravel(), a.B.ravel()]) for _, a in sorted(run.adapters.items())])

    x, y = vec(run_a).double(), vec(run_b).double()
    return float(x @ y / (x.norm() * y.norm()))


def test_map_is_symmetric_with_unit_diagonal_and_ignores_the_factorisation(tmp_path):
    factors = [random_factors(4, s) for s in range(3)]
    # Runs 1 and 2 share part of run 0's A, so their similarities sit well above the floor.
    for f in factors[1:]:
        for m in MODULES:
            f[m][0][:2] = factors[0][m][0][:2]
    paths = [write_adapter(tmp_path / "orig", f"r4-s{s}", f) for s, f in enumerate(factors)]
    base = adapter_map(paths, k=4)
    S = base.similarity.to_numpy()
    assert base.similarity.index.tolist() == ["r4-s0", "r4-s1", "r4-s2"] == base.names
    np.testing.assert_allclose(S, S.T, atol=0)
    np.testing.assert_allclose(np.diag(S), 1.0, atol=1e-6)
    assert (S[~np.eye(3, dtype=bool)] < 0.99).all()

    # The same ΔW_m = s B A of run 0 written with other factors: B → B R, A → R⁻¹ A.
    reparam = {}
    for i, (m, (A, B)) in enumerate(factors[0].items()):
        R = _rand(4, 4, seed=90 + i) + 3 * torch.eye(4)
        reparam[m] = (torch.linalg.solve(R, A), B @ R)
        torch.testing.assert_close(reparam[m][1] @ reparam[m][0], B @ A, rtol=1e-4, atol=1e-4)
    moved = write_adapter(tmp_path / "reparam", "r4-s0", reparam)
    again = adapter_map([moved, paths[1], paths[2]], k=4)
    np.testing.assert_allclose(again.similarity.to_numpy(), S, atol=1e-5)
    assert adapter_map([paths[0], moved], k=4).similarity.iloc[0, 1] == pytest.approx(1.0, abs=1e-5)

    # A flattened A‖B comparison calls the same adapter a different one.
    r0, r0_moved, r1 = load_run(paths[0]), load_run(moved), load_run(paths[1])
    assert flat_cosine(r0, r0_moved) < 0.9
    assert abs(flat_cosine(r0, r1) - flat_cosine(r0_moved, r1)) > 0.05


def _reference(runs, factor, ks):
    """The straightforward computation: dense SVDs, phi_grid per pair and module, then the mean.
    Returns {k: (similarity (N, N), floor (N, N))}."""
    N = len(runs)
    out = {k: (np.zeros((N, N)), np.zeros((N, N))) for k in ks}
    for m in MODULES:
        bases = []
        for run in runs:
            a = run.adapters[m]
            A, B = a.A.double(), a.B.double()
            if factor.startswith("dW"):
                U, _, Vh = torch.linalg.svd(a.scaling * B @ A, full_matrices=False)
                bases.append((Vh.T if factor == "dW-right" else U)[:, : a.rank])
            else:
                U, _, Vh = torch.linalg.svd(A if factor == "A" else B, full_matrices=False)
                bases.append(Vh.T if factor == "A" else U)
        for i in range(N):
            for j in range(i, N):
                phi = np.diag(la.phi_grid(bases[i], bases[j]))  # φ(t, t) needs only the first t columns
                for k, (S, F) in out.items():
                    kk = min(k, len(phi))
                    S[i, j] = S[j, i] = S[i, j] + phi[:kk].mean() / len(MODULES)
                    F[i, j] = F[j, i] = F[i, j] + (kk + 1) / (2 * bases[i].shape[0]) / len(MODULES)
    return out


@pytest.mark.parametrize("factor", am.MAP_FACTORS)
def test_map_equals_pairwise_phi_on_dense_svds(tmp_path, factor):
    sh = shared_directions(N_IN, 2)
    paths = [make_run(tmp_path, f"r{r}-s{s}", r, seed=s, shared=sh if s < 2 else None)
             for r, s in ((2, 0), (4, 1), (6, 2), (4, 3))]  # fmt: skip
    reference = _reference([load_run(p) for p in paths], factor, ks=(1, 3, 8))
    for k, (S, F) in reference.items():
        amap = adapter_map(paths, factor, k)
        np.testing.assert_allclose(amap.similarity.to_numpy(), S, atol=2e-6)
        np.testing.assert_allclose(amap.floor.to_numpy(), F, rtol=1e-12)
    assert amap.dims == {m: N_IN if factor in ("dW-right", "A") else N_OUT for m in MODULES}
    kinds = amap.by_kind
    assert set(kinds.kind) == {"all", "attention.self.query", "attention.self.value"}
    assert len(kinds) == 3 * 4 * 4
    # Each kind is the mean over its layers; "all" the mean over every module.
    per_kind = kinds[kinds.kind != "all"].groupby(["run_a", "run_b"]).similarity.mean()
    overall = kinds[kinds.kind == "all"].set_index(["run_a", "run_b"]).similarity
    np.testing.assert_allclose(per_kind.sort_index(), overall.sort_index(), atol=1e-12)
    assert kinds.loc[(kinds.run_a == "r2-s0") & (kinds.run_b == "r6-s2"), "k"].eq(2).all()


def test_blocked_gram_equals_one_matmul_and_floor_formula():
    bases = [la.factor_basis(_rand(w, 40, seed=w + 7).double())[:, :w] for w in (1, 3, 5, 5, 2)]
    one, k_pair = am.map_scores(bases, 5)
    blocked, _ = am.map_scores(bases, 5, block_bytes=1)  # one adapter per block
    np.testing.assert_allclose(blocked, one, atol=1e-15)
    assert k_pair[1, 2] == 3 and k_pair[0, 4] == 1
    # E[φ(t, t)] = t / n, so the mean over t ≤ k is (k + 1) / (2n).
    np.testing.assert_allclose(am.random_floor(np.array([1, 8]), 64), [2 / 128, 9 / 128])


def test_planted_subspaces_form_two_clusters(tmp_path):
    groups = [shared_directions(N_IN, 2, seed=s) for s in (1, 2)]
    paths = []
    for i in range(6):
        g = i % 2
        run = make_run(tmp_path / "runs", f"r4-s{i}", 4, seed=i, shared=groups[g])
        if i >= 4:  # PEFT folders from elsewhere mix with runs; two are both named "adapter"
            run = export_peft(load_run(run), tmp_path / f"task{i}" / "adapter")
        paths.append(run)
    amap = adapter_map(paths, k=2)
    assert amap.names[4:] == ["task4/adapter", "task5/adapter"]
    labels = fcluster(amap.linkage(), 2, "maxclust")
    assert len(set(labels[[0, 2, 4]])) == 1 and len(set(labels[[1, 3, 5]])) == 1
    assert labels[0] != labels[1]
    S, F = amap.similarity.to_numpy(), amap.floor.to_numpy()
    within = S[np.ix_([0, 2, 4], [0, 2, 4])].min(), S[np.ix_([1, 3, 5], [1, 3, 5])].min()
    across = S[np.ix_([0, 2, 4], [1, 3, 5])]
    # The top direction inside a shared plane depends on B, so φ(1, 1) < 1 within a group; across,
    # the 2-dim planes in R^32 overlap only slightly more than the floor (k + 1) / 2n = 0.047.
    assert min(within) > 0.75 and across.max() < 0.2 and F[0, 1] == pytest.approx(3 / 64)
    assert amap.nearest().loc["r4-s0", "nearest"] in ("r4-s2", "task4/adapter")


def test_rank_deficient_factor_caps_k_and_zero_delta_is_refused(tmp_path, caplog):
    f0, f1 = random_factors(4, 0), random_factors(4, 1)
    for m in MODULES:
        f1[m][1][:, 2:] = 0  # B of rank 2: ΔW has only 2 directions
    paths = [write_adapter(tmp_path, "a", f0), write_adapter(tmp_path, "b", f1)]
    with caplog.at_level(logging.WARNING):
        amap = adapter_map(paths, k=4)
    assert "rank-deficient" in caplog.text
    assert amap.by_kind.query("run_a == 'a' and run_b == 'b'").k.eq(2).all()
    for m in MODULES:
        f1[m][1].zero_()
    zero = write_adapter(tmp_path, "c", f1)
    with pytest.raises(LorascopeError, match="module .*ΔW is zero"):
        adapter_map([paths[0], zero])


def test_dense_delta_basis_matches_factored(monkeypatch):
    A, B = _rand(3, 30, seed=1).double(), _rand(20, 3, seed=2).double()
    for dense_max in (1024, 4):  # LAPACK's full SVD, then ARPACK's top k
        monkeypatch.setattr(delta_module, "DENSE_SVD_MAX", dense_max)
        for factor in ("dW-right", "dW-left"):
            U, S = am.top_basis(factor, 2, Adapter(A, B, 0.5))
            Ud, Sd = am.top_basis(factor, 2, DenseDelta(0.5 * B @ A))
            torch.testing.assert_close(Sd, S)
            torch.testing.assert_close(Ud @ Ud.T, U @ U.T)  # same subspace, signs free
    with pytest.raises(LorascopeError, match="full fine-tuning update has none"):
        am.top_basis("A", 2, DenseDelta(B @ A))


def test_skipped_modules_are_reported(tmp_path, caplog):
    extra = MODULES + ["encoder.layer.2.attention.self.query"]
    paths = [make_run(tmp_path, "r4-s0", 4, modules=extra), make_run(tmp_path, "r4-s1", 4, seed=1)]
    with caplog.at_level(logging.WARNING):
        amap = adapter_map(paths, k=2)
    assert amap.skipped == ["encoder.layer.2.attention.self.query"]
    assert sorted(amap.modules) == sorted(MODULES)
    assert [r.message for r in caplog.records if "not shared" in r.message] == [
        "1 module(s) not shared by all 2 adapters, skipped: encoder.layer.2.attention.self.query"
    ]


def test_a_sweep_folder_gives_its_complete_runs(tmp_path):
    for s in range(3):
        make_run(tmp_path / "sweep", f"r4-s{s}", 4, seed=s)
    make_run(tmp_path / "sweep", "r8-s0", 8, summary={"status": "failed"})
    assert adapter_map([tmp_path / "sweep"], k=2).names == ["r4-s0", "r4-s1", "r4-s2"]


def test_bad_inputs_raise_one_line_errors(tmp_path):
    f = random_factors(4, 0)
    fp = {m: 2.0 for m in MODULES}
    a = write_adapter(tmp_path, "a", f, base="org/llama-7b", fingerprint=fp)
    cases = {
        "different base models": [a, write_adapter(tmp_path, "b", f, base="org/mistral-7b")],
        "different base weights": [
            a,
            write_adapter(tmp_path, "c", f, base="org/llama-7b", fingerprint={MODULES[0]: 2.5}),
        ],
        "shares no module with a": [
            a,
            write_adapter(tmp_path, "d", random_factors(4, 1, ["x.0.o"]), base="org/llama-7b"),
        ],
        "at least 2 adapters, got 1": [a],
        "given twice": [a, tmp_path / "x" / ".." / "a"],
    }
    (tmp_path / "x").mkdir()
    for why, sources in cases.items():
        with pytest.raises(LorascopeError, match=why) as e:
            adapter_map(sources)
        assert "\n" not in str(e.value)
    make_run(tmp_path / "sweep", "r4-s0", 4)
    with pytest.raises(LorascopeError, match="1 complete run"):
        adapter_map([tmp_path / "sweep"])
    for kw, why in (({"k": 0}, "at least 1"), ({"factor": "dA"}, "unknown factor")):
        with pytest.raises(LorascopeError, match=why):
            adapter_map([a, a], **kw)
    # Names differ ("/models/llama-7b" is a local copy) but the recorded ‖W‖_F agree: one base.
    same = write_adapter(tmp_path, "e", f, base="/models/Llama-7B-v2", fingerprint=fp)
    assert adapter_map([a, same], check_base=True).similarity.iloc[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert adapter_map(cases["different base models"], check_base=False).names == ["a", "b"]


def test_unique_names_lengthen_only_clashing_names(tmp_path):
    paths = [tmp_path / "x" / "adapter", tmp_path / "y" / "adapter", tmp_path / "runs" / "r8-s0"]
    assert unique_names(paths) == ["x/adapter", "y/adapter", "r8-s0"]
    deep = [tmp_path / "p" / "x" / "adapter", tmp_path / "q" / "x" / "adapter"]
    assert unique_names(deep) == ["p/x/adapter", "q/x/adapter"]


def test_plot_is_in_dendrogram_order_with_fixed_colours_and_floor():
    from lorascope.analysis.map_plot import plot_adapter_map

    S = np.array([[1.0, 0.1, 0.8], [0.1, 1.0, 0.2], [0.8, 0.2, 1.0]])
    fig, (ax_tree, ax_map, ax_bar) = plot_adapter_map(S, ["a", "b", "c"], floor=0.05, title="map")
    image = ax_map.get_images()[0]
    assert image.get_clim() == (0.0, 1.0)
    order = [t.get_text() for t in ax_map.get_xticklabels()]
    assert order == [t.get_text() for t in ax_map.get_yticklabels()]
    assert abs(order.index("a") - order.index("c")) == 1  # the close pair sits side by side
    idx = [["a", "b", "c"].index(n) for n in order]
    np.testing.assert_array_equal(image.get_array(), S[np.ix_(idx, idx)])
    assert "random floor 0.05" in fig._suptitle.get_text()
    assert len(ax_map.texts) == 9
    big = np.eye(20) * 0.5 + 0.5
    fig2, (_, ax2, _) = plot_adapter_map(big, [f"run{i}" for i in range(20)])
    assert not ax2.texts  # no per-cell text beyond 15 adapters
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(fig2)
