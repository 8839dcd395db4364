"""Which base model a run adapts, told by content: the ‖W‖_F fingerprints of its base weights.

    run.meta["base_fingerprint"]   {module: ‖W‖_F}, recorded by lorascope's training (`train._fingerprints`)
    disagreement(fa, fb)           the first module whose fingerprints differ (rtol 1e-4), or None
    same_weights(fa, fb)           they share a module and agree on every shared one
    check_weight(run, {m: W})      refuse W that is not the run's base weight

Two runs are on one base when their fingerprints agree, whatever folder or hub id names the base
("llama" vs "llama-sharded" vs "org/tiny-llama"). A PEFT folder records none: `compare.inputs.SameBase`
reads its fingerprint from its base checkpoint where that opens offline (one tensor); where it
does not, only the base's name (`base_model_name_or_path`) is left to compare, loosely
(`loose_name`), and a name that differs is taken as another base (`--allow-other-base` overrides).
"""

from __future__ import annotations

import logging

import torch

from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

RTOL = (
    1e-4  # ‖W‖_F agree to this relative tolerance: bf16 vs fp32 copies of one base pass, other bases do not
)


def agree(a: float, b: float, rtol: float = RTOL) -> bool:
    """Whether two ‖W‖_F are of one tensor: |a − b| ≤ rtol·|b|."""
    return abs(float(a) - float(b)) <= rtol * abs(float(b))


def disagreement(fa: dict, fb: dict, rtol: float = RTOL) -> tuple[str, float, float] | None:
    """(module, ‖W‖_F in fa, in fb) of the first shared module (sorted) where fa and fb differ, or None."""
    for m in sorted(set(fa or {}) & set(fb or {})):
        if not agree(fa[m], fb[m], rtol):
            return m, float(fa[m]), float(fb[m])
    return None


def same_weights(fa: dict, fb: dict, rtol: float = RTOL) -> bool:
    """Whether two fingerprint sets share a module and agree on every module they share."""
    return bool(set(fa or {}) & set(fb or {})) and disagreement(fa, fb, rtol) is None


def recorded(run) -> dict[str, float]:
    """The fingerprints a run records ({} for none, e.g. a PEFT folder)."""
    return dict(run.meta.get("base_fingerprint") or {})


def check_weight(run, weights: dict[str, torch.Tensor | float]) -> None:
    """Refuse W that is not the run's base weight: ‖W‖_F must match the recorded one to rtol 1e-4.
    weights: module -> W, or its ‖W‖_F (`run_format.base_fingerprint`) when already computed."""
    from lorascope.run_format import base_fingerprint

    norms = {m: float(W) if isinstance(W, float | int) else base_fingerprint(W) for m, W in weights.items()}
    found = disagreement(norms, recorded(run))
    if found is not None:
        name, got, expected = found
        raise LorascopeError(
            f"{run.path}: base weight of {name} does not match the run's "
            f"(‖W‖_F {got:.6g} != recorded {expected:.6g}): a different base model?"
        )


def loose_name(name) -> str | None:
    """A base model id compared loosely: "sentence-transformers/all-MiniLM-L6-v2" and
    "/models/all-minilm-l6-v2/" name the same model (the last path part, lower case)."""
    if not name:
        return None
    return str(name).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower() or None
