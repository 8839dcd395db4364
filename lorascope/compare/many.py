"""Many adapters of one base at once: what `lorascope subspace` and `lorascope merge` share.

Sources resolved (runs and PEFT folders mixed, or one sweep folder), names made unique, one base checked
(`SameBase`), the modules every adapter adapts kept (`_Shared`), and one module's ΔW basis on a side.
The commands themselves: `lorascope.compare.subspaces` (the shared subspace) and
`lorascope.compare.merges` (PEFT's merges, and what they keep).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from lorascope.analysis.factors import get_factor
from lorascope.analysis.linalg import numerical_rank
from lorascope.compare.inputs import resolve_sources, unique_names
from lorascope.delta import directions
from lorascope.errors import LorascopeError
from lorascope.names import selected, shared_modules
from lorascope.run_format import Run

log = logging.getLogger(__name__)

SIDES = ("right", "left")
DENSE_TOP_K = 64  # directions of a dense ΔW (full fine-tuning) unless k is given, as `similarity` takes


def _sources(sources: Sequence, what: str) -> tuple[list, list[Path], list[str]]:
    sources, left_out = resolve_sources(sources, what)
    for name, why in (left_out or {}).items():  # a sweep's runs that cannot be used: said, not fatal
        log.warning("%s left out: %s", name, why)
    paths = [s.path if isinstance(s, Run) else Path(s) for s in sources]
    return sources, paths, unique_names(paths)


def _select(run: Run, modules: str | None, layers) -> list[str]:
    return selected(run.adapters, modules, layers)  # layers "0,2-5": cut to the layers this run has


class _Shared:
    """The modules every adapter so far adapts (the first adapter's order), narrowed one adapter at a time."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.every: dict[str, None] = {}

    def narrow(self, i: int, names: list[str], mine: list[str]) -> list[str]:
        self.every.update(dict.fromkeys(mine))
        shared = mine if i == 0 else shared_modules([self.kept, mine])
        if not shared:
            before = names[0] if i == 1 else f"the {i} adapters before it"
            raise LorascopeError(
                f"{names[i]} shares no module with {before} ({mine[0] if mine else '-'} vs {self.kept[0]}): "
                "give adapters of the same base model and targets"
            )
        self.kept = shared
        return shared

    def skipped(self, n: int) -> list[str]:
        skipped = [m for m in self.every if m not in set(self.kept)]
        if skipped:
            shown = ", ".join(skipped[:4]) + (", ..." if len(skipped) > 4 else "")
            log.warning("%d module(s) not shared by all %d adapters, skipped: %s", len(skipped), n, shown)
        return skipped


def _base_meta(run: Run) -> dict:
    return {
        "base_model": run.meta.get("base_model"),
        "base_fingerprint": dict(run.meta.get("base_fingerprint") or {}),
        "fan_in_fan_out": bool(run.meta.get("fan_in_fan_out", False)),
        "task_type": run.meta.get("task_type"),
    }


def _merge_fingerprints(meta: dict, run: Run) -> None:
    for m, v in (run.meta.get("base_fingerprint") or {}).items():
        meta["base_fingerprint"].setdefault(m, float(v))
    if meta.get("base_model") is None:
        meta["base_model"] = run.meta.get("base_model")


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise LorascopeError(f"--side must be left or right, got {side!r}")
    return side


def _check_k(k: int | None, name: str = "--k") -> int | None:
    if k is not None and int(k) < 1:
        raise LorascopeError(f"{name} must be at least 1, got {k}")
    return None if k is None else int(k)


def _basis(adapter, side: str, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW's top-k basis on `side` and its σ, cut to ΔW's numerical rank: factored for LoRA (all r
    directions when k is None), a truncated SVD for a dense ΔW (DENSE_TOP_K unless k is given)."""
    spec = get_factor("dW-right" if side == "right" else "dW-left")
    top = k if k is not None else directions(adapter, DENSE_TOP_K)
    U, S = spec.basis(adapter, k=top)
    keep = numerical_rank(S)
    return U[:, :keep], S[:keep]
