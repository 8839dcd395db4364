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
import os
import random
import resource
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lorascope import data as data_mod
from lorascope import initial_eval, models, resume, run_format, trackers
from lorascope.base_model import open_named
from lorascope.config import SweepConfig, from_dict, to_dict
from lorascope.distributed import World
from lorascope.errors import LorascopeError
from lorascope.lora import count_trainable
from lorascope.methods import build_update, grad_stats, keep_fp32, snapshot_params, update_stats

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


def _precision(model, head: list[str], dtype: str) -> None:
    """On a base stored below fp32 (`dtype`, as `models.base_dtype` names it), keep the head trained
    in fp32, its logits too (for the loss). LoRA's factors are fp32 already, and full fine-tuning keeps
    fp32 masters of its W itself (`methods.FullUpdate`). Nothing changes on an fp32 base."""
    if dtype == "fp32":
        return
    for h in head:
        keep_fp32(model.get_submodule(h), cast_back=False)


def _checkpointing(model) -> None:
    """transformers' gradient checkpointing, non-reentrant, with the input embeddings' output requiring
    grad (as PEFT does) so that checkpointed blocks of a frozen base still pass gradients to LoRA."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise LorascopeError(f"train.grad_checkpointing: {type(model).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.x names it so
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # a KV cache is meaningless when activations are recomputed


def _fingerprints(cfg, update, quantized: bool) -> dict[str, float]:
    """‖W‖_F of each target as the checkpoint stores it: what the analyses check W against. A quantized
    base's W is read from the checkpoint (the model holds only its quantized form)."""
    if not quantized:
        return {n: run_format.base_fingerprint(W) for n, W in update.base_weights().items()}
    ckpt = open_named(cfg.model.name_or_path, models.resolve)
    return {n: run_format.base_fingerprint(ckpt.weight(n, dtype=None)) for n in update.names()}


def _parallel(model, cfg, world: World, device: torch.device, trainable: list):
    """The module the training step calls: the model itself (one process), DDP, or FSDP2 over the
    frozen base with the trainables left whole (their gradients averaged by `World.average_gradients`)."""
    if not world.distributed:
        return model
    if cfg.train.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    keep = set(trainable)
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for m in model.modules():
        if type(m).__name__ in blocks:
            fully_shard(m, ignored_params=keep)
    fully_shard(model, ignored_params=keep)
    return model


def _on_sigterm(signum, frame):
    raise RunFailed("terminated (SIGTERM): another process of the run failed, or the job was cancelled")


