"""Hundreds of adapters at once (issue #22): the subspace they share, and what merging them keeps.

Planted answers: a shared k-dimensional subspace plus noise is found (φ with the planted basis near 1,
the energy curve's knee at k), independent adapters sit inside the Monte Carlo floor's band; merges
equal PEFT's add_weighted_adapter; orthogonal adapters are kept whole by task arithmetic and do not
interfere; ΔW against −ΔW is a total sign conflict for TIES; every bad input is one line and exit 2.
"""

from __future__ import annotations

import sys

import analysis_fixtures
import numpy as np
import pandas as pd
import pytest
import torch

from lorascope import analysis as la
from lorascope.analysis import merging as mg
from lorascope.analysis import shared_subspace as ss
from lorascope.analysis import subspace_floor as sf
from lorascope.cli import main
from lorascope.compare import load_shared_basis, project_adapter, run_merge, run_subspace
from lorascope.errors import LorascopeError
from lorascope.runs import load_run

pytestmark = pytest.mark.usefixtures("one_thread")

MODULES = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
N_IN, N_OUT = 48, 40


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def write_adapter(root, name, factors, *, base="synthetic", fingerprint=None, alpha=8.0):
    return analysis_fixtures.write_adapter(
        root, name, factors, base=base, fingerprint=fingerprint, alpha=alpha, targets=("q_proj", "v_proj")
    )


def planted_basis(n: int, k: int, seed: int = 123) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=_g(seed), dtype=torch.float64))[0]


def planted_factors(rank: int, planted: dict, seed: int, strength=(3.0, 2.5, 2.0, 1.8)) -> dict:
    """Per module A whose first k rows are the planted directions (strong), the rest individual noise
    directions, and a random B: the top-k right singular subspace of ΔW is the planted one."""
    out = {}
    for j, m in enumerate(MODULES):
        g = _g(1000 * seed + j)
        P = planted.get(m)
        A = 0.1 * torch.randn(rank, N_IN, generator=g, dtype=torch.float64)
        if P is not None:
            k = P.shape[1]
            A[:k] += torch.tensor(strength[:k], dtype=torch.float64)[:, None] * P.T
        out[m] = (A, torch.randn(N_OUT, rank, generator=g, dtype=torch.float64))
    return out


def independent_factors(rank: int, seed: int) -> dict:
    return {m: (torch.randn(rank, N_IN, generator=_g(5000 + 10 * seed + j)),
                torch.randn(N_OUT, rank, generator=_g(7000 + 10 * seed + j)))
            for j, m in enumerate(MODULES)}  # fmt: skip


