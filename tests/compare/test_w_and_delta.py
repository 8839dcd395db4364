"""ΔW against W for runs: a PEFT adapter on a sharded bf16 Llama, read lazily, cached, as dense answers."""

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from weights_fixtures import llama_modules, lorascope_run, peft_folder, random_adapters, save_tiny_llama

from lorascope import analysis as la
from lorascope import base_model, run_format, runs, wspectra
from lorascope.analysis import truncated
from lorascope.compare.w_and_delta import amplification_table, intruder_tables, w_delta_frame

PLANTED = "model.layers.1.self_attn.q_proj"


# Small matrices: on a shared 2-core CPU, OpenMP threads cost more than they give.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASCOPE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-bf16")
    return folder, save_tiny_llama(folder)


def _planted(state):
    """s·b aᵀ on PLANTED with b spread over W's 16 weakest left singular vectors (max |cos| = 1/4)
    and a = W's weakest right singular vector: the top direction of W + ΔW is b, new to W."""
    U, _, Vh = torch.linalg.svd(state[PLANTED + ".weight"].double())
    b = U[:, -16:].sum(dim=1) / 4.0
    return run_format.Adapter(Vh[-1][None, :].float(), b[:, None].float(), 50.0)


@pytest.fixture(scope="module")
def peft_run(base, tmp_path_factory):
    folder, state = base
    adapters = random_adapters(state, llama_modules())
    adapters[PLANTED] = _planted(state)
    return runs.load_run(peft_folder(tmp_path_factory.mktemp("adapters"), folder, adapters))


def test_amplification_reads_only_the_adapted_tensors_and_equals_the_dense_answer(base, peft_run):
    folder, state = base
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    base_model.TENSORS_READ.clear()
    table = amplification_table(peft_run)
    assert dict(base_model.TENSORS_READ) == {m + ".weight": 1 for m in llama_modules()}
    assert list(table["module"]) == sorted(llama_modules())
    for row in table.itertuples():
        a = peft_run.adapters[row.module]
        W = state[row.module + ".weight"].double()
        ref = la.amplification(W, a, w_svd=torch.linalg.svd(W, full_matrices=False))
        for key in ("w_norm", "dw_norm", "proj_dw", "proj_w", "proj_random", "amplification", "k"):
            assert getattr(row, key) == pytest.approx(ref[key], rel=1e-9), (row.module, key)


def test_a_second_amplification_uses_the_cache(peft_run):
    amplification_table(peft_run)
    calls, stats = truncated.SVD_CALLS.copy(), wspectra.STATS.copy()
    again = amplification_table(peft_run)
    assert truncated.SVD_CALLS - calls == {}  # no decomposition at all
    n = len(llama_modules())
    # W's top-k and its random floor, each key found by the file's identity: W is not hashed again
    assert wspectra.STATS - stats == {"hit": 2 * n, "index-hit": n}
    assert len(again) == len(llama_modules())


def test_a_rewritten_base_file_is_hashed_again(base, peft_run, tmp_path):
    """The identity index must not serve the old key once a shard's bytes change, even when its size,
    inode and modification time stay the same: here W's rows are swapped (‖W‖_F, the fingerprint, and
    σ(W) unchanged) in place, and the mtime is put back."""
    import os
    import shutil

    from safetensors import safe_open

    folder, state = base
    copy = tmp_path / "base"
    shutil.copytree(folder, copy)
    run = runs.load_run(peft_folder(tmp_path, copy, dict(peft_run.adapters)))
    amplification_table(run, modules=PLANTED)
    key = PLANTED + ".weight"
    shard = next(p for p in copy.glob("model-*.safetensors") if key in safe_open(str(p), "pt").keys())
    with safe_open(str(shard), "pt") as f:
        W = f.get_tensor(key)
    data = shard.read_bytes()
    size = int.from_bytes(data[:8], "little")
    start = 8 + size + json.loads(data[8 : 8 + size])[key]["data_offsets"][0]
    swapped = W.clone()
    swapped[[0, 1]] = W[[1, 0]]
    before = shard.stat()
    with open(shard, "r+b") as f:
        f.seek(start)
        f.write(swapped.contiguous().view(torch.uint8).numpy().tobytes())
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = shard.stat()
    same = ("st_ino", "st_size", "st_mtime_ns")
    assert [getattr(after, f) for f in same] == [getattr(before, f) for f in same]

    stats = wspectra.STATS.copy()
    row = amplification_table(run, modules=PLANTED).iloc[0]
    assert (wspectra.STATS - stats)["hashed"] == 1
    a = run.adapters[PLANTED]
    ref = la.amplification(swapped.double(), a)
    for key in ("proj_dw", "proj_w", "proj_random", "amplification"):
        assert row[key] == pytest.approx(ref[key], rel=1e-9), key


