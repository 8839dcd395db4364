"""PEFT adapter folders: lorascope's ΔW equals PEFT's own, exports load in PEFT with equal outputs,
and adapters whose ΔW is not s·B·A are refused with the reason."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from lorascope import lora, run_format, runs  # noqa: E402
from lorascope.errors import LorascopeError  # noqa: E402
from lorascope.peft_format import export_peft, load_peft_run, pattern_key  # noqa: E402

VOCAB = 64


def make_model(kind, seed=0):
    """A tiny random base model; the same seed gives the same weights."""
    torch.manual_seed(seed)
    if kind == "bert":
        cfg = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
        model = transformers.BertModel(cfg)
    elif kind == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
        )
        model = transformers.GPT2Model(cfg)
    else:  # GQA: k_proj/v_proj are 32 -> 16
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
        model = transformers.LlamaModel(cfg)
    return model.eval()


TARGETS = {
    "bert": ["query", "value"],
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
# (model, rslora, rank_pattern, alpha_pattern): patterns by suffix and by longer path, as users write them.
CASES = [
    ("bert", False, {"layer.1.attention.self.query": 2}, {"value": 12}),
    ("bert", True, {}, {}),
    ("gpt2", False, {"h.0.attn.c_proj": 2}, {"mlp.c_proj": 3}),
    ("gpt2", True, {}, {"c_attn": 5}),
    ("llama", False, {"k_proj": 2}, {"layers.1.self_attn.v_proj": 5}),
    ("llama", True, {"o_proj": 6}, {"q_proj": 4}),
]


def hidden(model, ids):
    return model(input_ids=ids).last_hidden_state


def ids(seed=1):
    return torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(seed))


def train_peft(kind, rslora, rank_pattern, alpha_pattern, folder, steps=3):
    """Train a PEFT LoRA a few steps on random data (so B != 0) and save it; returns the PeftModel."""
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS[kind],
        use_rslora=rslora,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        fan_in_fan_out=kind == "gpt2",
    )
    pm = get_peft_model(make_model(kind), config)
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        loss = hidden(pm, ids(step)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    pm.save_pretrained(folder)
    return pm.eval()


def peft_deltas(pm):
    """PEFT's get_delta_weight per module, as (out, in)."""
    out = {}
    for name, m in pm.named_modules():
        if isinstance(m, peft.tuners.lora.LoraLayer) and "default" in m.lora_A:
            d = m.get_delta_weight("default")
            out[name.removeprefix("base_model.model.")] = d.T if m.fan_in_fan_out else d
    return out


