"""The pre-trained W of a run's modules, read lazily from its base checkpoint, one tensor at a time.

    for module, W in iter_base_weights(run, modules):    # W (out, in) float32, fingerprint-checked
        ...

The base is the run's `base_model`: a preset (`minilm`: the embedded safetensors; `smollm2`:
the dequantized copy of its GGUF in the lorascope cache, built once), a local folder, or a hub id
found in the local Hugging Face cache (never a network call). Only the tensors asked for are
read, so peak memory is about one W on top of the adapters, whatever the number of layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from lorascope import models
from lorascope.base_identity import check_weight
from lorascope.checkpoint import Checkpoint, open_for_run, run_weights


def open_base(run) -> Checkpoint:
    """The run's base checkpoint: a preset, a local folder, or a hub id in the local cache."""
    return open_for_run(run, models.resolve)


def iter_base_weights(
    run,
    modules: Iterable[str],
    *,
    checkpoint: Checkpoint | None = None,
    also: Iterable = (),
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(module, W) for each module, W (out, in) in `dtype` (float32 by default, whatever the stored
    dtype), read one at a time (a generator: keep only what you need). Each W is checked against
    the fingerprint ‖W‖_F of `run` and of every run in `also` (runs that must share the base, e.g.
    the rest of a sweep) to rtol 1e-4. `checkpoint`: an already opened `open_base(run)`."""
    checkpoint = checkpoint or open_base(run)
    others = list(also)
    for m, W in run_weights(checkpoint, run, list(modules), dtype):
        for r in (run, *others):
            check_weight(r, {m: W})
        yield m, W


def base_weights(run, modules: Iterable[str]) -> dict[str, torch.Tensor]:
    """{module: W} for a few modules at once (all of them in memory: prefer `iter_base_weights`)."""
    return dict(iter_base_weights(run, modules))