def test_planted_intruder_is_found_and_zero_delta_gives_none(base, peft_run, tmp_path):
    folder, state = base
    base_model.TENSORS_READ.clear()
    table, curve = intruder_tables(peft_run, k=10, eps=0.5)
    assert dict(base_model.TENSORS_READ) == {m + ".weight": 1 for m in llama_modules()}
    planted = table.set_index("module").loc[PLANTED]
    assert planted["count"] >= 1 and planted["intruders"].split()[0] == "0"
    assert planted["min_max_cos"] < 0.3
    # The dense definition: SVDs of W and of W + ΔW.
    for row in table.itertuples():
        a = peft_run.adapters[row.module]
        W = state[row.module + ".weight"].double()
        U_w = torch.linalg.svd(W)[0]
        U_ft = torch.linalg.svd(W + a.scaling * (a.B @ a.A).double())[0][:, :10]
        max_cos = (U_ft.T @ U_w).abs().amax(1)
        assert row.count == int((max_cos < 0.5).sum()), row.module
        assert row.min_max_cos == pytest.approx(float(max_cos.min()), abs=1e-6)
    assert set(curve.columns) == {"run", "module", "eps", "count"}
    assert len(curve) == len(llama_modules()) * 17
    at_half = curve[(curve["module"] == PLANTED) & np.isclose(curve["eps"], 0.5)]["count"]
    assert int(at_half.iloc[0]) == planted["count"]
    # A second run decomposes nothing W-sized: W + ΔW's top-10 come from W's cached decomposition.
    calls = truncated.SVD_CALLS.copy()
    again, _ = intruder_tables(peft_run, k=10, eps=0.5)
    assert truncated.SVD_CALLS - calls == {}
    pd.testing.assert_frame_equal(again, table)
    # ΔW = 0 (B = 0, as at initialisation): the top directions of W + ΔW are W's own.
    zero = {
        m: run_format.Adapter(a.A, torch.zeros_like(a.B), a.scaling) for m, a in peft_run.adapters.items()
    }
    zero_run = runs.load_run(peft_folder(tmp_path, folder, zero, "zero"))
    assert intruder_tables(zero_run)[0]["count"].sum() == 0


def test_several_runs_share_one_read_of_each_w(base, tmp_path):
    folder, state = base
    modules = llama_modules(("q_proj",))
    r4 = lorascope_run(tmp_path, str(folder), random_adapters(state, modules, 4, seed=3), state, "r4-s0")
    r8 = lorascope_run(tmp_path, str(folder), random_adapters(state, modules, 8, seed=4), state, "r8-s0")
    both = {"r=4": runs.load_run(r4), "r=8": runs.load_run(r8)}
    base_model.TENSORS_READ.clear()
    table = amplification_table(both, layers={0, 2})
    assert sorted(base_model.TENSORS_READ) == [f"model.layers.{i}.self_attn.q_proj.weight" for i in (0, 2)]
    assert list(table["run"]) == ["r=4", "r=8"] * 2 and list(table["k"]) == [4, 8] * 2
    frame = w_delta_frame(both, modules="layers.0")
    for label, run in both.items():
        a = run.adapters[modules[0]]
        W = state[modules[0] + ".weight"].double()
        ref = la.phi_grid(torch.linalg.svd(W)[0][:, :8], la.delta_svd(a.A, a.B, a.scaling)[0])
        got = frame[frame["run"] == label].pivot(index="i", columns="j", values="phi").to_numpy()
        np.testing.assert_allclose(got, ref, atol=1e-9)


