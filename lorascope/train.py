"""train(cfg, out_dir): one run, from seed to a complete run folder. No Hydra here.

    seed -> base model + tokenizer -> task batches -> the update (LoRA factors or full W, see
    lorascope.methods) -> AdamW (warm-up, linear decay, gradient clipping) -> metrics.jsonl,
    snapshots + resume state -> adapter.safetensors (or delta.safetensors), head.safetensors,
    config.yaml -> summary.json (last, atomic).

A run that diverges (a non-finite loss, evaluation or update, or a training loss above
train.diverge_factor × its first step's) raises RunFailed: it is never recorded as complete.
`resume=True` continues a killed run from its last snapshot's saved state (lorascope.resume),
ending byte-identical on CPU to an uninterrupted run. `lorascope.launch` decides what to run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lorascope import data as data_mod
from lorascope import models, resume, runs
from lorascope.config import SweepConfig, from_dict, to_dict
from lorascope.errors import LorascopeError
from lorascope.lora import count_trainable
from lorascope.methods import build_update, grad_stats, snapshot_params, update_stats

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Training went wrong in a way the run should record (a diverged loss, ...)."""


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
    if device.type != "cuda":
        raise LorascopeError("train.dtype=fp16 needs CUDA; use fp32 or bf16 on CPU")
    return lambda: torch.autocast("cuda", dtype=torch.float16)


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


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in d.items() if k != "step")


def _check_finite(what: str, values: dict[str, float], step: int) -> None:
    bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise RunFailed(f"{what} {bad[0]} is {values[bad[0]]} at step {step}: the run diverged")


def train(cfg: SweepConfig | dict, out_dir: str | Path, resume_run: bool = False) -> dict[str, Any]:
    """Train one run into out_dir (empty, or with `resume_run` a killed run's folder) -> its summary."""
    cfg = from_dict(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
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
    update = build_update(model, cfg, head)
    model.to(device)
    meta = runs.adapter_metadata(
        **update.metadata(cfg), method=update.method, base_model=cfg.model.name_or_path,
        base_fingerprint={n: runs.base_fingerprint(W) for n, W in update.base_weights().items()},
        model_class=model_class, num_labels=num_labels, classes=task.classes, task=cfg.task.name,
        seed=cfg.seed,
    )  # fmt: skip
    head_params = [p for h in head for p in model.get_submodule(h).parameters()]
    groups = update.param_groups(tc.lr) + (
        [{"params": head_params, "lr": tc.lr, "name": "head"}] * bool(head)
    )
    trainable = [p for g in groups for p in g["params"]]
    log.info("%s: %s, %d trainable parameters (%d in the update)", out, update.method, count_trainable(model),
             update.n_params())  # fmt: skip
    opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.steps, tc.warmup))

    state = resume.load_state(out) if resume_run else None
    if state is not None:
        resume.restore(state, model, opt, sched)
        runs.truncate_metrics(out, state.step)
        counters = state.counters
        log.info("%s: resuming after step %d of %d", out, state.step, tc.steps)
    else:
        runs.write_config(out, to_dict(cfg))
        if update.method == "lora":  # ΔW_0 = 0 for full fine-tuning: nothing to keep
            update.save(out / runs.INIT_FILE, meta)
        first = data_mod.evaluate(model, task, tc.eval_batch_size, device, autocast)
        _check_finite("evaluation", first, 0)
        runs.append_metrics(out, {"step": 0, **first})
        log.info("step 0: %s", _fmt(first))
        counters = {"step": 0, "tokens": 0, "train_time": 0.0, "first_loss": None, "first_eval": first,
                    "threads": torch.get_num_threads(),  # bit-identity holds per thread count
                    "evals": first, "loss": None}  # fmt: skip

    batches = task.train_batches(tc.batch_size, cfg.seed, start=counters["step"])
    model.train()
    bar = tqdm(range(counters["step"] + 1, tc.steps + 1), desc=out.name, leave=False, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(batches).items()}
        with autocast() if autocast else contextlib.nullcontext():
            loss = model(**batch).loss
        loss_val = loss.item()
        if tc.fail_at_step is not None and step == tc.fail_at_step:
            raise RunFailed(f"failed at step {step} as train.fail_at_step asked")
        _check_finite("training", {"loss": loss_val}, step)
        if counters["first_loss"] is None:
            counters["first_loss"] = loss_val
        if loss_val > tc.diverge_factor * counters["first_loss"]:
            raise RunFailed(
                f"loss {loss_val:.4g} at step {step} is above train.diverge_factor={tc.diverge_factor:g} "
                f"× the first step's {counters['first_loss']:.4g}: the run diverged"
            )
        loss.backward()
        logging_step = step % tc.log_every == 0 or step == tc.steps
        stats = grad_stats(update) if logging_step else {}
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip if tc.grad_clip > 0 else math.inf)
        before = snapshot_params(update) if logging_step else None
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        counters["train_time"] += time.perf_counter() - t0
        counters["tokens"] += int(batch["attention_mask"].sum())
        counters["step"], counters["loss"] = step, loss_val
        bar.set_postfix(loss=f"{loss_val:.3f}")
        record: dict[str, Any] = {}
        if logging_step:
            stats |= update_stats(update, before) | update.state_stats()
            _check_finite("update", stats, step)
            record = {"step": step, "loss": loss_val, "lr": lr, "grad_norm": float(grad_norm), **stats}
        if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
            counters["evals"] = data_mod.evaluate(model, task, tc.eval_batch_size, device, autocast)
            _check_finite("evaluation", counters["evals"], step)
            # An evaluation step is also a training step: its record keeps the training numbers.
            record = {"step": step, "loss": loss_val, "lr": lr, "grad_norm": float(grad_norm), **stats,
                      **counters["evals"]}  # fmt: skip
            log.info("step %d: %s", step, _fmt(counters["evals"]))
        if record:
            runs.append_metrics(out, record)
        if tc.snapshot_every and step % tc.snapshot_every == 0 and step < tc.steps:
            update.save(runs.snapshot_dir(out, step) / update.file, {**meta, "step": step})
            resume.save_state(out, step, model, opt, sched, counters)
    bar.close()
    return _finish(cfg, out, update, model, head, meta, counters, device, time.perf_counter() - t_start)


