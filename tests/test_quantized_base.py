"""QLoRA bases: W from a bitsandbytes 4-bit (nf4/fp4, double quantization on/off) or 8-bit checkpoint
saved by transformers, dequantized tensor by tensor; --base DIR reads an unquantized copy instead."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from weights_fixtures import llama_modules, peft_folder, random_adapters, save_tiny_llama

from lorascope.base_model import Checkpoint
from lorascope.cli import main

bnb = pytest.importorskip("bitsandbytes")

QUANTIZATIONS = {
    "nf4-double": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False),
    "fp4-double": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False),
    "int8": dict(load_in_8bit=True),
}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("qlora")
    state = save_tiny_llama(root / "llama")
    return root, state


@pytest.fixture(scope="module", params=list(QUANTIZATIONS))
def quantized(request, llama):
    """The tiny Llama loaded with a BitsAndBytesConfig on the CPU and saved as transformers saves it."""
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    root, state = llama
    folder = root / f"llama-{request.param}"
    if not folder.is_dir():
        config = BitsAndBytesConfig(**QUANTIZATIONS[request.param])
        model = LlamaForCausalLM.from_pretrained(root / "llama", quantization_config=config, device_map="cpu")
        model.save_pretrained(folder)
    return request.param, folder


def _bitsandbytes_w(folder, module):
    """W as bitsandbytes dequantizes the stored tensors, loaded back by transformers."""
    from transformers import LlamaForCausalLM

    linear = LlamaForCausalLM.from_pretrained(folder, device_map="cpu").get_submodule(module)
    if hasattr(linear.weight, "quant_state"):
        return bnb.functional.dequantize_4bit(linear.weight.data, linear.weight.quant_state)
    return bnb.functional.int8_vectorwise_dequant(linear.weight.data, linear.weight.SCB)


def test_w_dequantized_equals_bitsandbytes_dequantization(quantized, llama):
    kind, folder = quantized
    _, state = llama
    checkpoint = Checkpoint(folder)
    stored = [k for k in checkpoint.files if k.startswith("model.layers.0.self_attn.q_proj")]
    assert len(stored) > 1  # the packed weight and its quantization state: not a plain W
    assert checkpoint.quantization.startswith("bitsandbytes " + ("8-bit" if kind == "int8" else "4-bit"))
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.2.self_attn.v_proj"):
        W = checkpoint.weight(module, shape=tuple(state[module + ".weight"].shape), dtype=None)
        assert torch.equal(W, _bitsandbytes_w(folder, module))
        original = state[module + ".weight"]
        error = float((W.float() - original).norm() / original.norm())
        assert 0 < error < (0.02 if kind == "int8" else 0.25)  # quantized W, near the original


def test_amplification_on_a_quantized_base_says_so_and_base_dir_reads_the_original(
    quantized, llama, tmp_path, capsys
):
    kind, folder = quantized
    root, state = llama
    modules = llama_modules()
    adapter = peft_folder(tmp_path, folder, random_adapters(state, modules), name="qlora")
    out = tmp_path / "amp"
    assert main(["amplification", str(adapter), "--k", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "note: W is dequantized from bitsandbytes" in printed.out
    assert "(2048, 1)" not in printed.out + printed.err
    table = pd.read_csv(out / "amplification.csv", index_col="module")
    checkpoint = Checkpoint(folder)
    for m in modules:
        assert table.loc[m, "w_norm"] == pytest.approx(float(checkpoint.weight(m).norm()), rel=1e-6)
    assert (
        main(["amplification", str(adapter), "--k", "2", "--base", str(root / "llama"), "--out", str(out)])
        == 0
    )
    assert "dequantized" not in capsys.readouterr().out
    table = pd.read_csv(out / "amplification.csv", index_col="module")
    for m in modules:
        assert table.loc[m, "w_norm"] == pytest.approx(float(state[m + ".weight"].norm()), rel=1e-6)
    assert main(["intruders", str(adapter), "--k", "2", "--out", str(tmp_path / "intr")]) == 0
    assert "note: W is dequantized" in capsys.readouterr().out


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorascope: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "quantization,tensors,reason",
    [
        (
            {"quant_method": "gptq", "bits": 4},
            {"weight": torch.zeros(2048, 1, dtype=torch.uint8)},
            "gptq 4-bit",
        ),
        (
            {"quant_method": "bitsandbytes", "load_in_4bit": True},
            {"weight": torch.zeros(2048, 1, dtype=torch.uint8)},
            "without the quantization state",
        ),
        (
            {"quant_method": "bitsandbytes", "load_in_4bit": True},
            {
                "weight": torch.zeros(2048, 1, dtype=torch.uint8),
                "weight.quant_state.bitsandbytes__nf4": torch.zeros(3, dtype=torch.uint8),
            },
            "not a bitsandbytes 4-bit weight",
        ),
    ],
)
def test_a_quantized_checkpoint_of_unknown_format_is_refused_in_one_line(
    tmp_path, capsys, quantization, tensors, reason
):
    base = tmp_path / "base"
    base.mkdir()
    module = "model.layers.0.self_attn.q_proj"
    save_file({f"{module}.{k}": t for k, t in tensors.items()}, str(base / "model.safetensors"))
    config = {"model_type": "llama", "quantization_config": quantization}
    (base / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)
    from lorascope import run_format

    adapter = peft_folder(
        tmp_path,
        base,
        {module: run_format.Adapter(torch.randn(2, 64, generator=g), torch.randn(64, 2, generator=g), 1.0)},
    )
    err = _error(capsys, ["amplification", str(adapter), "--k", "1"])
    assert reason in err and "(2048, 1)" not in err