def train(
    cfg: SweepConfig | dict, out_dir: str | Path, resume_run: bool = False, world: World | None = None
) -> dict[str, Any]:
    """Train one run into out_dir (empty, or with `resume_run` a killed run's folder) -> its summary.

    world: this process's rank among the run's processes (None: one process). Every rank computes;
    rank 0 alone writes out_dir."""
    cfg = from_dict(cfg)
    world = world or World()
    out = Path(out_dir)
    main = world.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = world.device(pick_device(tc.device))
    autocast = autocast_for(tc.dtype, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    world.init(device)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if world.distributed else None
    try:
        return _train(cfg, out, resume_run, world, device, autocast, t_start)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _train(cfg, out: Path, resume_run: bool, world: World, device, autocast, t_start) -> dict[str, Any]:
    tc, main = cfg.train, world.is_main
    seed_everything(cfg.seed)
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    task = data_mod.build_task(to_dict(cfg)["task"], tokenizer, tc.seq_len)
    classify = task.kind == "classification"
    model_class = models.SEQ_CLS if classify else models.CAUSAL_LM
    num_labels = task.num_labels if classify else None
    seed_everything(cfg.seed)  # the head's init depends on the seed only, not on data loading
    quantized = cfg.model.quantization is not None
    model = models.load_model(
        cfg.model.name_or_path, model_class, num_labels, cfg.model.dtype, cfg.model.quantization, device
    )
    dtype = models.base_dtype(model)
    head = models.head_modules(model) if classify else []
    update = build_update(model, cfg, head)
    _precision(model, head, dtype)
    if tc.grad_checkpointing:
        _checkpointing(model)
    if not quantized:  # bitsandbytes placed a quantized base on its device while loading
        model.to(device)
    meta = run_format.adapter_metadata(
        **update.metadata(cfg), method=update.method, base_model=cfg.model.name_or_path,
        base_fingerprint=_fingerprints(cfg, update, quantized), base_dtype=dtype,
        model_class=model_class, num_labels=num_labels, classes=task.classes, task=cfg.task.name,
        seed=cfg.seed,
    )  # fmt: skip
    if quantized:
        meta["quantized_note"] = models.TRAINED_QUANTIZED_NOTE.format(dtype)
    head_params = [p for h in head for p in model.get_submodule(h).parameters()]
    groups = update.param_groups(tc.lr) + (
        [{"params": head_params, "lr": tc.lr, "name": "head"}] * bool(head)
    )
    trainable = [p for g in groups for p in g["params"]]
    log.info("%s: %s on a %s base, %d trainable parameters (%d in the update)%s", out, update.method, dtype,
             count_trainable(model), update.n_params(),
             f", rank {world.rank} of {world.size} ({tc.strategy})" if world.distributed else "")  # fmt: skip
    net = _parallel(model, cfg, world, device, trainable)
    fsdp = world.distributed and tc.strategy == "fsdp"
    opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.steps, tc.warmup))

    state = resume.load_state(out) if resume_run else None
    tracking = trackers.start(cfg, out, resumed_at=state.step if state else None)  # mirrors metrics.jsonl
    if state is not None:
        resume.restore(state, model, opt, sched)
        if main:
            run_format.truncate_metrics(out, state.step)
        counters = state.counters
        log.info("%s: resuming after step %d of %d", out, state.step, tc.steps)
    else:
        if main:
            run_format.write_config(out, to_dict(cfg))
            if update.method == "lora":  # ΔW_0 = 0 for full fine-tuning: nothing to keep
                update.save(out / run_format.INIT_FILE, meta)
        first = _initial_evaluation(model, task, cfg, out, world, device, autocast)
        _check_finite("evaluation", first, 0)
        if main:
            run_format.append_metrics(out, {"step": 0, **first})
            tracking.log({"step": 0, **first}, 0)
        log.info("step 0: %s", _fmt(first))
        counters = {"step": 0, "tokens": 0, "train_time": 0.0, "first_loss": None, "first_eval": first,
                    "threads": torch.get_num_threads(),  # bit-identity holds per thread count
                    "evals": first, "loss": None}  # fmt: skip

    batches = task.train_batches(tc.batch_size, cfg.seed, start=counters["step"])
    model.train()
    bar = tqdm(range(counters["step"] + 1, tc.steps + 1), desc=out.name, leave=False, dynamic_ncols=True,
               disable=not main)  # fmt: skip
    for step in bar:
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in world.share(next(batches)).items()}
        with autocast() if autocast else contextlib.nullcontext():
            loss = net(**batch).loss
        # The global batch's loss (every rank takes the same decisions below) and tokens, in one collective.
        loss_sum, tokens = world.sums(loss.item(), int(batch["attention_mask"].sum()))
        loss_val = loss_sum / world.size
        if tc.fail_at_step is not None and step == tc.fail_at_step:
            raise RunFailed(f"failed at step {step} as train.fail_at_step asked")
        _testing_kill(world, step)
        _check_finite("training", {"loss": loss_val}, step)
        if counters["first_loss"] is None:
            counters["first_loss"] = loss_val
        if loss_val > tc.diverge_factor * counters["first_loss"]:
            raise RunFailed(
                f"loss {loss_val:.4g} at step {step} is above train.diverge_factor={tc.diverge_factor:g} "
                f"× the first step's {counters['first_loss']:.4g}: the run diverged"
            )
        loss.backward()
        if fsdp:  # DDP averages in backward; FSDP leaves the unsharded trainables to us
            world.average_gradients(trainable)
        logging_step = step % tc.log_every == 0 or step == tc.steps
        stats = grad_stats(update) if logging_step else {}
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip if tc.grad_clip > 0 else math.inf)
        before = snapshot_params(update) if logging_step else None
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        counters["train_time"] += time.perf_counter() - t0
        counters["tokens"] += int(tokens)
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
        if record and main:
            run_format.append_metrics(out, record)
            tracking.log(record, step)
        if tc.snapshot_every and step % tc.snapshot_every == 0 and step < tc.steps and main:
            update.save(run_format.snapshot_dir(out, step) / update.file, {**meta, "step": step})
            resume.save_state(out, step, model, opt, sched, counters)
    bar.close()
    extra = {"base_dtype": dtype, "quantization": cfg.model.quantization, "processes": world.size,
             "strategy": tc.strategy if world.distributed else None,
             "grad_checkpointing": tc.grad_checkpointing}  # fmt: skip
    summary = _finish(cfg, out, update, model, head, meta, counters, device, time.perf_counter() - t_start,
                      extra, main)  # fmt: skip
    trackers.finish(tracking, summary)
    return summary