def _error(capsys, argv):
    """main(argv) fails as a user error: exit 2 and exactly one line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorascope: error: ") and err.count("\n") == 1, err
    return err


# ----------------------------------------------------------------------------- the mathematics


def _bases(factors_list, module, side="right", weighted=False):
    bases, weights = [], []
    for f in factors_list:
        A, B = f[module]
        U, S, V = la.delta_svd(A, B, 1.0)
        bases.append(V if side == "right" else U)
        weights.append(ss.adapter_weights(S, weighted))
    return bases, weights


@pytest.mark.parametrize("weighted", [False, True])
def test_a_planted_shared_subspace_is_found_with_its_knee_at_k(weighted):
    k, rank, N = 3, 6, 10
    P = planted_basis(N_IN, k)
    adapters = [planted_factors(rank, dict.fromkeys(MODULES, P), seed) for seed in range(N)]
    bases, weights = _bases(adapters, MODULES[0], weighted=weighted)
    res = ss.shared_subspace(bases, weights)
    floor = sf.random_floor(N_IN, weights, trials=32)
    phi = la.phi_grid(res.basis[:, :k], P)[k - 1, k - 1]
    assert phi > 0.98
    assert sf.knee(res, floor) == k
    assert sf.shared_dims(res, floor) == k
    assert res.energy_at(k) > floor.at(k)[2] + 0.1
    np.testing.assert_allclose(res.energy[-1], 1.0, atol=1e-12)  # every adapter brings one unit
    np.testing.assert_allclose(res.coverage.mean(0), res.energy[: res.coverage.shape[1]], atol=1e-10)
    if weighted:  # the planted directions carry most of σ²: their share is larger than k / r
        assert res.energy_at(k) > 0.8 > k / rank


def test_independent_adapters_lie_inside_the_floor_band():
    """The band is mean ± 3 sd at each m, so one curve in a few dozen leaves it somewhere by chance:
    here 8 (module, side) curves, at most one outside it (or with a λ above the band), none by 4 sd."""
    N, rank = 8, 4
    adapters = [independent_factors(rank, seed) for seed in range(N)]
    inside = []
    for side in ("right", "left"):
        for m in MODULES:
            bases, weights = _bases(adapters, m, side)
            res = ss.shared_subspace(bases, weights)
            floor = sf.random_floor(N_IN if side == "right" else N_OUT, weights, trials=64, seed=11)
            inside.append(floor.contains(res.energy))
            L = len(floor.energy_mean) - 1  # E = 1 exactly at the end
            z = (res.energy[:L] - floor.energy_mean[:L]) / floor.energy_sd[:L]
            assert np.abs(z).max() < 4
            inside[-1] &= sf.shared_dims(res, floor) == 0
            assert floor.energy_sd[:5].min() > 0  # a real band before the curve reaches 1
    assert sum(inside) >= len(inside) - 1


def test_the_gram_and_the_n_by_n_routes_agree(monkeypatch):
    g = _g(3)
    bases = [torch.linalg.qr(torch.randn(20, 3, generator=g, dtype=torch.float64))[0] for _ in range(9)]
    weights = [ss.adapter_weights(torch.tensor([3.0, 2.0, 1.0]), True) for _ in bases]  # K = 27 > n = 20
    whole = ss.shared_subspace(bases, weights, keep=6)
    monkeypatch.setattr(ss, "EIGH_MAX", 8)  # eigvalsh + block Krylov for the top vectors
    krylov = ss.shared_subspace(bases, weights, keep=6)
    np.testing.assert_allclose(krylov.eigenvalues, whole.eigenvalues, atol=1e-12)
    np.testing.assert_allclose((whole.basis.T @ krylov.basis).abs().diagonal(), 1.0, atol=1e-8)
    # and K ≤ n (ZᵀZ) equals the eigendecomposition of Z Zᵀ
    few = ss.shared_subspace(bases[:4], weights[:4])
    Z = ss.stack(bases[:4], weights[:4])
    np.testing.assert_allclose(
        few.eigenvalues, torch.linalg.eigvalsh(Z @ Z.T).flip(0)[:12].numpy(), atol=1e-12
    )


def test_projection_floor_is_the_exact_mean_coverage_of_random_adapters():
    Q = planted_basis(N_IN, 5, seed=9)
    g = _g(4)
    frames = [torch.linalg.qr(torch.randn(N_IN, 4, generator=g, dtype=torch.float64))[0] for _ in range(2000)]
    curves = [ss.project(Q, U, torch.full((4,), 0.25)) for U in frames]
    np.testing.assert_allclose(np.mean(curves, 0), sf.projection_floor(N_IN, 5), rtol=0.05)


# ----------------------------------------------------------------------------- subspace on runs


@pytest.fixture
def planted_runs(tmp_path):
    """6 adapters sharing a 2-dimensional subspace of R^in per module, and one independent adapter."""
    planted = {m: planted_basis(N_IN, 2, seed=40 + j) for j, m in enumerate(MODULES)}
    folders = [
        write_adapter(tmp_path / "sweep", f"r4-s{s}", planted_factors(4, planted, s)) for s in range(6)
    ]
    odd = write_adapter(tmp_path / "sweep", "r4-s9", independent_factors(4, 9))
    return planted, folders, odd


def test_subspace_of_runs_finds_the_planted_basis_and_the_outlier(planted_runs, monkeypatch):
    from lorascope.run_format import Adapter

    planted, folders, odd = planted_runs

    def refuse(self):
        raise AssertionError("ΔW was formed")

    monkeypatch.setattr(Adapter, "delta_weight", refuse)  # the shared subspace never forms ΔW
    rep = run_subspace([*folders, odd], side="right", trials=24)
    table = rep.table()
    assert (table.knee == 2).all() and (table.shared_dims == 2).all()
    for m in MODULES:
        assert la.phi_grid(rep.results[m].basis[:, :2], planted[m])[1, 1] > 0.98
    coverage = rep.coverage()
    assert list(coverage.index[coverage.outlier]) == ["r4-s9"]
    assert (table.energy > table.floor_hi).all()


def test_cli_subspace_writes_figures_tables_and_a_reusable_basis(planted_runs, tmp_path, capsys):
    planted, folders, odd = planted_runs
    new = write_adapter(tmp_path / "new", "r4-s20", planted_factors(4, planted, 20))
    out = tmp_path / "out"
    argv = ["subspace", *map(str, folders), "--out", str(out), "--trials", "8", "--project", str(new)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "shared subspace of 6 adapters" in text and "projected on the shared basis" in text
    for name in ("energy_curve.png", "energy_curve.csv", "layers.png", "layers.csv", "subspace.csv",
                 "subspace.md", "subspace.tex", "coverage.csv", "coverage_modules.csv",
                 "shared_basis.safetensors", "projection.csv"):  # fmt: skip
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "subspace.csv", index_col="module")
    assert (table.knee == 2).all()
    curve = pd.read_csv(out / "energy_curve.csv")
    assert set(curve.module) == set(MODULES) and (curve.floor_lo <= curve.floor_hi).all()
    bases, eigs, header = load_shared_basis(out / "shared_basis.safetensors")
    assert header["side"] == "right" and header["adapters"] == [f.name for f in folders]
    assert set(bases) == set(MODULES) and bases[MODULES[0]].shape[0] == N_IN
    projection = pd.read_csv(out / "projection.csv", index_col="module")
    assert (projection.coverage > 0.45).all()  # the 2 planted of its 4 directions, weight 1/4 each
    np.testing.assert_allclose(projection.floor, projection.m / N_IN)
    # reuse the saved basis: the planted adapter is covered, an independent one sits at the floor
    far = project_adapter(odd, out / "shared_basis.safetensors")
    near = project_adapter(new, out / "shared_basis.safetensors")
    assert (near.coverage > 5 * near.floor).all() and (far.coverage < 3 * far.floor).all()
    assert main(["subspace", "--basis", str(out / "shared_basis.safetensors"), "--project", str(odd),
                 "--out", str(tmp_path / "proj")]) == 0  # fmt: skip
    assert (tmp_path / "proj" / "projection.md").is_file()


def test_subspace_mixes_runs_and_peft_folders(planted_runs, tmp_path):
    from lorascope.peft_format import export_peft

    planted, folders, _ = planted_runs
    peft = export_peft(load_run(folders[0]), tmp_path / "peft" / "adapter")
    mixed = run_subspace([peft, *folders[1:]], trials=4)
    same = run_subspace(folders, trials=4)
    for m in MODULES:
        np.testing.assert_allclose(mixed.results[m].eigenvalues, same.results[m].eigenvalues, atol=1e-6)


def test_subspace_bad_inputs_are_one_line(planted_runs, tmp_path, capsys):
    _, folders, _ = planted_runs
    assert "at least 2" in _error(capsys, ["subspace", str(folders[0])])
    other = write_adapter(
        tmp_path / "x", "r4-s0", {"encoder.layer.0.query": independent_factors(4, 1)[MODULES[0]]}
    )
    assert "shares no module" in _error(capsys, ["subspace", str(folders[0]), str(other)])
    fp = {m: 1.0 for m in MODULES}
    a = write_adapter(tmp_path / "y", "a", independent_factors(4, 2), fingerprint=fp)
    b = write_adapter(tmp_path / "y", "b", independent_factors(4, 3), fingerprint={m: 2.0 for m in MODULES})
    assert "different base" in _error(capsys, ["subspace", str(a), str(b)])
    assert "--side" in _error(capsys, ["subspace", str(a), str(folders[0]), "--side", "up"])
    assert "--basis" in _error(capsys, ["subspace", str(a), "--basis", str(a / "adapter.safetensors")])


# ----------------------------------------------------------------------------- merge against PEFT


@pytest.fixture(scope="module")
def peft_adapters(tiny_llama, tmp_path_factory):
    """Three PEFT LoRA adapters (r = 4, random A and B) of the tiny Llama, and a lorascope run holding
    the third one's factors (a mixed input)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("peft-adapters")
    folders = []
    for i in range(3):
        torch.manual_seed(100 + i)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_llama), config)
        model.save_pretrained(root / f"a{i}")
        folders.append(root / f"a{i}")
    third = load_run(folders[2])
    run = write_adapter(root, "r4-s2", {m: (a.A, a.B) for m, a in third.adapters.items()},
                        base=str(tiny_llama), alpha=8.0)  # fmt: skip
    return folders, run


