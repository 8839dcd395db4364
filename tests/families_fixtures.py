"""Tiny PEFT adapters of every family, made by PEFT itself, with their dense reference ΔW.

Each builder saves a base model and an adapter (factors perturbed so that ΔW ≠ 0) under a folder
and returns (adapter folder, {module: ΔW reference (out, in)}): the reference is PEFT's merged
weight (merge_and_unload) minus the original W, in lorascope's (out, in) layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

SEED = 0


def _perturb(model, scale=0.05):
    """A few random steps' worth of change on every LoRA parameter (B too, so ΔW ≠ 0)."""
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))


def _llama(folder: Path, **sizes):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, **sizes,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return LlamaForCausalLM.from_pretrained(folder)


def _reference(pm, base_state: dict, names: dict[str, str], transform=lambda m, d: d) -> dict:
    merged = pm.merge_and_unload().state_dict()
    return {m: transform(m, (merged[k].double() - base_state[k].double())) for m, k in names.items()}


def llama_adapter(tmp: Path, targets=("q_proj", "v_proj"), **lora) -> tuple[Path, dict]:
    """A Llama adapter with LoraConfig(**lora) (use_dora=True, init_lora_weights="pissa", ...)."""
    from peft import LoraConfig, get_peft_model

    base = tmp / "base"
    model = _llama(base)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), **lora))
    _perturb(pm)
    out = tmp / "adapter"
    pm.save_pretrained(out)
    names = {
        n.removeprefix("base_model.model."): n.removeprefix("base_model.model.") + ".weight"
        for n, mod in pm.named_modules()
        if hasattr(mod, "lora_A") and n.rsplit(".", 1)[-1] in targets
    }
    return out, _reference(pm, state, names)  # the embedding's ΔW is (vocab, dim), as stored


class ConvNet(nn.Module):
    """A patch embedding (Conv2d 3×3) and a Conv1d, as a vision model's first layers."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 3)
        self.conv1 = nn.Conv1d(4, 6, 2)

    def forward(self, x):
        return self.patch(x)


def conv_adapter(tmp: Path) -> tuple[Path, dict]:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    model = ConvNet()
    base = tmp / "convbase"
    base.mkdir(parents=True)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, base / "model.safetensors")
    pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["patch", "conv1"]))
    _perturb(pm)
    out = tmp / "adapter"
    pm.save_pretrained(out)
    _set_base(out, base)
    names = {"patch": "patch.weight", "conv1": "conv1.weight"}
    return out, _reference(pm, state, names, lambda m, d: d.reshape(d.shape[0], -1))


def _set_base(adapter: Path, base: Path) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = str(base)
    path.write_text(json.dumps(config))


class Experts(nn.Module):
    """3-D expert weights as transformers ≥ 5 keeps them in memory: gate_up (E, 2I, H), down (E, H, I)."""

    def __init__(self, n=3, hidden=16, inter=12):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(n, 2 * inter, hidden) / 4)
        self.down_proj = nn.Parameter(torch.randn(n, hidden, inter) / 4)

    def forward(self, x):  # every expert, summed: enough for PEFT to wrap the parameters
        h = torch.einsum("eoi,bi->beo", self.gate_up_proj, x)
        return torch.einsum("eoi,bei->bo", self.down_proj, h[..., : self.down_proj.shape[2]])


class MoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.experts = Experts()

    def forward(self, x):
        return self.experts(x)


def moe_adapter(tmp: Path) -> tuple[Path, dict]:
    """3-D experts (E, 2I, H) and (E, H, I) through target_parameters, one ΔW per expert."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    model = MoE()
    base = tmp / "moebase"
    base.mkdir(parents=True)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, base / "model.safetensors")
    params = ["experts.gate_up_proj", "experts.down_proj"]
    pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=[], target_parameters=params))
    _perturb(pm)
    out = tmp / "adapter"
    pm.save_pretrained(out)
    _set_base(out, base)
    merged = pm.merge_and_unload().state_dict()
    ref = {}
    for p in ("gate_up_proj", "down_proj"):
        d = merged[f"experts.{p}"].double() - state[f"experts.{p}"].double()
        for e in range(d.shape[0]):
            ref[f"experts.{e}.{p}"] = d[e]
    return out, ref
