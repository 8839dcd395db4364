"""Module names: one home (lorascope.names), and adapters of transformers ≥ 5 models whose in-memory
names differ from their checkpoint keys (ViT, LLaVA, GPT-NeoX) matched through transformers' own
key mapping: amplification and intruders read the right W, old- and new-name adapters compare."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorascope import analysis as la
from lorascope import names
from lorascope.base_model import Checkpoint
from lorascope.cli import main
from lorascope.errors import LorascopeError

pytest.importorskip("peft")


# ----------------------------------------------------------------------------- names, once


def test_layers_and_modules_are_parsed_in_one_place():
    mods = [f"model.layers.{i}.self_attn.{p}" for i in range(4) for p in ("q_proj", "v_proj")]
    assert names.layers_of(mods, "1,3-99") == {1, 3}
    assert names.layers_of(mods, None) is None
    assert names.selected(mods, "v_proj", "0-1") == [
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    assert names.selected(mods) == mods
    with pytest.raises(LorascopeError, match="no layer 7"):
        names.selected(mods, None, "7")
    assert names.shared_modules([mods, mods[2:], reversed(mods[:5])]) == mods[2:5]
    assert names.shared_modules([]) == []
    assert names.match_modules(["a", "b"], ["b", "c"]) == (["b"], ["a"], ["c"])
    # the public API keeps its names, re-exported from their one home
    assert la.parse_layers is names.parse_layers and la.select_modules is names.select_modules
    from lorascope.analysis import modules

    assert modules.layer_index is names.layer_index


def test_dotted_suffix_match_is_exact_unique_or_refused():
    keys = ["encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"]
    assert names.match_module(keys, "bert.encoder.layer.0.attention.self.query") == keys[0]
    with pytest.raises(LorascopeError, match="ambiguous"):
        names.match_module(keys, "attention.self.query")
    with pytest.raises(LorascopeError, match="not in"):
        names.match_module(keys, "encoder.layer.2.attention.self.query")


# ----------------------------------------------------------------------------- tiny models, saved


def _vit(folder):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=16,
        patch_size=8,
    )  # fmt: skip
    ViTModel(cfg).save_pretrained(folder)
    return ["q_proj", "v_proj", "fc1"]


def _llava(folder):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8,
    )  # fmt: skip
    text = LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=64,
    )  # fmt: skip
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=63)
    LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    return ["q_proj", "o_proj"]


def _neox(folder):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, vocab_size=64,
    )  # fmt: skip
    GPTNeoXForCausalLM(cfg).save_pretrained(folder)
    return ["query_key_value", "lm_head"]


MODELS = {"vit": _vit, "llava": _llava, "gpt_neox": _neox}


def _adapter(base, targets, folder, seed=1):
    """A PEFT LoRA adapter made by get_peft_model on the model loaded from `base`, saved to `folder`;
    returns the in-memory model (names as PEFT saves them)."""
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    arch = json.loads((base / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(folder)
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(base)
    return model


def _checkpoint_tensors(base):
    with safe_open(str(base / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module", params=list(MODELS))
def saved(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    targets = MODELS[request.param](root / "base")
    model = _adapter(root / "base", targets, root / "adapter")
    return request.param, root, model


def test_in_memory_names_differ_from_the_checkpoint_keys(saved):
    """The premise: PEFT's names (the model's) are not the keys save_pretrained wrote."""
    kind, root, model = saved
    from lorascope.runs import load_run

    keys = set(_checkpoint_tensors(root / "base"))
    adapted = list(load_run(root / "adapter").adapters)
    assert adapted and any(m + ".weight" not in keys for m in adapted)
    with pytest.raises(LorascopeError, match="not in"):  # today's dotted-suffix match alone fails
        for m in adapted:
            names.match_module({k.removesuffix(".weight") for k in keys}, m)


def test_amplification_and_intruders_read_the_right_w(saved, tmp_path, capsys, caplog):
    kind, root, model = saved
    from lorascope.runs import load_run

    adapted = list(load_run(root / "adapter").adapters)
    out = tmp_path / "amp"
    with caplog.at_level(logging.INFO, logger="lorascope"):
        assert main(["amplification", str(root / "adapter"), "--k", "2", "--out", str(out)]) == 0
    table = pd.read_csv(out / "amplification.csv", index_col="module")
    assert list(table.index) == adapted
    stored = _checkpoint_tensors(root / "base")
    by_norm = {round(float(t.float().norm()), 5): k for k, t in stored.items() if t.ndim == 2}
    for m in adapted:
        W = model.get_submodule(m).weight.detach()  # the in-memory W of the module (tied lm_head too)
        assert table.loc[m, "w_norm"] == pytest.approx(float(W.norm()), rel=1e-6)
        key = Checkpoint(root / "base").key(m)
        assert torch.equal(stored[key].float(), W.float())  # the key found holds the module's W
        assert by_norm[round(float(W.norm()), 5)] == key
    mapped = [r.getMessage() for r in caplog.records if "transformers' key mapping" in r.getMessage()]
    assert mapped  # -v says how a module was matched
    out2 = tmp_path / "intr"
    assert main(["intruders", str(root / "adapter"), "--k", "2", "--out", str(out2)]) == 0
    intruders = pd.read_csv(out2 / "intruders.csv", index_col="module")
    m = adapted[0]
    W = stored[Checkpoint(root / "base").key(m)].float()
    ref = la.intruder_dimensions(W, load_run(root / "adapter").adapters[m], k=2)
    assert intruders.loc[m, "count"] == ref["count"]


def _old_name_copy(root, kind):
    """The adapter saved under the checkpoint's key names (as PEFT with transformers < 5 wrote it)."""
    base = Checkpoint(root / "base")
    tensors = load_file(str(root / "adapter" / "adapter_model.safetensors"))
    old = root / "adapter-old-names"
    old.mkdir(exist_ok=True)
    renamed = {}
    for key, t in tensors.items():
        if ".lora_" not in key:  # a saved embedding layer (GPT-NeoX's lm_head is tied): as it was
            renamed[key] = t
            continue
        module, tail = key.removeprefix("base_model.model.").split(".lora_", 1)
        renamed[f"base_model.model.{base.key(module).removesuffix('.weight')}.lora_{tail}"] = t
    assert set(renamed) != set(tensors)
    save_file(renamed, str(old / "adapter_model.safetensors"))
    (old / "adapter_config.json").write_text((root / "adapter" / "adapter_config.json").read_text())
    return old