def peft_merged(tiny_llama, folders, weights, combination, *, density=None, svd_rank=None, seed=0):
    """ΔW per module of PeftModel.add_weighted_adapter; DARE's draws seeded per module as lorascope does."""
    import peft.tuners.lora.model as lora_model
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(tiny_llama), folders[0], adapter_name="a0"
    )
    for i, f in enumerate(folders[1:], 1):
        model.load_adapter(f, adapter_name=f"a{i}")
    names = {id(mod): n for n, mod in model.base_model.model.named_modules()}
    original = lora_model.LoraModel._svd_generalized_task_arithmetic_weighted_adapter

    def seeded(self, combination_type, adapters, weights, new_rank, target, *args, **kwargs):
        torch.manual_seed(mg.module_seed(seed, names[id(target)]))
        return original(self, combination_type, adapters, weights, new_rank, target, *args, **kwargs)

    lora_model.LoraModel._svd_generalized_task_arithmetic_weighted_adapter = seeded
    try:
        model.add_weighted_adapter([f"a{i}" for i in range(len(folders))], weights, "merged",
                                   combination_type=combination, svd_rank=svd_rank, density=density,
                                   svd_full_matrices=False)  # fmt: skip
    finally:
        lora_model.LoraModel._svd_generalized_task_arithmetic_weighted_adapter = original
    return {n: mod.get_delta_weight("merged").detach().double()
            for n, mod in model.base_model.model.named_modules()
            if hasattr(mod, "lora_A") and "merged" in mod.lora_A}  # fmt: skip


