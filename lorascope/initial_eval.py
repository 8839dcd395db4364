"""The step-0 evaluation, shared by the runs of a sweep that start from the same function.

LoRA starts at ΔW = 0 exactly (B = 0, or A = 0 with lora.zero=A): the wrapped layer returns
W x + s·(x Aᵀ)·0 = W x bit for bit, so every rank of one seed, full fine-tuning of that seed and a
frozen-A twin all start as the same network with the same head, and evaluate to the same numbers. On
the demo's MiniLM a held-out pass is a third of a run's compute; the first run of a seed evaluates and
the others read its result here.

The key is a digest of what decides the numbers, never of names that could be stale: every tensor
of the model's state (a LoRA layer whose update is exactly zero counts as its base layer alone; DoRA,
shifting inits such as PiSSA and a merged layer count with their factors), the held-out token ids and
labels, the batch size, dtype, device, thread count and the torch and transformers versions. A
different state gives a different key, so a cached result can only be reused for an identical
evaluation. Entries are small JSON files in the sweep folder, written whole by rename, so parallel
runs (joblib, SLURM, two sweeps at once) can share them; an unreadable entry is a miss.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorascope import run_format
from lorascope.lora import lora_layers

log = logging.getLogger(__name__)

FOLDER = ".evals"  # inside the sweep folder, beside the run folders
VERSION = 1  # of the key's recipe: a change here must not read entries keyed the old way


def _zero_update(layer) -> bool:
    """True where the LoRA layer computes exactly its base layer: plain LoRA, not merged, ΔW = 0."""
    if layer.dora or layer.merged or layer.A0 is not None:
        return False
    return not bool(layer.B.detach().any()) or not bool(layer.A.detach().any())


def _state(model: nn.Module):
    """(name, tensor) of the model's state, a zero-update LoRA layer reduced to its base layer under the
    name the plain model gives it, so a rank-r adapter at step 0 has the key of the model without it."""
    reduced = tuple(name + "." for name, layer in lora_layers(model).items() if _zero_update(layer))
    for name, t in model.state_dict().items():
        prefix = next((p for p in reduced if name.startswith(p)), None)
        if prefix is not None:
            rest = name[len(prefix) :]
            if not rest.startswith("base."):
                continue  # A, B (zero product) and nothing else of the wrapper changes the output
            name = prefix + rest[len("base.") :]
        yield name, t


def _feed(h, t: Any) -> None:
    if torch.is_tensor(t):
        t = t.detach()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    else:
        h.update(json.dumps(t, sort_keys=True, default=str).encode())


def key(model: nn.Module, task, settings: dict[str, Any]) -> str:
    """The digest of one evaluation: the model's effective state, the held-out set, the settings."""
    import transformers
    import xxhash

    h = xxhash.xxh3_128()
    _feed(h, {"version": VERSION, "torch": torch.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads(), "kind": task.kind, **settings})  # fmt: skip
    for name, t in sorted(_state(model), key=lambda kv: kv[0]):
        h.update(name.encode())
        _feed(h, t)
    ids = task.val_ids
    _feed(h, ids if torch.is_tensor(ids) else [list(map(int, s)) for s in ids])
    _feed(h, [x if isinstance(x, int) else list(map(int, x)) for x in task.val_labels])
    return h.hexdigest()


def _path(folder: Path, digest: str) -> Path:
    return Path(folder) / FOLDER / f"{digest}.json"


def load(folder: Path, digest: str) -> tuple[dict[str, float], str] | None:
    """(metrics, the run that computed them) for this key, or None."""
    try:
        entry = json.loads(_path(folder, digest).read_text())
        metrics = {str(k): float(v) for k, v in entry["metrics"].items()}
        return metrics, str(entry.get("run", "?"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store(folder: Path, digest: str, metrics: dict[str, float], run: str) -> None:
    """Write the entry whole (`run_format.atomic_write_text`); a folder that cannot hold it is logged."""
    path = _path(folder, digest)
    try:
        run_format.atomic_write_text(path, json.dumps({"run": run, "metrics": metrics}))
    except OSError as e:
        log.debug("step-0 evaluation not cached in %s: %s", path.parent, e)
