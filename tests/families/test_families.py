"""Adapter families (issue 19): PEFT's own DoRA, PiSSA, OLoRA, embedding, Conv2d and MoE-expert
adapters on tiny random models; every ΔW equals PEFT's merged weight minus the original W."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from families_fixtures import conv_adapter, llama_adapter, moe_adapter

from lorascope.analysis.amplification import amplification, energy_share
from lorascope.analysis.factors import FACTORS
from lorascope.analysis.intruders import intruder_dimensions
from lorascope.base_model import open_base
from lorascope.compare.w_and_delta import amplification_table
from lorascope.delta import DenseDelta
from lorascope.errors import LorascopeError
from lorascope.families.shifted import initial_factors
from lorascope.runs import load_run

pytest.importorskip("peft")

BUILDERS = {
    "dora": lambda t: llama_adapter(t, use_dora=True),
    "pissa": lambda t: llama_adapter(t, init_lora_weights="pissa"),
    "olora": lambda t: llama_adapter(t, init_lora_weights="olora"),
    "embedding": lambda t: llama_adapter(t, targets=("embed_tokens", "q_proj")),
    "conv": conv_adapter,
    "moe": moe_adapter,
}
KIND = {"dora": "DoRADelta", "pissa": "ShiftedDelta", "olora": "ShiftedDelta"}


def rel(a, b) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


@pytest.fixture(params=sorted(BUILDERS))
def family(request, tmp_path):
    folder, ref = BUILDERS[request.param](tmp_path)
    return request.param, folder, ref


def test_delta_equals_peft_merged_minus_original(family):
    name, folder, ref = family
    run = load_run(folder)
    assert set(run.adapters) == set(ref)
    for m, d in run.adapters.items():
        assert type(d).__name__ == KIND.get(name, "Adapter")
        assert torch.linalg.norm(ref[m]) > 0
        assert rel(d.delta_weight(), ref[m]) < 1e-5, m
        assert tuple(d.delta_weight().shape) == tuple(ref[m].shape)


def test_protocol_products_and_svd_of_the_new_kinds(family):
    name, folder, ref = family
    run = load_run(folder)
    for m, d in run.adapters.items():
        D = ref[m]
        X = torch.randn(D.shape[1], 3, dtype=torch.float64)
        Y = torch.randn(D.shape[0], 3, dtype=torch.float64)
        assert rel(d.matvec(X), D @ X) < 1e-5 and rel(d.rmatvec(Y), D.T @ Y) < 1e-5
        U, S, V = d.svd()
        k = min(S.shape[0], 8)
        want = torch.linalg.svdvals(D)[:k]
        assert rel(S[:k], want) < 1e-5
        assert rel(U[:, :k] * S[:k] @ V[:, :k].T, D) < 1e-5 or k < S.shape[0]
        if name in KIND:  # the new kinds: trained factors of r = 4 beside a ΔW of another rank
            assert d.factors.A.shape[0] == 4
            assert d.rank == (8 if name != "dora" else None)
        else:  # a plain factored Adapter: its factors are its ΔW's
            assert d.rank == d.factors.A.shape[0] == S.shape[0]


def test_w_side_analyses_equal_the_dense_reference(family):
    """amplification (with the energy shares) and intruders on each family's ΔW, against the same
    analyses of the dense reference ΔW and the base tensor as stored."""
    name, folder, ref = family
    run = load_run(folder)
    table = amplification_table(run, cache=False, device="cpu", energy=True).set_index("module")
    ckpt = open_base(run)
    for m in ref:
        W = ckpt.weight(m, tuple(ref[m].shape)).double()
        r = table.loc[m, "k"]
        want = amplification(W, DenseDelta(ref[m]), k=int(r), device="cpu")
        for col in ("w_norm", "dw_norm", "proj_dw", "proj_w"):
            assert table.loc[m, col] == pytest.approx(want[col], rel=1e-5), (m, col)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        shares = energy_share((U, S, Vh.T), DenseDelta(ref[m]), int(r))
        for col, v in shares.items():
            assert table.loc[m, col] == pytest.approx(v, rel=1e-5, abs=1e-9), (m, col)
        for side in ("right", "left"):  # the subspace `similarity --factor dW-*` compares
            k = min(3, int(torch.linalg.matrix_rank(ref[m], rtol=1e-5)))  # float32 noise is no direction
            basis, _ = FACTORS[f"dW-{side}"].basis(run.adapters[m], k=k)
            U, _, Vh = torch.linalg.svd(ref[m], full_matrices=False)
            want_basis = (Vh.T if side == "right" else U)[:, :k]
            P, Q = basis @ basis.T, want_basis @ want_basis.T
            assert float(torch.linalg.norm(P - Q)) < 1e-4, (m, side)
        if name in ("dora", "pissa", "olora"):
            got = intruder_dimensions(W, run.adapters[m], k=4, device="cpu")
            exp = intruder_dimensions(W, DenseDelta(ref[m]), k=4, device="cpu")
            np.testing.assert_allclose(got["max_cos"], exp["max_cos"], atol=1e-5)


def test_expert_and_kernel_weights_are_the_stored_tensors(tmp_path):
    from safetensors.torch import load_file

    folder, _ = moe_adapter(tmp_path / "moe")
    run = load_run(folder)
    stored = load_file(tmp_path / "moe" / "moebase" / "model.safetensors")
    ckpt = open_base(run)
    for e in range(3):
        W = ckpt.weight(f"experts.{e}.down_proj", (16, 12))
        assert torch.equal(W, stored["experts.down_proj"][e])
    folder, _ = conv_adapter(tmp_path / "conv")
    run = load_run(folder)
    stored = load_file(tmp_path / "conv" / "convbase" / "model.safetensors")
    assert torch.equal(open_base(run).weight("patch", (8, 27)), stored["patch.weight"].reshape(8, 27))


def test_pissa_niter_reads_a_saved_initial_adapter(tmp_path):
    """pissa_niter_K is randomized: refused alone, exact with the initial adapter saved beside it."""
    from families_fixtures import _llama, _perturb
    from peft import LoraConfig, get_peft_model

    model = _llama(tmp_path / "base")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pm = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="pissa_niter_2")
    )
    pm.save_pretrained(tmp_path / "adapter" / "initial_adapter")
    _perturb(pm)
    pm.save_pretrained(tmp_path / "adapter")
    merged = pm.merge_and_unload().state_dict()
    run = load_run(tmp_path / "adapter")
    for m, d in run.adapters.items():
        key = m + ".weight"
        assert rel(d.delta_weight(), merged[key].double() - state[key].double()) < 1e-5
    (tmp_path / "elsewhere").mkdir()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / "elsewhere" / f).write_bytes((tmp_path / "adapter" / f).read_bytes())
    with pytest.raises(LorascopeError, match="PiSSA.*randomized.*initial_adapter"):
        load_run(tmp_path / "elsewhere")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lorascope.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "lora,why", [({"use_dora": True}, "DoRA"), ({"init_lora_weights": "pissa"}, "PiSSA")]
)
def test_missing_base_exits_2_in_one_line(tmp_path, lora, why):
    import shutil

    folder, _ = llama_adapter(tmp_path, **lora)
    shutil.rmtree(tmp_path / "base")
    res = run_cli("spectrum", folder, "--out", tmp_path / "out")
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and why in line and "not available" in line and "Traceback" not in line


def test_unreconstructible_init_exits_2_in_one_line(tmp_path):
    folder, _ = llama_adapter(tmp_path, init_lora_weights="pissa")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["init_lora_weights"] = "corda"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    res = run_cli("amplification", folder, "--energy-share", "--out", tmp_path / "out")
    assert res.returncode == 2
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "CorDA" in line and "cannot be recomputed" in line


def test_initial_factors_are_the_inits_definitions():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 9, generator=g)
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    A0, B0 = initial_factors(W, "pissa", 3, 2.0)
    assert rel(2.0 * B0 @ A0, U[:, :3] * S[:3] @ Vh[:3]) < 1e-6  # s·B0 A0 = W's best rank-3 part
    A0, B0 = initial_factors(W, "milora", 3, 2.0)
    assert rel(2.0 * B0 @ A0, U[:, -3:] * S[-3:] @ Vh[-3:]) < 1e-5  # the 3 smallest
    A0, B0 = initial_factors(W, "olora", 3, 2.0)
    assert torch.allclose(B0.T @ B0, torch.eye(3), atol=1e-6)  # Q's first columns, R's first rows
    assert torch.allclose((B0 @ A0)[:, :3], W[:, :3], atol=1e-5)  # Q_r R_r keeps W's first r columns


def test_energy_share_planted_subspaces():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(10, 8, generator=g, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    svd = (U, S, Vh.T)
    top = U[:, :2] @ torch.randn(2, 8, generator=g, dtype=torch.float64)  # in W's top-2 output space
    got = energy_share(svd, DenseDelta(top), 2)
    assert got["energy_top_left"] == pytest.approx(1.0) and got["energy_bottom_left"] == pytest.approx(
        0, abs=1e-12
    )
    bottom = torch.randn(10, 2, generator=g, dtype=torch.float64) @ Vh[-2:]  # in W's bottom-2 input space
    got = energy_share(svd, DenseDelta(bottom), 2)
    assert got["energy_bottom_right"] == pytest.approx(1.0) and got["energy_top_right"] == pytest.approx(
        0, abs=1e-12
    )
    assert np.isnan(
        energy_share(svd, DenseDelta(torch.zeros(10, 8, dtype=torch.float64)), 2)["energy_top_left"]
    )


@pytest.mark.parametrize("lora", [{"dora": True}, {"init": "pissa"}, {"init": "olora"}, {"init": "milora"}])
def test_own_runs_read_back_the_trained_layers_change(tiny_bert, topic_jsonl, tmp_path, lora):
    """lorascope's own lora.dora / lora.init=pissa|olora|milora runs: the ΔW read back, added to the
    original W, is the linear map the trained layer computes (its forward on random inputs)."""
    from conftest import tiny_config
    from transformers import AutoModelForSequenceClassification

    from lorascope.lora import add_lora, load_factors
    from lorascope.run_format import read_tensors
    from lorascope.train import train

    out = tmp_path / "r2-s0"
    train(tiny_config(tiny_bert, topic_jsonl, steps=3, lora=lora, train={"snapshot_every": 2}), out)
    run = load_run(out)
    kind = "DoRADelta" if lora.get("dora") else "ShiftedDelta"
    assert {type(d).__name__ for d in run.adapters.values()} == {kind}
    assert {type(d).__name__ for d in run.load_checkpoint(2).values()} == {kind}
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")}
    layers = add_lora(
        model, ["query", "value"], 2, run.meta["alpha"], init=run.meta["init"], dora=bool(lora.get("dora"))
    )
    load_factors({m: layers[m] for m in run.adapters}, read_tensors(out / "adapter.safetensors")[0])
    x = torch.randn(5, 32)
    for m, d in run.adapters.items():
        layer = layers[m]
        W = original[m].double()
        assert rel(W, open_base(run).weight(m, tuple(W.shape)).double()) == 0  # W from the base checkpoint
        want = layer(x).double()
        got = x.double() @ (W + d.delta_weight().double()).T + layer.base.bias.double()
        assert rel(got, want) < 1e-5, m
        assert float(torch.linalg.norm(d.delta_weight())) > 0


def test_amplification_command_writes_the_energy_shares_and_figure(tmp_path):
    import pandas as pd

    folder, _ = llama_adapter(tmp_path, init_lora_weights="pissa")
    res = run_cli("amplification", folder, "--energy-share", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "out" / "amplification.csv", index_col="module")
    want = amplification_table(load_run(folder), cache=False, device="cpu", energy=True).set_index("module")
    for col in ("energy_top_left", "energy_bottom_right", "amplification"):
        np.testing.assert_allclose(table[col], want.loc[table.index, col], rtol=1e-4)
    assert (tmp_path / "out" / "energy_share.png").is_file() and (
        tmp_path / "out" / "energy_share.csv"
    ).is_file()


def test_convolutions_are_said_in_the_output(tmp_path):
    folder, _ = conv_adapter(tmp_path)
    res = run_cli("spectrum", folder, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert "convolution" in res.stderr and "(out, in·k·k) matrix of the kernel" in res.stderr
    assert load_run(folder).meta["convolutions"] == ["conv1", "patch"]
