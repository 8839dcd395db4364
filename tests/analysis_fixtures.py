"""Synthetic runs and factors for the analysis tests: no model, no training, milliseconds."""

from __future__ import annotations

from pathlib import Path

import torch

from lorascope.run_format import adapter_metadata, save_adapter, write_config, write_summary

MODULES = [f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]


def planted_factors(rank: int, n_in: int, n_out: int, shared: torch.Tensor | None, seed: int):
    """A (rank, n_in) whose top row-space directions include `shared` (n_in, s), and B (n_out, rank)."""
    g = torch.Generator().manual_seed(seed)
    A = 0.05 * torch.randn(rank, n_in, generator=g)
    if shared is not None:
        s = shared.shape[1]
        A[:s] += 5.0 * shared.T  # strong, so these are the top singular directions
    B = torch.randn(n_out, rank, generator=g)
    return A, B


def make_run(
    root: Path,
    name: str,
    rank: int,
    *,
    modules=MODULES,
    n_in: int = 32,
    n_out: int = 24,
    shared: torch.Tensor | None = None,
    seed: int = 0,
    alpha: float = 16.0,
    summary: dict | None = None,
    with_init: bool = True,
) -> Path:
    """A run folder r{rank}-s{seed} like training writes it, with synthetic factors."""
    run = Path(root) / name
    tensors, init = {}, {}
    for k, m in enumerate(modules):
        A, B = planted_factors(rank, n_in, n_out, shared, seed * 100 + k)
        tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"] = A, B
        init[f"{m}.lora_A"], init[f"{m}.lora_B"] = A - 0.01 * (k + 1), torch.zeros_like(B)
    meta = adapter_metadata(
        rank=rank,
        alpha=alpha,
        scaling=alpha / rank,
        base_model="synthetic",
        targets=["query", "value"],
        init="gaussian",
        rslora=False,
    )
    save_adapter(run / "adapter.safetensors", tensors, meta)
    if with_init:
        save_adapter(run / "adapter_init.safetensors", init, meta)
    write_config(run, {"rank": rank, "seed": seed, "alpha": alpha})
    write_summary(run, summary or {"status": "complete", "val_accuracy": 0.9, "wall_time_s": 12.5})
    return run


def shared_directions(n_in: int = 32, s: int = 2, seed: int = 123) -> torch.Tensor:
    """(n_in, s) orthonormal directions to plant in two runs."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n_in, s, generator=g))[0]


def write_adapter(
    root, name, factors, *, base="synthetic", fingerprint=None, alpha=16.0, targets=("query", "value")
):
    """A complete lorascope run folder from {module: (A (r, in), B (out, r))}; s = α / r of the first
    module's rank."""
    from lorascope.run_format import adapter_metadata, save_adapter, write_summary

    rank = next(iter(factors.values()))[0].shape[0]
    tensors = {}
    for m, (A, B) in factors.items():
        tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"] = A.float().contiguous(), B.float().contiguous()
    meta = adapter_metadata(
        rank=rank, alpha=alpha, scaling=alpha / rank, base_model=base, targets=list(targets),
        init="gaussian", rslora=False, base_fingerprint=fingerprint,
    )  # fmt: skip
    run = root / name
    save_adapter(run / "adapter.safetensors", tensors, meta)
    write_summary(run, {"status": "complete"})
    return run
