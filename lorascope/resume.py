"""The state to resume a killed run from its last snapshot, in one safetensors file (never pickle).

    checkpoints/resume.safetensors
      param.<name>            every trained parameter, as it was after step N (LoRA factors, the head,
                              or full fine-tuning's W): raw, so that resuming is exact
      opt.<i>.<key>           AdamW's per-parameter state (step, exp_avg, exp_avg_sq)
      rng.torch, rng.cuda.<i> the random generators' states (dropout draws from torch's)
      rng.numpy               numpy's Mersenne Twister key
      header (JSON)           step N, the optimizer's param_groups, the scheduler's state, Python's and
                              numpy's generator scalars, and the loop's own counters

The batch stream is a function of (seed, batch index) (`TaskData.train_batches(start=N)`), so the
data position is N itself. Written atomically after each snapshot; removed when the run completes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorascope import run_format
from lorascope.errors import LorascopeError

RESUME_FILE = "resume.safetensors"
VERSION = 1


def resume_path(run_dir: Path) -> Path:
    return Path(run_dir) / run_format.CHECKPOINT_DIR / RESUME_FILE


def save_state(run_dir: Path, step: int, model, opt, sched, counters: dict[str, Any]) -> None:
    """Everything needed to continue after `step` exactly as an uninterrupted run would."""
    tensors: dict[str, torch.Tensor] = {
        f"param.{n}": p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad
    }
    opt_state = opt.state_dict()
    for i, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"opt.{i}.{key}"] = torch.as_tensor(value).detach().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    py_version, py_key, py_gauss = random.getstate()
    meta = {
        "version": VERSION,
        "step": step,
        "param_groups": opt_state["param_groups"],
        "scheduler": sched.state_dict(),
        "rng_python": [py_version, list(py_key), py_gauss],
        "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "counters": counters,
    }
    run_format.save_tensors(resume_path(run_dir), tensors, meta)


@dataclass
class ResumeState:
    step: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def counters(self) -> dict[str, Any]:
        return self.meta["counters"]


def load_state(run_dir: Path) -> ResumeState | None:
    """The saved state of a run folder, or None if it has none (or an unreadable one: start afresh)."""
    path = resume_path(run_dir)
    if not path.is_file():
        return None
    try:
        tensors, meta = run_format.read_tensors(path)
    except LorascopeError:
        return None
    if meta.get("version") != VERSION:
        return None
    return ResumeState(int(meta["step"]), tensors, meta)


def restore(state: ResumeState, model, opt, sched) -> None:
    """Put the parameters, optimizer, scheduler and random generators back as they were after state.step."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, t in state.tensors.items():
            if key.startswith("param."):
                name = key.removeprefix("param.")
                if name not in params or params[name].shape != t.shape:
                    raise LorascopeError(f"resume state: parameter {name} does not match the model")
                params[name].copy_(t)
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in state.tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            per_param.setdefault(int(i), {})[name] = t
    opt.load_state_dict({"state": per_param, "param_groups": state.meta["param_groups"]})
    sched.load_state_dict(state.meta["scheduler"])
    torch.set_rng_state(state.tensors["rng.torch"])
    cuda = sorted(k for k in state.tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.tensors[k] for k in cuda])
    kind, pos, has_gauss, cached = state.meta["rng_numpy"]
    np.random.set_state((kind, state.tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, key, gauss = state.meta["rng_python"]
    random.setstate((version, tuple(key), gauss))


def remove_state(run_dir: Path) -> None:
    resume_path(run_dir).unlink(missing_ok=True)
