"""The LoRA core on tiny randomly initialised BERT, GPT-2 (Conv1D) and Llama models."""

import math

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from lorascope.errors import LorascopeError
from lorascope.lora import LoRALinear, add_lora, count_trainable, factors, load_factors, lora_layers


def tiny_bert():
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
    )
    return BertModel(cfg), ["query", "value"]


def tiny_gpt2():
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2Model(cfg), ["c_attn", "c_proj"]


def tiny_llama():
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA: k/v are 32 -> 16, so in != out is covered
    )
    return LlamaForCausalLM(cfg), ["q_proj", "k_proj", "v_proj", "o_proj"]


MODELS = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}


def build(kind, rank=4, **kw):
    torch.manual_seed(0)
    model, targets = MODELS[kind]()
    model.eval()
    return model, targets


def output(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def perturb(wrapped, seed=1):
    """Give every B a nonzero value, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in wrapped.values():
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.1)


IDS = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind", MODELS)
def test_outputs_at_init_equal_base_exactly(kind):
    model, targets = build(kind)
    before = output(model, IDS)
    wrapped = add_lora(model, targets, rank=4, alpha=8)
    assert wrapped and all(isinstance(m, LoRALinear) for m in wrapped.values())
    assert torch.equal(output(model, IDS), before)


@pytest.mark.parametrize("kind", MODELS)
def test_merge_matches_unmerged_and_unmerge_restores_w(kind):
    model, targets = build(kind)
    wrapped = add_lora(model, targets, rank=4, alpha=8, init="gaussian")
    perturb(wrapped)
    W0 = {n: layer.base_weight().clone() for n, layer in wrapped.items()}
    unmerged = output(model, IDS)
    assert not torch.allclose(unmerged, output_of_base(kind, model, wrapped), atol=1e-4)
    for layer in wrapped.values():
        layer.merge()
    torch.testing.assert_close(output(model, IDS), unmerged, atol=1e-5, rtol=0)
    for n, layer in wrapped.items():
        torch.testing.assert_close(layer.base_weight(), W0[n] + layer.delta_weight(), atol=1e-6, rtol=0)
        layer.unmerge()
        torch.testing.assert_close(layer.base_weight(), W0[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(output(model, IDS), unmerged, atol=1e-5, rtol=0)


def output_of_base(kind, model, wrapped):
    """The model's output with every ΔW switched off (scaling 0), restored afterwards."""
    saved = {n: layer.scaling for n, layer in wrapped.items()}
    for layer in wrapped.values():
        layer.scaling = 0.0
    try:
        return output(model, IDS)
    finally:
        for n, layer in wrapped.items():
            layer.scaling = saved[n]


def test_merge_twice_or_unmerge_unmerged_is_an_error():
    layer = LoRALinear(nn.Linear(8, 6), rank=2, alpha=2)
    with pytest.raises(RuntimeError):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError):
        layer.merge()


def test_conv1d_delta_weight_is_the_change_of_the_linear_map():
    torch.manual_seed(0)
    conv = Conv1D(nf=12, nx=8)  # weight (in=8, out=12)
    layer = LoRALinear(conv, rank=3, alpha=6)
    perturb({"c": layer})
    with torch.no_grad():
        layer.A.add_(torch.randn_like(layer.A))
    x = torch.randn(5, 8)
    dW = layer.delta_weight()
    assert dW.shape == (12, 8) and layer.base_weight().shape == (12, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x) - conv(x), x @ dW.T, atol=1e-6, rtol=1e-5)
        # and W (out, in) is the base map itself
        torch.testing.assert_close(conv(x), x @ layer.base_weight().T + conv.bias, atol=1e-6, rtol=1e-5)


