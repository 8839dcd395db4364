"""Tiny base checkpoints on disk (sharded bf16 Llama, GPT-2) and adapters on them, for the W readers."""

from __future__ import annotations

from pathlib import Path

import torch

from lorascope import run_format
from lorascope.peft_format import export_peft

HIDDEN, LAYERS = 64, 3


def save_tiny_llama(folder: Path, seed: int = 0, shard: str = "40KB") -> dict[str, torch.Tensor]:
    """A random bf16 Llama (hidden 64, 3 layers, GQA 4 -> 2 heads: v_proj is 32 x 64) saved in several
    safetensors shards with an index. Returns its state dict as float32, keys as in the files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=48, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size=shard)
    return {k: v.float() for k, v in model.state_dict().items()}


def llama_modules(kinds=("q_proj", "v_proj")) -> list[str]:
    return [f"model.layers.{i}.self_attn.{p}" for i in range(LAYERS) for p in kinds]


def random_adapters(state: dict[str, torch.Tensor], modules, rank: int = 4, seed: int = 1, scaling=2.0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modules:
        n_out, n_in = state[m + ".weight"].shape
        A = torch.randn(rank, n_in, generator=g) / rank**0.5
        B = 0.05 * torch.randn(n_out, rank, generator=g)
        out[m] = run_format.Adapter(A, B, scaling)
    return out


def peft_folder(root: Path, base: Path, adapters: dict, name: str = "peft") -> Path:
    """A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) on `base`."""
    run = run_format.Run(path=root / name, adapters=adapters, meta={"base_model": str(base), "rslora": False})
    return export_peft(run, root / name)


def lorascope_run(root: Path, base: str, adapters: dict, state=None, name: str = "r4-s0") -> Path:
    """A lorascope run folder on `base` with the base-weight fingerprint of `state` (if given), s = 2
    (`factories.lora_run`)."""
    from factories import lora_run

    fingerprint = {m: run_format.base_fingerprint(state[m + ".weight"]) for m in adapters} if state else {}
    rank = next(iter(adapters.values())).rank
    factors = {m: (a.A, a.B) for m, a in adapters.items()}
    targets = ["q_proj", "v_proj"]
    alpha = 2.0 * rank
    return lora_run(root, name, factors, alpha=alpha, base=base, fingerprint=fingerprint, targets=targets)