@pytest.mark.parametrize(
    "method, density", [("task_arithmetic", None), ("ties", 0.5), ("dare_linear", 0.5), ("dare_ties", 0.3),
                        ("magnitude_prune", 0.4)],
)  # fmt: skip
def test_merged_delta_equals_peft_add_weighted_adapter(peft_adapters, tiny_llama, method, density):
    folders, run = peft_adapters
    weights = [1.0, 0.5, -0.7]
    # svd_rank = 32 ≥ min(out, in): PEFT's *_svd merge keeps the whole merged ΔW
    ref = peft_merged(tiny_llama, folders, weights, mg.PEFT_COMBINATION[method].replace("cat", "svd"),
                      density=density, svd_rank=32, seed=5)  # fmt: skip
    rep = run_merge([folders[0], folders[1], run], method, weights=weights, density=density, rank=32,
                    seed=5, keep_factors=True)  # fmt: skip
    assert set(rep.factors) == set(ref)
    for m, (A, B) in rep.factors.items():
        got = B.double() @ A.double()
        assert float((got - ref[m]).abs().max()) <= 1e-5 * float(ref[m].abs().max()), m


def test_svd_merge_equals_peft_svd_at_its_default_rank(peft_adapters, tiny_llama):
    folders, _ = peft_adapters
    weights = [0.6, 0.3, 0.9]
    ref = peft_merged(tiny_llama, folders, weights, "svd")  # svd_rank: the largest adapter rank, 4
    rep = run_merge(folders, "svd", weights=weights, keep_factors=True)
    assert rep.rank == 4
    for m, (A, B) in rep.factors.items():
        got = B.double() @ A.double()
        assert float(torch.linalg.norm(got - ref[m]) / torch.linalg.norm(ref[m])) <= 1e-5, m
    # and task arithmetic equals PEFT's exact "cat"
    cat = peft_merged(tiny_llama, folders, weights, "cat")
    full = run_merge(folders, "task_arithmetic", weights=weights, keep_factors=True)
    assert full.rank == 12
    for m, (A, B) in full.factors.items():
        assert float((B.double() @ A.double() - cat[m]).abs().max()) <= 1e-5 * float(cat[m].abs().max())