def test_linear_delta_weight_is_the_change_of_the_linear_map():
    torch.manual_seed(0)
    lin = nn.Linear(8, 12)
    layer = LoRALinear(lin, rank=3, alpha=6, init="gaussian")
    perturb({"l": layer})
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x) - lin(x), x @ layer.delta_weight().T, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", MODELS)
def test_only_factors_and_declared_modules_are_trainable(kind):
    model, targets = build(kind)
    rank = 3
    wrapped = add_lora(model, targets, rank=rank, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{f}" for n in wrapped for f in ("A", "B")}
    expected = sum(rank * (m.in_features + m.out_features) for m in wrapped.values())
    assert count_trainable(model) == expected


def test_declared_extra_modules_stay_trainable():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("body", nn.Linear(8, 8))
    model.add_module("classifier", nn.Linear(8, 3))
    wrapped = add_lora(model, ["body"], rank=2, alpha=4, trainable=["classifier"])
    assert count_trainable(model) == 2 * (8 + 8) + 8 * 3 + 3
    assert not wrapped["body"].base.weight.requires_grad


def test_targets_by_suffix_and_regex():
    model, _ = build("bert")
    by_regex = add_lora(model, r".*layer\.1\.attention\.self\.(query|key)", rank=2, alpha=2)
    assert sorted(by_regex) == [
        "encoder.layer.1.attention.self.key",
        "encoder.layer.1.attention.self.query",
    ]
    model, _ = build("bert")
    by_suffix = add_lora(model, ["attention.output.dense"], rank=2, alpha=2)
    assert sorted(by_suffix) == [f"encoder.layer.{i}.attention.output.dense" for i in range(2)]
    assert set(lora_layers(model)) == set(by_suffix)


@pytest.mark.parametrize("rank", [1, 4, 64])
def test_scaling_and_rslora(rank):
    lin = nn.Linear(8, 8)
    assert LoRALinear(lin, rank=rank, alpha=16).scaling == pytest.approx(16 / rank)
    assert LoRALinear(nn.Linear(8, 8), rank=rank, alpha=16, rslora=True).scaling == pytest.approx(
        16 / math.sqrt(rank)
    )


def test_inits():
    torch.manual_seed(0)
    n_in, r = 400, 16
    kaiming = LoRALinear(nn.Linear(n_in, 8), rank=r, alpha=1, init="kaiming")
    assert kaiming.A.abs().max() <= 1 / math.sqrt(n_in) + 1e-7  # U(-1/√in, 1/√in)
    gauss = LoRALinear(nn.Linear(n_in, 8), rank=r, alpha=1, init="gaussian")
    assert gauss.A.var().item() == pytest.approx(1 / r, rel=0.05)
    for layer in (kaiming, gauss):
        assert torch.count_nonzero(layer.B) == 0


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"targets": ["nonexistent_proj"]}, "nonexistent_proj"),
        ({"targets": []}, "targets is empty"),
        ({"targets": "query(", "rank": 2}, "query("),
        ({"rank": 0}, "rank must be a positive integer, got 0"),
        ({"rank": -3}, "got -3"),
        ({"init": "orthogonal"}, "unknown init 'orthogonal'"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(kwargs, needle):
    model, targets = build("bert")
    args = {"targets": targets, "rank": 2, "alpha": 4, **kwargs}
    with pytest.raises(ValueError) as e:
        add_lora(model, **args)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_factors_round_trip_into_a_fresh_model():
    model, targets = build("llama")
    wrapped = add_lora(model, targets, rank=4, alpha=8)
    perturb(wrapped)
    expected = output(model, IDS)
    saved = factors(wrapped)
    with torch.no_grad():  # a snapshot is a copy: later updates do not reach it
        wrapped["model.layers.0.self_attn.q_proj"].B.zero_()
    assert torch.count_nonzero(saved["model.layers.0.self_attn.q_proj.lora_B"]) > 0
    assert saved["model.layers.0.self_attn.k_proj.lora_A"].shape == (4, 32)
    assert saved["model.layers.0.self_attn.k_proj.lora_B"].shape == (16, 4)
    fresh, _ = build("llama")
    fresh_wrapped = add_lora(fresh, targets, rank=4, alpha=8)
    load_factors(fresh_wrapped, saved)
    assert torch.equal(output(fresh, IDS), expected)
    del saved["model.layers.0.self_attn.k_proj.lora_B"]
    with pytest.raises(ValueError, match="lack model.layers.0.self_attn.k_proj.lora_B"):
        load_factors(fresh_wrapped, saved)


def _shared_rows(A1: torch.Tensor, A2: torch.Tensor) -> int:
    """How many rows of A1 occur exactly as rows of A2."""
    return sum(bool((A2 == row).all(dim=1).any()) for row in A1)


def test_each_module_starts_from_its_own_seeded_a0():
    """A0 is drawn per (seed, rank, module): no rank or seed shares rows with another, the same
    (seed, rank) gives the same A0, and adding a target leaves the other modules' A0 unchanged."""
    starts = {}
    for rank, seed in [(2, 0), (4, 0), (4, 1)]:
        model, _ = build("bert")
        wrapped = add_lora(model, ["query", "value"], rank=rank, alpha=8, seed=seed)
        starts[(rank, seed)] = {n: layer.A.detach().clone() for n, layer in wrapped.items()}
    names = list(starts[(2, 0)])
    for a, b in [((2, 0), (4, 0)), ((4, 0), (4, 1)), ((2, 0), (4, 1))]:
        for n in names:
            assert _shared_rows(starts[a][n], starts[b][n]) == 0, (a, b, n)
    # A0 of different modules of one run are independent too
    assert _shared_rows(starts[(4, 0)][names[0]], starts[(4, 0)][names[2]]) == 0
    again = add_lora(build("bert")[0], ["query", "value"], rank=4, alpha=8, seed=1)
    assert all(torch.equal(again[n].A, starts[(4, 1)][n]) for n in names)
    wider = add_lora(build("bert")[0], ["query", "key", "value"], rank=4, alpha=8, seed=1)
    assert all(torch.equal(wider[n].A, starts[(4, 1)][n]) for n in names)


def test_seeded_init_leaves_the_global_random_stream_alone():
    model = build("bert")[0]
    state = torch.get_rng_state()
    add_lora(model, ["query", "value"], rank=2, alpha=8, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the head's init and dropout draw as before


def test_a_rank_above_a_targets_width_is_refused_unless_allowed(caplog):
    model, _ = tiny_llama()  # v_proj maps 32 -> 16
    with pytest.raises(
        LorascopeError, match=r"rank 24 exceeds min\(in, out\) of 2 target.*allow_rank_above_dim"
    ):
        add_lora(model, ["q_proj", "v_proj"], rank=24, alpha=8, seed=0)
    assert not lora_layers(model)  # refused before any factor was allocated
    with caplog.at_level("WARNING", logger="lorascope.lora"):
        add_lora(model, ["q_proj", "v_proj"], rank=24, alpha=8, seed=0, allow_rank_above_dim=True)
    assert "rank 24 exceeds min(in, out) of 2 target(s)" in caplog.text and "(16)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="lorascope.lora"):
        add_lora(tiny_llama()[0], ["q_proj", "v_proj"], rank=8, alpha=8, seed=0)
    assert "exceeds" not in caplog.text