def assert_same_deltas(run, expected):
    assert set(run.adapters) == set(expected)
    for m, d in expected.items():
        got = run.adapters[m].delta_weight()
        assert got.shape == d.shape, m
        torch.testing.assert_close(got, d.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind,rslora,rank_pattern,alpha_pattern", CASES)
def test_delta_weight_equals_peft(tmp_path, kind, rslora, rank_pattern, alpha_pattern):
    pm = train_peft(kind, rslora, rank_pattern, alpha_pattern, tmp_path / "peft")
    expected = peft_deltas(pm)
    assert all(d.abs().max() > 0 for d in expected.values())  # trained: B != 0
    run = runs.load_run(tmp_path / "peft")
    assert run.kind == "peft" and run.status == "complete" and run.init is None
    assert_same_deltas(run, expected)
    # The patterns took effect, so a wrong pattern match would have shown above.
    for m, a in run.adapters.items():
        layer = pm.base_model.model.get_submodule(m)
        assert a.rank == layer.r["default"] and a.scaling == pytest.approx(
            layer.scaling["default"], rel=1e-12
        )
    assert run.meta["rank"] == max(a.rank for a in run.adapters.values())
    assert run.meta["rslora"] is rslora and run.meta["peft_type"] == "LORA"
    assert run.meta["fan_in_fan_out"] is (kind == "gpt2")
    assert run.config["r"] == 4 and run.meta["targets"] == run.config["target_modules"]


def test_old_key_names_with_adapter_name_load_the_same(tmp_path):
    pm = train_peft("llama", False, {"k_proj": 2}, {}, tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    (old / "adapter_config.json").write_text((tmp_path / "new" / "adapter_config.json").read_text())
    tensors = load_file(tmp_path / "new" / "adapter_model.safetensors")
    renamed = {
        k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        ): v
        for k, v in tensors.items()
    }
    assert renamed.keys() != tensors.keys()
    save_file(renamed, old / "adapter_model.safetensors")
    assert_same_deltas(runs.load_run(old), peft_deltas(pm))


def test_pattern_key_follows_peft():
    from peft.utils.other import get_pattern_key

    patterns = {"layer.1.attention.self.query": 2, "value": 3, "h.0.attn.c_proj": 1}
    for name in [
        "encoder.layer.1.attention.self.query",
        "encoder.layer.11.attention.self.query",
        "encoder.layer.0.attention.self.value",
        "h.0.attn.c_proj",
        "h.0.mlp.c_proj",
        "value",
    ]:
        ours = pattern_key(patterns, name)
        assert (ours or name) == get_pattern_key(patterns.keys(), name)


def make_lorascope_run(kind, run_dir, rslora=False):
    """add_lora on a tiny model, perturbed A and B (k_proj / second target at another rank and alpha)."""
    model = make_model(kind)
    first, second = TARGETS[kind][:-1], TARGETS[kind][-1:]
    wrapped = lora.add_lora(model, first, rank=4, alpha=8, rslora=rslora)
    extra = lora.add_lora(model, second, rank=2, alpha=6, rslora=rslora)
    wrapped |= extra
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in wrapped.values():
            layer.B.normal_(0, 0.2, generator=g)
            layer.A.add_(0.1 * torch.randn(layer.A.shape, generator=g))
    meta = run_format.adapter_metadata(
        rank=4,
        alpha=8,
        scaling=lora.lora_scaling(8, 4, rslora),
        base_model=f"tiny-{kind}",
        targets=TARGETS[kind],
        init="kaiming",
        rslora=rslora,
        module_scaling={m: layer.scaling for m, layer in extra.items()},
        module_rank={m: 2 for m in extra},
    )
    run_format.save_adapter(run_dir / run_format.ADAPTER_FILE, lora.factors(wrapped), meta)
    run_format.write_summary(run_dir, {"status": "complete"})
    return model.eval(), runs.load_run(run_dir)


@pytest.mark.parametrize("kind,rslora", [("bert", False), ("gpt2", False), ("llama", False), ("llama", True)])
def test_export_loads_in_peft_with_same_outputs(tmp_path, kind, rslora):
    model, run = make_lorascope_run(kind, tmp_path / "run", rslora)
    out = export_peft(run, tmp_path / "peft", fan_in_fan_out=kind == "gpt2" or None)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == f"tiny-{kind}"
    assert config["rank_pattern"] and config["use_rslora"] is rslora
    pm = PeftModel.from_pretrained(make_model(kind), out).eval()
    x = ids(7)
    with torch.no_grad():
        want, got, base = hidden(model, x), hidden(pm, x), hidden(make_model(kind), x)
    assert (want - base).abs().max() > 1e-3  # the adapter changes the outputs
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_round_trip_peft_to_lorascope_to_peft(tmp_path):
    pm = train_peft("gpt2", False, {"h.0.attn.c_proj": 2}, {"mlp.c_proj": 3}, tmp_path / "a")
    expected = peft_deltas(pm)
    run = runs.load_run(tmp_path / "a")
    export_peft(run, tmp_path / "b")  # fan_in_fan_out comes from the run's meta
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    assert_same_deltas(runs.load_run(tmp_path / "b"), expected)
    reloaded = PeftModel.from_pretrained(make_model("gpt2"), tmp_path / "b")
    for m, d in peft_deltas(reloaded).items():
        torch.testing.assert_close(d, expected[m], atol=1e-6, rtol=0)


def test_export_refuses_non_empty_folder_unless_overwrite(tmp_path):
    _, run = make_lorascope_run("bert", tmp_path / "run")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(LorascopeError, match="not empty"):
        export_peft(run, tmp_path / "out")
    export_peft(run, tmp_path / "out", overwrite=True)
    assert set(runs.load_run(tmp_path / "out").adapters) == set(run.adapters)


def write_peft_folder(folder, weights="safetensors", **config):
    """A hand-written PEFT folder: a config with the given fields and one valid pair of factors."""
    folder.mkdir()
    base = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"], "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps(base | config))
    tensors = {
        "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight": torch.randn(2, 8),
        "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight": torch.randn(8, 2),
    }
    if weights == "safetensors":
        save_file(tensors, folder / "adapter_model.safetensors")
    else:
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return folder


