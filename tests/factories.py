"""The synthetic-run factory of the tests: LoRA runs, full fine-tuning runs and PEFT folders, on disk
as training and PEFT write them, from factors or dense updates the test chooses (no model, no training).

    factors = random_factors({m: (out, in) for m in MODULES}, rank=4, seed=0)
    lora_run(tmp, "r4-s0", factors, init=..., snapshots={10: factors_at_10})     # a lorascope LoRA run
    full_run(tmp, "full-s0", {m: ΔW}, snapshots={10: {m: ΔW_10}})                  # a full fine-tuning run
    peft_folder(tmp, "peft", factors)                                              # a PEFT LoRA folder

Each returns the folder; `lorascope.runs.load_run` reads all three.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lorascope import run_format
from lorascope.peft_format import export_peft

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # {module: (A (r, in), B (out, r))}


def random_factors(
    shapes: dict[str, tuple[int, int]], rank: int, seed: int = 0, b_scale: float = 1.0
) -> Factors:
    """{module: (A (rank, in), B (out, rank))} of seeded Gaussians, for modules of (out, in) `shapes`."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, (n_out, n_in) in shapes.items():
        A = torch.randn(rank, n_in, generator=g) / rank**0.5
        B = b_scale * torch.randn(n_out, rank, generator=g)
        out[m] = (A, B)
    return out


def _lora_meta(rank: int, alpha: float, base: str, fingerprint: dict | None, targets) -> dict:
    return run_format.adapter_metadata(
        rank=rank, alpha=alpha, scaling=alpha / rank, base_model=base, targets=list(targets),
        init="gaussian", rslora=False, base_fingerprint=fingerprint,
    )  # fmt: skip


def _tensors(factors: Factors) -> dict[str, torch.Tensor]:
    tensors = {}
    for m, (A, B) in factors.items():
        tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"] = A.float().contiguous(), B.float().contiguous()
    return tensors


def lora_run(
    root: Path,
    name: str,
    factors: Factors,
    *,
    alpha: float = 8.0,
    base: str = "synthetic",
    fingerprint: dict[str, float] | None = None,
    targets=("query", "value"),
    init: Factors | None = None,
    snapshots: dict[int, Factors] | None = None,
    config: dict | None = None,
    summary: dict | None = None,
    meta: dict | None = None,
) -> Path:
    """A lorascope LoRA run folder: adapter.safetensors (s = α / r of the first module's rank),
    adapter_init.safetensors if `init`, checkpoints/step-<N>/adapter.safetensors per `snapshots`,
    config.yaml (`config`, default rank and alpha) and summary.json (default: complete); `meta`
    adds header entries (seed, train_A, ...)."""
    run = Path(root) / name
    rank = next(iter(factors.values()))[0].shape[0]
    meta = {**_lora_meta(rank, alpha, base, fingerprint, targets), **(meta or {})}
    run_format.save_adapter(run / run_format.ADAPTER_FILE, _tensors(factors), meta)
    if init is not None:
        run_format.save_adapter(run / run_format.INIT_FILE, _tensors(init), meta)
    for step, state in (snapshots or {}).items():
        path = run_format.snapshot_dir(run, step) / run_format.ADAPTER_FILE
        run_format.save_adapter(path, _tensors(state), {**meta, "step": step})
    run_format.write_config(run, config or {"rank": rank, "alpha": alpha})
    run_format.write_summary(run, summary or {"status": "complete"})
    return run


def full_run(
    root: Path,
    name: str,
    deltas: dict[str, torch.Tensor],
    *,
    base: str = "synthetic",
    fingerprint: dict[str, float] | None = None,
    snapshots: dict[int, dict[str, torch.Tensor]] | None = None,
    summary: dict | None = None,
) -> Path:
    """A lorascope full fine-tuning run folder: delta.safetensors ({module: ΔW (out, in)}, fp32)."""
    run = Path(root) / name
    meta = {
        "format": run_format.FORMAT,
        "format_version": run_format.FORMAT_VERSION,
        "method": "full",
        "base_model": base,
        "base_fingerprint": fingerprint or {},
    }
    run_format.save_delta(run / run_format.DELTA_FILE, deltas, meta)
    for step, state in (snapshots or {}).items():
        run_format.save_delta(run_format.snapshot_dir(run, step) / run_format.DELTA_FILE, state, meta)
    run_format.write_config(run, {"method": "full"})
    run_format.write_summary(run, summary or {"status": "complete"})
    return run


def peft_folder(
    root: Path, name: str, factors: Factors, *, alpha: float = 8.0, base: str = "synthetic"
) -> Path:
    """A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors), as PEFT saves one."""
    rank = next(iter(factors.values()))[0].shape[0]
    adapters = {m: run_format.Adapter(A.float(), B.float(), alpha / rank) for m, (A, B) in factors.items()}
    run = run_format.Run(
        path=Path(root) / name, adapters=adapters, meta={"base_model": base, "rslora": False}
    )
    return export_peft(run, Path(root) / name)
