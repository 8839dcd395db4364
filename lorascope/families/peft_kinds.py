"""The ΔW kind of each module of a PEFT adapter: plain, embedding, convolution, MoE experts, DoRA, shifted.

`peft_format` splits the saved tensors by module into parts (A, B, embedding A/B, magnitude);
`module_updates` turns one module's parts into its ΔW objects, given the base W where the family
needs it (`BaseWeights`: the base checkpoint, opened once, each W read when first used).

A saved initial adapter for the inits that cannot be recomputed (CorDA, LoRA-GA, pissa_niter_K):
a PEFT folder `initial_adapter/` inside the adapter folder (as PEFT saves one before training for
`path_initial_model_for_weight_conversion`), or `init_dir=` of `load_peft_run`.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch

from lorascope.errors import LorascopeError
from lorascope.families import layouts
from lorascope.families.dora import DoRADelta
from lorascope.families.shifted import RECOMPUTABLE, ShiftedDelta, initial_factors
from lorascope.run_format import Adapter

log = logging.getLogger(__name__)

INITIAL_DIR = "initial_adapter"

# init_lora_weights values that write a function of W into (A0, B0) and subtract s·B0 A0 from W.
SHIFTING_INITS = {
    "pissa": "PiSSA",
    "milora": "MiLoRA",
    "olora": "OLoRA",
    "corda": "CorDA",
    "lora_ga": "LoRA-GA",
}


def shifting_init(config: dict) -> str | None:
    """The init_lora_weights value when it moves W ("pissa", "pissa_niter_4", "olora", ...), else None."""
    init = config.get("init_lora_weights", True)
    if not isinstance(init, str):
        return None
    init = init.lower()
    return init if any(init.startswith(p) for p in SHIFTING_INITS) else None


def init_family(init: str) -> str:
    return next(name for p, name in SHIFTING_INITS.items() if init.startswith(p))


class BaseWeights:
    """The base checkpoint of an adapter, opened on first need; W (out, in) float32 per module."""

    def __init__(self, base: str | None, why: str, adapter: Path, fan_in_fan_out: bool):
        self.base, self.why, self.adapter, self.fan_in_fan_out = base, why, adapter, fan_in_fan_out
        self._checkpoint = None

    def open(self):
        if self._checkpoint is None:
            from lorascope import models
            from lorascope.base_model import open_named

            if not self.base:
                raise LorascopeError(
                    f"{self.adapter}: {self.why}, but adapter_config.json names no base model"
                )
            try:
                self._checkpoint = open_named(self.base, models.resolve)
            except LorascopeError as e:
                raise LorascopeError(
                    f"{self.adapter}: {self.why}, but the base is not available: {e}"
                ) from None
        return self._checkpoint

    def weight(self, module: str, shape: tuple[int, int]) -> torch.Tensor:
        return self.open().weight(module, shape, self.fan_in_fan_out)


def shifted_updates(
    adapters: dict, init: str, base: BaseWeights, path: Path, init_dir: Path | None, read_initial
) -> dict:
    """Each Adapter of a shifted-init adapter as a ShiftedDelta: A0, B0 saved or recomputed from W.
    read_initial: folder -> {module: Adapter} of a saved initial adapter (the PEFT reader, plain)."""
    family = init_family(init)
    folder = init_dir if init_dir is not None else path / INITIAL_DIR
    if Path(folder).is_dir():
        initial = read_initial(Path(folder))
        missing = sorted(set(adapters) - set(initial))
        if missing:
            raise LorascopeError(f"{folder}: initial adapter lacks module {missing[0]}")
        log.info("%s: %s initial factors A0, B0 read from %s", path, family, folder)
        return {m: ShiftedDelta(a, initial[m], m) for m, a in adapters.items()}
    if init not in RECOMPUTABLE:
        why = "is randomized" if init.startswith("pissa_niter") else "depends on data or quantization"
        raise LorascopeError(
            f"{path}: {family} initialisation (init_lora_weights={init!r}) {why}, so B0 A0 cannot be "
            "recomputed "
            f"from W and s·B·A is not the change from the base model; save the initial adapter as "
            f"{INITIAL_DIR}/ in the adapter folder (or convert: save_pretrained(..., "
            "path_initial_model_for_weight_conversion=...))"
        )
    base.open()  # fail now, in one line, if W is not there
    out = {}
    for m, a in adapters.items():

        def initial(m=m, a=a):
            W = base.weight(m, (a.out_features, a.in_features))
            A0, B0 = initial_factors(W, init, a.rank, a.scaling)
            return Adapter(A0, B0, a.scaling)

        out[m] = ShiftedDelta(a, initial, m)
    return out


def dora_update(module: str, adapter: Adapter, magnitude: torch.Tensor, base: BaseWeights) -> DoRADelta:
    shape = (adapter.out_features, adapter.in_features)
    return DoRADelta(
        adapter.A, adapter.B, adapter.scaling, magnitude, partial(base.weight, module, shape), module
    )


def param_of(module: str, target_parameters: list[str]) -> list[str]:
    """Parameter names target_parameters can mean on `module` (mlp.experts.gate_up_proj: gate_up_proj)."""
    names = []
    for t in target_parameters or []:
        owner, _, param = t.rpartition(".")
        if not owner or module == owner or module.endswith("." + owner):
            names.append(param)
    return names


def factored(module: str, parts: dict, scaling: float, path: Path) -> Adapter:
    """The Adapter of plain, embedding or convolution parts."""
    if "EA" in parts or "EB" in parts:
        if set(parts) - {"M"} != {"EA", "EB"}:
            raise LorascopeError(f"{path}: module {module} has only {', '.join(sorted(parts))}")
        return layouts.embedding_adapter(parts["EA"], parts["EB"], scaling)
    A, B = parts["A"], parts["B"]
    if A.ndim > 2:
        log.info("%s: module %s is a %d-D convolution: %s", path, module, A.ndim - 2, layouts.CONV_NOTE)
        return layouts.conv_adapter(A, B, scaling, module)
    return Adapter(A.float(), B.float(), scaling)


def expert_param(module: str, parts: dict, config: dict, base, path: Path) -> str | None:
    """The parameter a ParamWrapper module's factors adapt, or None for an ordinary layer."""
    candidates = param_of(module, config.get("target_parameters"))
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    ckpt = base.open()  # several parameters of one module: tell them apart by their stored shape
    A, B = parts["A"], parts["B"]
    for param in candidates:
        key = checkpoint_key(ckpt, f"{module}.{param}")
        shape = ckpt.shape(key)
        if len(shape) == 3 and shape[1:] in ((B.shape[0], A.shape[1]), (A.shape[1], B.shape[0])):
            return param
    raise LorascopeError(
        f"{path}: module {module}: no parameter of {candidates} has the shape of its factors"
    )


def checkpoint_key(ckpt, name: str) -> str:
    """The key of a raw parameter `name` (no ".weight") in a checkpoint, by exact or dotted-suffix match."""
    from lorascope.names import match_module

    return match_module(list(ckpt.files), name, f"the base checkpoint {ckpt.folder}")