@pytest.mark.parametrize(
    "config,weights,reason",
    [
        ({"use_dora": True}, "safetensors", "DoRA"),
        ({"init_lora_weights": "pissa_niter_4"}, "safetensors", "PiSSA.*randomized.*cannot be recomputed"),
        ({"init_lora_weights": "olora"}, "safetensors", "OLoRA"),
        ({"init_lora_weights": True, "loftq_config": {"loftq_bits": 4}}, "safetensors", "LoftQ"),
        ({"peft_type": "IA3"}, "safetensors", "LoRA adapters only"),
        ({"r": 4}, "safetensors", "rank 2 but adapter_config.json says r=4"),
        ({}, "bin", "pickle.*convert it to adapter_model.safetensors"),
    ],
)
def test_unsupported_folders_are_refused_with_the_reason(tmp_path, config, weights, reason):
    folder = write_peft_folder(tmp_path / "adapter", weights, **config)
    with pytest.raises(LorascopeError, match=reason) as e:
        runs.load_run(folder)
    assert "\n" not in str(e.value) and str(folder) in str(e.value)


def test_embedding_lora_and_bias_settings(tmp_path, caplog):
    folder = write_peft_folder(tmp_path / "bias", bias="all")
    with caplog.at_level(logging.WARNING, logger="lorascope.peft_format"):
        run = load_peft_run(folder)
    assert "bias terms are ignored" in caplog.text
    assert run.adapters["encoder.layer.0.attention.self.query"].scaling == 2.0
    emb = write_peft_folder(tmp_path / "emb")
    save_file(
        {
            "base_model.model.embeddings.word_embeddings.lora_embedding_A": torch.randn(2, 8),
            "base_model.model.embeddings.word_embeddings.lora_embedding_B": torch.randn(8, 2),
        },
        emb / "adapter_model.safetensors",
    )
    delta = load_peft_run(emb).adapters["embeddings.word_embeddings"]  # read as (vocab, dim): issue 19
    assert delta.delta_weight().shape == (8, 8)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lorascope.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_cli_similarity_of_peft_folder_and_lorascope_run(tmp_path):
    import pandas as pd

    train_peft("bert", False, {}, {}, tmp_path / "peft")
    _, run = make_lorascope_run("bert", tmp_path / "run")
    res = run_cli("similarity", tmp_path / "peft", tmp_path / "run", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "out" / "phi_A.csv")  # every φ value: module, i, j, phi
    assert set(table["module"]) == set(run.adapters)  # every module matched by name across formats
    from lorascope import analysis as la
    from lorascope.runs import load_run

    peft = load_run(tmp_path / "peft")
    for m in run.adapters:
        got = table[table.module == m].pivot(index="i", columns="j", values="phi").to_numpy()
        want = la.subspace_similarity(peft.adapters[m].A, run.adapters[m].A)
        np.testing.assert_allclose(got, want, atol=1e-9)


def test_cli_unsupported_peft_folder_exits_2_with_one_line(tmp_path):
    folder = write_peft_folder(tmp_path / "dora", use_dora=True)
    res = run_cli("similarity", folder, folder, "--out", tmp_path / "out")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "DoRA" in res.stderr
    assert "Traceback" not in res.stderr