def test_saved_adapter_loads_with_peft_and_holds_the_merge(peft_adapters, tiny_llama, tmp_path, capsys):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    folders, run = peft_adapters
    out = tmp_path / "merged"
    argv = ["merge", str(folders[0]), str(folders[1]), str(run), "--method", "ties", "--density", "0.5",
            "--rank", "6", "--out", str(out), "--save-adapter"]  # fmt: skip
    assert main(argv) == 0
    assert "PeftModel.from_pretrained" in capsys.readouterr().out
    for name in ("retention.csv", "retention.md", "retention.tex", "merge_modules.csv", "interference.png",
                 "interference.csv", "retention_modules.csv"):  # fmt: skip
        assert (out / name).is_file(), name
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_llama), out / "adapter")
    rep = run_merge([folders[0], folders[1], run], "ties", density=0.5, rank=6, keep_factors=True)
    seen = 0
    for name, mod in model.base_model.model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            A, B = rep.factors[name]
            np.testing.assert_allclose(mod.get_delta_weight("default").detach(), B @ A, atol=1e-6)
            assert mod.lora_A["default"].weight.shape[0] == 6
            seen += 1
    assert seen == 4
    modules = pd.read_csv(out / "merge_modules.csv", index_col="module")
    assert ((modules.refactor_error >= 0) & (modules.refactor_error < 1)).all()
    capsys.readouterr()
    assert "--overwrite" in _error(capsys, argv)  # a second --save-adapter without --overwrite
    assert main([*argv, "--overwrite"]) == 0


# ----------------------------------------------------------------------------- what a merge keeps


def _orthogonal_pair(tmp_path):
    """Two adapters whose ΔW have orthogonal left and right subspaces, per module."""
    g = _g(8)
    pair = [{}, {}]
    for m in MODULES:
        QL = torch.linalg.qr(torch.randn(N_OUT, 8, generator=g, dtype=torch.float64))[0]
        QR = torch.linalg.qr(torch.randn(N_IN, 8, generator=g, dtype=torch.float64))[0]
        for i in range(2):
            C = torch.randn(4, 4, generator=g, dtype=torch.float64)
            pair[i][m] = (QR[:, 4 * i : 4 * i + 4].T.contiguous(), QL[:, 4 * i : 4 * i + 4] @ C)
    return [write_adapter(tmp_path, f"r4-s{i}", f) for i, f in enumerate(pair)]


def test_task_arithmetic_keeps_orthogonal_adapters_whole_without_interference(tmp_path):
    folders = _orthogonal_pair(tmp_path)
    rep = run_merge(folders, "task_arithmetic")
    ret = rep.retention()
    np.testing.assert_allclose(ret.retention, 1.0, atol=1e-6)
    np.testing.assert_allclose(ret[["phi_left", "phi_right"]].to_numpy(), 1.0, atol=1e-6)
    for side in ("left", "right"):
        value, floor = rep.off_diagonal(side)
        assert value <= 1e-10 and value <= floor  # at (below) the random floor max(k_i, k_j)/n
    np.testing.assert_allclose(rep.modules.interference_left_floor, 4 / N_OUT)
    np.testing.assert_allclose(ret.retention_floor, 8**2 / (N_OUT * N_IN))
    # orthogonal ΔW: each is 1/√2 of the sum's direction (equal norms are not needed for retention)
    assert (ret.cosine > 0).all()


