"""DoRA's ΔW (PEFT's merge, minus W) and the DoRA paper's magnitude / direction changes ΔM, ΔD."""

from __future__ import annotations

import pytest
import torch

from lorascope.families.direction import correlation, magnitude_direction
from lorascope.families.dora import DoRADelta, dora_weight


def test_dora_weight_is_m_times_the_row_normalised_update():
    g = torch.Generator().manual_seed(0)
    W, A, B = torch.randn(6, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    m = torch.rand(6, generator=g) + 0.5
    Wp = dora_weight(W, A, B, 0.5, m)
    torch.testing.assert_close(torch.linalg.norm(Wp, dim=1), m)  # every row's norm is its magnitude
    V = W + 0.5 * B @ A
    cos = (Wp * V).sum(1) / (torch.linalg.norm(Wp, dim=1) * torch.linalg.norm(V, dim=1))
    torch.testing.assert_close(cos, torch.ones(6))  # and its direction is that of W + s·B A
    # m = ‖W‖ and B = 0 (DoRA's init): ΔW = 0
    d = DoRADelta(A, torch.zeros(6, 2), 0.5, torch.linalg.norm(W, dim=1), lambda: W)
    assert float(d.delta_weight().abs().max()) < 1e-6 and d.rank is None and d.shape == (6, 5)


def test_magnitude_and_direction_changes_known_answers():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(7, 4, generator=g, dtype=torch.float64)
    res = magnitude_direction(W, 0.5 * W)  # a pure rescaling: no direction change
    assert res["delta_d"] == pytest.approx(0, abs=1e-12)
    assert res["delta_m"] == pytest.approx(0.5 * float(torch.linalg.norm(W, dim=1).mean()))
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    res = magnitude_direction(W, W @ Q - W)  # a rotation of every row: no magnitude change
    assert res["delta_m"] == pytest.approx(0, abs=1e-12)
    want = float((1 - (W * (W @ Q)).sum(1) / torch.linalg.norm(W, dim=1) ** 2).mean())
    assert res["delta_d"] == pytest.approx(want)
    assert correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)


def test_dora_command_on_a_peft_dora_adapter(tmp_path):
    """`lorascope dora` on PEFT's DoRA adapter: ΔM, ΔD of (PEFT's merged W) against W, table and figure."""
    import subprocess
    import sys

    import pandas as pd
    from families_fixtures import llama_adapter

    from lorascope.base_model import open_base
    from lorascope.runs import load_run

    pytest.importorskip("peft")
    folder, ref = llama_adapter(tmp_path, use_dora=True)
    res = subprocess.run(
        [sys.executable, "-m", "lorascope.cli", "dora", str(folder), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "out" / "dora.csv").set_index("module")
    assert (tmp_path / "out" / "dora_scatter.png").is_file() and "correlation" in res.stdout
    ckpt = open_base(load_run(folder))
    for m, D in ref.items():
        W = ckpt.weight(m, tuple(D.shape))
        want = magnitude_direction(W, D)
        assert table.loc[m, "delta_m"] == pytest.approx(want["delta_m"], rel=1e-5)
        assert table.loc[m, "delta_d"] == pytest.approx(want["delta_d"], rel=1e-4)


def test_lorascope_dora_layer_computes_peft_dora_forward():
    """LoRALinear(dora=True) with PEFT's A, B and magnitude gives PEFT's DoRA output (same core)."""
    peft = pytest.importorskip("peft")
    from torch import nn

    from lorascope.lora import LoRALinear

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 7))
    pm = peft.get_peft_model(net, peft.LoraConfig(r=3, lora_alpha=6, target_modules=["0"], use_dora=True))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.add_(0.1 * torch.randn_like(p))
    peft_layer = pm.base_model.model[0]
    ours = LoRALinear(nn.Linear(10, 7), 3, 6, dora=True)
    with torch.no_grad():
        ours.base.load_state_dict(peft_layer.base_layer.state_dict())
        ours.A.copy_(peft_layer.lora_A["default"].weight)
        ours.B.copy_(peft_layer.lora_B["default"].weight)
        ours.magnitude.copy_(peft_layer.lora_magnitude_vector["default"].weight)
    x = torch.randn(4, 10)
    torch.testing.assert_close(ours(x), pm(x), rtol=1e-5, atol=1e-6)
    merged = pm.merge_and_unload()[0].weight
    torch.testing.assert_close(ours.dora_weight(), merged, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_lorascope_shifting_inits_are_peft_inits(init):
    """LoRALinear(init=pissa|olora) starts as PEFT's init: the same s·B0 A0 and the same residual W,
    and the layer computes the original map at step 0."""
    peft = pytest.importorskip("peft")
    from torch import nn

    from lorascope.lora import LoRALinear

    torch.manual_seed(0)
    base = nn.Linear(12, 9)
    W = base.weight.detach().clone()
    net = nn.Sequential(nn.Linear(12, 9))
    net[0].load_state_dict(base.state_dict())
    config = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["0"], init_lora_weights=init)
    layer = peft.get_peft_model(net, config).base_model.model[0]
    ours = LoRALinear(base, 3, 6, init=init)
    s = ours.scaling
    peft_product = s * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(s * ours.B @ ours.A, peft_product, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.base.weight, layer.base_layer.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.original_weight(), W, rtol=1e-5, atol=1e-5)
    x = torch.randn(4, 12)
    torch.testing.assert_close(ours(x), x @ W.T + base.bias, rtol=1e-5, atol=1e-5)


def test_dora_command_over_the_steps_of_an_own_dora_run(tiny_bert, topic_jsonl, tmp_path):
    """A lora.dora=true run: one row per (snapshot step, module), the last step once, and ΔM = the mean
    |m − ‖W‖| (DoRA's W′ rows have norm m exactly)."""
    import pandas as pd
    from conftest import tiny_config

    from lorascope.base_model import open_base
    from lorascope.families.dora_analysis import dora_frame
    from lorascope.runs import load_run
    from lorascope.train import train

    out = tmp_path / "r2-s0"
    train(tiny_config(tiny_bert, topic_jsonl, steps=4, lora={"dora": True}, train={"snapshot_every": 2}), out)
    run = load_run(out)
    frame = dora_frame(run)
    assert sorted(set(frame["step"])) == [2, 4] and len(frame) == 2 * len(run.adapters)
    last = frame[frame.step == 4].set_index("module")
    ckpt = open_base(run)
    for m, d in run.adapters.items():
        W = ckpt.weight(m, d.shape)
        want = float((d.magnitude - torch.linalg.norm(W, dim=1)).abs().mean())
        assert last.loc[m, "delta_m"] == pytest.approx(want, rel=1e-4)
    assert isinstance(frame, pd.DataFrame)