def test_old_and_new_name_adapters_of_one_model_compare(saved, tmp_path, capsys):
    kind, root, model = saved
    old = _old_name_copy(root, kind)
    assert main(["compare", str(root / "adapter"), str(old), "--k", "2", "--out", str(tmp_path / "map")]) == 0
    matrix = pd.read_csv(tmp_path / "map" / "map_dW-right_matrix.csv", index_col=0)
    assert matrix.to_numpy().min() == pytest.approx(1.0, abs=1e-6)  # one adapter under two names
    out = tmp_path / "sim"
    assert main(["similarity", str(root / "adapter"), str(old), "--out", str(out)]) == 0
    phi = pd.read_csv(out / "phi_A_summary.csv", index_col=0)
    assert phi["phi_11"].to_numpy() == pytest.approx(1.0, abs=1e-6)
    # the old-name adapter reads the same W as the new-name one
    for folder, where in ((old, "old"), (root / "adapter", "new")):
        assert main(["amplification", str(folder), "--k", "2", "--out", str(tmp_path / where)]) == 0
    a = pd.read_csv(tmp_path / "old" / "amplification.csv")["w_norm"]
    b = pd.read_csv(tmp_path / "new" / "amplification.csv")["w_norm"]
    assert sorted(a) == pytest.approx(sorted(b), rel=1e-12)


def test_a_module_that_transformers_converts_rather_than_renames_is_refused_in_one_line(tmp_path, capsys):
    """DINOv2 with SwiGLU stores gate_proj and up_proj fused in mlp.weights_in: W is no stored tensor."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16,
        patch_size=8, use_swiglu_ffn=True,
    )  # fmt: skip
    Dinov2Model(cfg).save_pretrained(tmp_path / "base")
    _adapter(tmp_path / "base", ["down_proj", "up_proj"], tmp_path / "adapter")
    checkpoint = Checkpoint(tmp_path / "base")
    assert checkpoint.key("encoder.layer.0.mlp.down_proj") == "encoder.layer.0.mlp.weights_out.weight"
    capsys.readouterr()  # what saving printed
    assert main(["amplification", str(tmp_path / "adapter"), "--modules", "up_proj"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mlp.weights_in.weight by a conversion, not a rename" in err


# ------------------------------------------------------------------ rank/alpha patterns by PEFT version

RANK_PATTERN = {"layers.0.self_attn.q_proj": 8}
ALPHA_PATTERN = {"q_proj": 32}


def _pattern_adapter(folder, peft_version):
    """Layer 0's q_proj has rank 8 (rank_pattern); α = 32 for every q_proj (alpha_pattern); r = α = 4."""
    folder.mkdir()
    config = {
        "peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none",
        "rank_pattern": RANK_PATTERN, "alpha_pattern": ALPHA_PATTERN,
    }  # fmt: skip
    if peft_version is not None:
        config["peft_version"] = peft_version
    (folder / "adapter_config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer, r in ((0, 8), (1, 4)):
        stem = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        tensors[f"{stem}.lora_A.weight"] = torch.randn(r, 16, generator=g)
        tensors[f"{stem}.lora_B.weight"] = torch.randn(16, r, generator=g)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize(
    "peft_version,alpha_layer0",
    [
        ("0.13.2", 4.0),
        ("0.12.0", 4.0),
        ("0.13.0.dev0", 4.0),
        ("0.14.0", 32.0),
        ("0.17.1@abc", 32.0),
        (None, 32.0),
    ],
)
def test_overlapping_patterns_resolve_as_the_saving_peft_did(tmp_path, peft_version, alpha_layer0):
    """PEFT ≤ 0.13.2 looked r and α up under the first key of rank_pattern + alpha_pattern that
    matched: for layer 0 that is the rank key, so α fell back to lora_alpha (PEFT issue #2194)."""
    from lorascope.runs import load_run

    run = load_run(_pattern_adapter(tmp_path / "adapter", peft_version))
    q0, q1 = (run.adapters[f"model.layers.{i}.self_attn.q_proj"] for i in (0, 1))
    assert q0.rank == 8 and q0.scaling == pytest.approx(alpha_layer0 / 8)
    assert q1.rank == 4 and q1.scaling == pytest.approx(32 / 4)  # one key matches: both rules agree


def test_todays_rule_is_the_installed_peft_rule():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=32,
    )  # fmt: skip
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["q_proj"], rank_pattern=RANK_PATTERN, alpha_pattern=ALPHA_PATTERN
    )
    model = get_peft_model(LlamaForCausalLM(cfg), config)
    q0 = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q0.r["default"] == 8 and q0.scaling["default"] == pytest.approx(32 / 8)
    from lorascope.peft_format import pattern_keys

    module = "model.layers.0.self_attn.q_proj"
    assert pattern_keys(RANK_PATTERN, ALPHA_PATTERN, module) == ("layers.0.self_attn.q_proj", "q_proj")
    assert pattern_keys(RANK_PATTERN, ALPHA_PATTERN, module, "0.13.2") == ("layers.0.self_attn.q_proj", None)