def _initial_evaluation(model, task, cfg, out: Path, world: World, device, autocast) -> dict[str, float]:
    """The step-0 held-out metrics, read from the sweep's cache where an identical network was evaluated
    on the same data with the same settings (`lorascope.initial_eval`), else computed and cached. A run
    sharded over processes evaluates itself: no rank holds the whole state to key it by."""
    tc = cfg.train
    if world.distributed:
        return data_mod.evaluate(model, task, tc.eval_batch_size, device, autocast)
    digest = initial_eval.key(model, task, {"batch_size": tc.eval_batch_size, "dtype": tc.dtype,
                                            "device": device.type})  # fmt: skip
    cached = initial_eval.load(out.parent, digest)
    if cached is not None:
        log.info("step 0: the same network and held-out set as %s's step 0: its evaluation reused", cached[1])
        return cached[0]
    first = data_mod.evaluate(model, task, tc.eval_batch_size, device, autocast)
    initial_eval.store(out.parent, digest, first, out.name)
    return first


def _testing_kill(world: World, step: int) -> None:
    """Testing aid: LORASCOPE_TEST_KILL="<rank>:<step>" kills that rank (SIGKILL) at that step, as a
    crashed GPU or an OOM-killed process would die: no Python clean-up, no summary."""
    spec = os.environ.get("LORASCOPE_TEST_KILL")
    if spec and spec == f"{world.rank}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _finish(cfg, out: Path, update, model, head, meta, counters, device, wall: float, extra: dict,
            main: bool = True) -> dict[str, Any]:  # fmt: skip
    """Save the final update and head, then summary.json, last (rank 0 only writes)."""
    tc = cfg.train
    final = update.tensors()
    for name, t in final.items():
        if not bool(torch.isfinite(t).all()):
            raise RunFailed(f"the trained update {name} holds NaN or Inf: the run diverged")
    summary = _summary(cfg, update, model, counters, device, wall, extra)
    if not main:
        return summary
    if tc.snapshot_every and tc.steps % tc.snapshot_every == 0:  # the last snapshot is the final update
        update.save(run_format.snapshot_dir(out, tc.steps) / update.file, {**meta, "step": tc.steps})
    update.save(out / update.file, {**meta, "step": tc.steps})
    if head:
        head_state = {
            f"{h}.{k}": v.detach().float().cpu()
            for h in head
            for k, v in model.get_submodule(h).state_dict().items()
        }
        run_format.save_tensors(
            out / run_format.HEAD_FILE, head_state, {"modules": head, "num_labels": meta["num_labels"]}
        )
    resume.remove_state(out)
    run_format.write_summary(out, summary)
    return summary


def _summary(cfg, update, model, counters, device, wall: float, extra: dict) -> dict[str, Any]:
    tc = cfg.train
    train_time = counters["train_time"]
    return {
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
        **extra,
    }