def test_several_runs_cold_and_warm_make_one_pass_over_each_w(base, tmp_path, monkeypatch):
    """Every run's W V, the random floors of each k and (cold) W's top-k: one stream over W per
    module, whatever the number of runs, and each run's numbers as its own dense answer."""
    folder, state = base
    modules = llama_modules(("q_proj",))
    r4 = lorascope_run(tmp_path, str(folder), random_adapters(state, modules, 4, seed=3), state, "r4-s0")
    r8 = lorascope_run(tmp_path, str(folder), random_adapters(state, modules, 8, seed=4), state, "r8-s0")
    both = {"r=4": runs.load_run(r4), "r=8": runs.load_run(r8)}
    amp_module = importlib.import_module(
        "lorascope.analysis.amplification"
    )  # the package's name is the function
    passes = []
    for owner in (truncated, amp_module):
        real = owner.stream_product
        monkeypatch.setattr(
            owner,
            "stream_product",
            lambda W, X, real=real, **kw: passes.append(X.shape[1]) or real(W, X, **kw),
        )
    # cold: the 4 + 8 columns of the two ΔW and the floors' V_r of k = 4 and 8 (a tiny W's top-8 come
    # from the float64 Krylov, not a stream); warm: the floors are cached, the ΔW columns alone
    for state_of_cache, columns in (("cold", 4 + 8 + 4 + 8), ("warm", 4 + 8)):
        passes.clear()
        table = amplification_table(both, layers={0, 2})
        assert passes == [columns] * 2, state_of_cache
        for row in table.itertuples():
            a = both[row.run].adapters[row.module]
            W = state[row.module + ".weight"].double()
            ref = la.amplification(W, a, w_svd=torch.linalg.svd(W, full_matrices=False))
            for key in ("w_norm", "dw_norm", "proj_dw", "proj_w", "proj_random", "amplification", "k"):
                assert getattr(row, key) == pytest.approx(ref[key], rel=1e-9), (row.module, key)


def test_a_base_of_another_shape_is_refused(base, tmp_path):
    from lorascope.errors import LorascopeError

    folder, _ = base
    other = {PLANTED: run_format.Adapter(torch.zeros(2, 32), torch.zeros(32, 2), 1.0)}
    run = runs.load_run(lorascope_run(tmp_path, str(folder), other))
    with pytest.raises(LorascopeError, match="the run's base model"):
        amplification_table(run)


def test_warm_intruders_two_modules_at_a_time_equal_the_plain_loop(peft_run):
    cold, _ = intruder_tables(peft_run, k=10, eps=0.5)  # one thread (the fixture): the plain loop
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        calls = truncated.SVD_CALLS.copy()
        side, side_curve = intruder_tables(peft_run, k=10, eps=0.5)  # warm: modules on a pool of 2
        assert truncated.SVD_CALLS - calls == {}
    finally:
        torch.set_num_threads(threads)
    assert list(side["module"]) == list(cold["module"]) and list(side["count"]) == list(cold["count"])
    assert list(side["intruders"]) == list(cold["intruders"])
    # The float32 products with the cached U round differently on one thread and on two: ~1e-8.
    np.testing.assert_allclose(side["min_max_cos"], cold["min_max_cos"], rtol=0, atol=1e-6)
    assert len(side_curve) == len(llama_modules()) * 17