def _finish(cfg, out: Path, update, model, head, meta, counters, device, wall: float) -> dict[str, Any]:
    """Save the final update and head, then summary.json, last."""
    tc = cfg.train
    final = update.tensors()
    for name, t in final.items():
        if not bool(torch.isfinite(t).all()):
            raise RunFailed(f"the trained update {name} holds NaN or Inf: the run diverged")
    if tc.snapshot_every and tc.steps % tc.snapshot_every == 0:  # the last snapshot is the final update
        update.save(runs.snapshot_dir(out, tc.steps) / update.file, {**meta, "step": tc.steps})
    update.save(out / update.file, {**meta, "step": tc.steps})
    if head:
        head_state = {
            f"{h}.{k}": v.detach().float().cpu()
            for h in head
            for k, v in model.get_submodule(h).state_dict().items()
        }
        runs.save_tensors(
            out / runs.HEAD_FILE, head_state, {"modules": head, "num_labels": meta["num_labels"]}
        )
    resume.remove_state(out)
    train_time = counters["train_time"]
    summary = {
        "status": "complete",
        "method": update.method,
        "steps": tc.steps,
        "final_loss": counters["loss"],
        "initial_eval": counters["first_eval"],
        **counters["evals"],
        "wall_time_s": wall,
        "train_time_s": train_time,
        "tokens_per_s": counters["tokens"] / train_time if train_time else 0.0,
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "trainable_params": count_trainable(model),
        "update_params": update.n_params(),
        "device": str(device),
        "dtype": tc.dtype,
        "threads": torch.get_num_threads(),  # CPU results are bit-identical for one thread count only
    }
    runs.write_summary(out, summary)
    return summary
