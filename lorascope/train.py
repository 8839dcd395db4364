"""train(cfg, out_dir): one LoRA run, from seed to a complete run folder. No Hydra here.

    seed -> base model + tokenizer -> task batches -> add_lora -> AdamW (warm-up, linear decay,
    gradient clipping) -> metrics.jsonl / snapshots -> adapter.safetensors, head.safetensors,
    config.yaml -> summary.json (last, atomic).

`launch(cfg, out_dir)` wraps it for sweeps: skip a complete run with the same config, refuse to
touch a complete run with another config, clean and redo an incomplete one, and record a failure
(NaN loss, out of memory, bad data, any exception) as summary.json "status": "failed".
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lorascope import data as data_mod
from lorascope import models, runs
from lorascope.config import SweepConfig, comparable, from_dict, to_dict
from lorascope.errors import LorascopeError
from lorascope.lora import add_lora, count_trainable, factors

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Training went wrong in a way the run should record (NaN loss, ...)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Bit-identical adapters on CPU for one config and seed (warn, not fail, on GPU kernels).
    torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LorascopeError(f"train.device={name} but CUDA is not available; use train.device=cpu")
    return device


def autocast_for(dtype: str, device: torch.device):
    """A zero-argument context factory for mixed precision, or None for fp32."""
    if dtype == "fp32":
        return None
    if dtype == "bf16":  # autocast on CPU too: slower than fp32 on most CPUs, but it works
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if dtype == "fp16":
        if device.type != "cuda":
            raise LorascopeError("train.dtype=fp16 needs CUDA; use fp32 or bf16 on CPU")
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    raise LorascopeError(f"train.dtype must be fp32, bf16 or fp16, got {dtype!r}")


def lr_lambda(steps: int, warmup: float):
    """Multiplier of the peak lr at step t: t/w during warm-up (w = warmup·steps), then linear to 0."""
    w = max(1, round(warmup * steps)) if warmup > 0 else 0

    def f(t: int) -> float:
        if t < w:
            return (t + 1) / w
        return max(0.0, (steps - t) / max(1, steps - w))

    return f


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Linux reports KiB; the peak RSS of the whole process (all runs it has done so far).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _adapter_meta(cfg: SweepConfig, wrapped, model_class: str, num_labels, classes) -> dict[str, Any]:
    layer = next(iter(wrapped.values()))
    return runs.adapter_metadata(
        rank=cfg.rank,
        alpha=cfg.alpha,
        scaling=layer.scaling,
        base_model=cfg.model.name_or_path,
        targets=cfg.lora.targets,
        init=cfg.lora.init,
        rslora=cfg.lora.rslora,
        base_fingerprint={n: runs.base_fingerprint(m.base_weight()) for n, m in wrapped.items()},
        model_class=model_class,
        num_labels=num_labels,
        classes=classes,
        task=cfg.task.name,
        seed=cfg.seed,
        fan_in_fan_out=any(m.fan_in_fan_out for m in wrapped.values()),  # GPT-2 Conv1D: for PEFT export
    )


def train(cfg: SweepConfig | dict, out_dir: str | Path) -> dict[str, Any]:
    """Train one adapter into out_dir (which should be empty) and return its summary dict."""
    cfg = from_dict(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    runs.write_config(out, to_dict(cfg))
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    autocast = autocast_for(tc.dtype, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    seed_everything(cfg.seed)
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    task = data_mod.build_task(to_dict(cfg)["task"], tokenizer, tc.seq_len)
    classify = task.kind == "classification"
    model_class = models.SEQ_CLS if classify else models.CAUSAL_LM
    num_labels = task.num_labels if classify else None
    seed_everything(cfg.seed)  # the head's init depends on the seed only, not on data loading
    model = models.load_model(cfg.model.name_or_path, model_class, num_labels)
    head = models.head_modules(model) if classify else []
    wrapped = add_lora(
        model, cfg.lora.targets, cfg.rank, cfg.alpha, cfg.lora.dropout,
        cfg.lora.init, cfg.lora.rslora, trainable=head, seed=cfg.seed,
    )  # fmt: skip
    model.to(device)
    meta = _adapter_meta(cfg, wrapped, model_class, num_labels, task.classes)
    runs.save_adapter(out / runs.INIT_FILE, factors(wrapped), meta)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable, n_lora = count_trainable(model), sum(p.numel() for w in wrapped.values() for p in (w.A, w.B))
    log.info("%s: %d LoRA modules, %d trainable parameters (%d LoRA)", out, len(wrapped), n_trainable, n_lora)

    opt = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.steps, tc.warmup))
    batches = task.train_batches(tc.batch_size, cfg.seed)
    evals = {"step": 0, **data_mod.evaluate(model, task, tc.eval_batch_size, device, autocast)}
    first_eval = dict(evals)
    runs.append_metrics(out, {"step": 0, **{k: v for k, v in evals.items() if k != "step"}})
    log.info("step 0: %s", _fmt(evals))

    model.train()
    tokens, train_time, loss_val = 0, 0.0, float("nan")
    bar = tqdm(range(1, tc.steps + 1), desc=out.name, leave=False, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(batches).items()}
        with autocast() if autocast else contextlib.nullcontext():
            loss = model(**batch).loss
        loss_val = loss.item()
        if not math.isfinite(loss_val) or (tc.fail_at_step is not None and step == tc.fail_at_step):
            raise RunFailed(f"loss is {loss_val} at step {step}")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip if tc.grad_clip > 0 else math.inf)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - t0
        tokens += int(batch["attention_mask"].sum())
        bar.set_postfix(loss=f"{loss_val:.3f}")
        record: dict[str, Any] = {}
        if step % tc.log_every == 0 or step == tc.steps:
            record = {"step": step, "loss": loss_val, "lr": lr, "grad_norm": float(grad_norm)}
        if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
            evals = {"step": step, **data_mod.evaluate(model, task, tc.eval_batch_size, device, autocast)}
            # An evaluation step is also a training step: its record keeps the training numbers.
            record = {"step": step, "loss": loss_val, "lr": lr, "grad_norm": float(grad_norm), **evals}
            log.info("step %d: %s", step, _fmt(evals))
        if record:
            runs.append_metrics(out, record)
        if tc.snapshot_every and step % tc.snapshot_every == 0:
            snap = out / runs.CHECKPOINT_DIR / f"step-{step}" / runs.ADAPTER_FILE
            runs.save_adapter(snap, factors(wrapped), {**meta, "step": step})
    bar.close()

    runs.save_adapter(out / runs.ADAPTER_FILE, factors(wrapped), {**meta, "step": tc.steps})
    if head:
        head_state = {
            f"{h}.{k}": v.detach().float().cpu()
            for h in head
            for k, v in model.get_submodule(h).state_dict().items()
        }
        runs.save_tensors(out / runs.HEAD_FILE, head_state, {"modules": head, "num_labels": num_labels})
    summary = {
        "status": "complete",
        "steps": tc.steps,
        "final_loss": loss_val,
        "initial_eval": {k: v for k, v in first_eval.items() if k != "step"},
        **{k: v for k, v in evals.items() if k != "step"},
        "wall_time_s": time.perf_counter() - t_start,
        "train_time_s": train_time,
        "tokens_per_s": tokens / train_time if train_time else 0.0,
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "trainable_params": n_trainable,
        "lora_params": n_lora,
        "device": str(device),
        "dtype": tc.dtype,
    }
    runs.write_summary(out, summary)
    return summary


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in d.items() if k != "step")


def launch(cfg: SweepConfig | dict, out_dir: str | Path) -> dict[str, Any]:
    """Run `train` unless out_dir already holds this run complete; never raises for a bad run.

    Returns the summary: status complete, skipped (complete before, same config), or failed (with
    "reason"). A complete run with a different config is left alone and reported as failed.
    """
    out = Path(out_dir)
    try:
        cfg = from_dict(cfg)
        new = to_dict(cfg)
    except LorascopeError as e:
        return {"status": "failed", "reason": str(e)}
    if runs.is_complete(out):
        old = runs.read_config(out)
        if comparable(old) == comparable(new):
            log.info("%s: complete with the same config; skipped", out)
            return {**runs.read_summary(out), "status": "skipped"}
        reason = (
            f"{out} holds a complete run with a different config; not overwritten. "
            "Choose another folder with name=<sweep> (or run_name=...), or remove that folder"
        )
        log.error(reason)
        return {"status": "failed", "reason": reason}
    if out.exists() and any(out.iterdir()):
        if not runs.is_run_dir(out):
            return {"status": "failed", "reason": f"{out} holds files that are not a run; not touched"}
        log.info("%s: incomplete; cleaning and redoing it", out)
        shutil.rmtree(out)
    try:
        return train(cfg, out)
    except Exception as e:  # every failure becomes a record, so that the sweep goes on
        if isinstance(e, torch.OutOfMemoryError):
            reason = f"out of memory: {e}".splitlines()[0]
        else:
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
        log.error("%s failed: %s", out, reason, exc_info=not isinstance(e, LorascopeError | RunFailed))
        summary = {"status": "failed", "reason": reason}
        with contextlib.suppress(Exception):
            runs.write_summary(out, summary)
        return summary