def test_ties_sign_conflict_is_total_for_an_adapter_and_its_negative(tmp_path):
    f = independent_factors(4, 3)
    a = write_adapter(tmp_path, "plus", f)
    b = write_adapter(tmp_path, "minus", {m: (A, -B) for m, (A, B) in f.items()})
    rep = run_merge([a, b], "ties", density=0.3)
    np.testing.assert_allclose(rep.modules.sign_conflict, 1.0)
    np.testing.assert_allclose(rep.modules.sign_conflict_floor, 0.5)
    np.testing.assert_allclose(rep.modules.shared_entries, 0.3, atol=0.01)  # the same entries are kept
    for side in ("left", "right"):
        assert rep.off_diagonal(side)[0] == pytest.approx(1.0)  # one subspace
    # the merge with itself: no conflict at all
    same = run_merge([a, write_adapter(tmp_path, "again", f)], "ties", density=0.3)
    np.testing.assert_allclose(same.modules.sign_conflict, 0.0)


def test_sign_conflict_of_independent_adapters_is_at_its_floor():
    g = _g(2)
    pruned = []
    for _ in range(4):
        D = torch.randn(200, 300, generator=g)
        pruned.append(D * (torch.rand(200, 300, generator=g) < 0.5))
    sc = mg.sign_conflict(pruned)
    assert sc.fraction == pytest.approx(sc.floor, abs=0.01)
    np.testing.assert_allclose(sc.kept, 0.5, atol=0.01)


def test_dare_is_seeded_per_module(tmp_path):
    folders = [write_adapter(tmp_path, f"r4-s{s}", independent_factors(4, s)) for s in range(3)]
    one = run_merge(folders, "dare_linear", density=0.5, seed=1, keep_factors=True)
    two = run_merge(folders, "dare_linear", density=0.5, seed=1, keep_factors=True)
    other = run_merge(folders, "dare_linear", density=0.5, seed=2, keep_factors=True)
    alone = run_merge(folders, "dare_linear", density=0.5, seed=1, keep_factors=True, modules="v_proj")
    m = MODULES[1]
    torch.testing.assert_close(one.factors[m], two.factors[m], rtol=0, atol=0)
    torch.testing.assert_close(
        one.factors[m], alone.factors[m], rtol=0, atol=0
    )  # other modules change nothing
    assert not torch.equal(one.factors[m][1], other.factors[m][1])


def test_merge_bad_inputs_are_one_line(tmp_path, capsys, monkeypatch):
    a = write_adapter(tmp_path, "a", independent_factors(4, 1))
    b = write_adapter(tmp_path, "b", independent_factors(4, 2))
    ok = [str(a), str(b)]
    assert "at least 2" in _error(capsys, ["merge", str(a), "--method", "ties"])
    assert "unknown merge method 'mean'" in _error(capsys, ["merge", *ok, "--method", "mean"])
    for density in ("0", "1.5", "-0.2", "nan"):
        assert "(0, 1]" in _error(capsys, ["merge", *ok, "--method", "ties", "--density", density])
    assert "want numbers" in _error(capsys, ["merge", *ok, "--method", "ties", "--density", "half"])
    assert "one per adapter" in _error(capsys, ["merge", *ok, "--method", "ties", "--weights", "1,2,3"])
    other = write_adapter(tmp_path, "c", {"encoder.layer.0.query": independent_factors(4, 3)[MODULES[0]]})
    assert "shares no module" in _error(capsys, ["merge", str(a), str(other), "--method", "ties"])
    x = write_adapter(tmp_path, "x", independent_factors(4, 4), fingerprint={m: 1.0 for m in MODULES})
    y = write_adapter(tmp_path, "y", independent_factors(4, 5), fingerprint={m: 3.0 for m in MODULES})
    assert "different base" in _error(capsys, ["merge", str(x), str(y), "--method", "task_arithmetic"])
    for name in ("peft", "peft.utils", "peft.utils.merge_utils"):
        monkeypatch.setitem(sys.modules, name, None)
    assert "lorascope[merge]" in _error(capsys, ["merge", *ok, "--method", "ties"])
    with pytest.raises(LorascopeError, match="PEFT is not installed"):
        run_merge(ok, "ties")


@pytest.mark.parametrize("command", ["subspace", "merge"])
def test_help_explains_the_commands(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lorascope") and "--modules" in out and len(out.splitlines()) > 10
