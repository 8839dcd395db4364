"""The ΔW kinds of lorascope's own runs: DoRA (lora.dora=true) and shifting inits (lora.init=pissa|...).

    dora      adapter.safetensors holds "<module>.lora_magnitude" m beside A, B: `DoRADelta`, with W
              read from the run's base checkpoint when first needed (the run records its fingerprint)
    shifted   adapter_init.safetensors holds A0, B0: `ShiftedDelta`, ΔW = s·(B A − B0 A0)

Plain LoRA runs keep their `Adapter`s. Applied to the final adapter and to every snapshot.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from lorascope.errors import LorascopeError
from lorascope.families.dora import DoRADelta
from lorascope.families.shifted import RECOMPUTABLE, ShiftedDelta
from lorascope.run_format import read_magnitudes


class _Base:
    """The run's base checkpoint, opened once on first need."""

    def __init__(self, run):
        self.run, self.checkpoint = run, None

    def weight(self, module: str, shape: tuple[int, int]):
        if self.checkpoint is None:
            from lorascope.base_model import open_base

            self.checkpoint = open_base(self.run)
        return self.checkpoint.weight(module, shape, self.run.meta.get("fan_in_fan_out"))


def attach_kinds(run) -> None:
    """Replace a DoRA or shifted-init run's adapters by their kinds, and have snapshots read alike."""
    dora, init = bool(run.meta.get("dora")), run.meta.get("init")
    if not dora and init not in RECOMPUTABLE:
        return
    base = _Base(run)

    def kinds(adapters: dict, file: Path) -> dict:
        if dora:
            magnitudes = read_magnitudes(file)
            missing = [m for m in adapters if m not in magnitudes]
            if missing:
                raise LorascopeError(
                    f"{file}: a DoRA run (dora: true) without lora_magnitude for {missing[0]}"
                )
            return {
                m: DoRADelta(
                    a.A,
                    a.B,
                    a.scaling,
                    magnitudes[m],
                    partial(base.weight, m, (a.out_features, a.in_features)),
                    m,
                )
                for m, a in adapters.items()
            }
        if run.init is None:
            raise LorascopeError(
                f"{run.path}: init {init} moved W, and ΔW needs A0, B0, but adapter_init.safetensors "
                "is missing"
            )
        return {m: ShiftedDelta(a, run.init[m], m) for m, a in adapters.items()}

    run.adapters = kinds(run.adapters, run.path / run.update_file)
    run.kinds = kinds
