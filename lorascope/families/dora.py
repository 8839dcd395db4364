"""DoRA (Liu et al. 2024): W' = m ⊙ (W + s·B A) / ‖W + s·B A‖, so ΔW = W' − W needs W itself.

    V = W + s · B A                     (out, in), nn.Linear's layout
    ‖V‖ = ‖V[o, :]‖₂ for each output o   PEFT's `get_weight_norm`: torch.linalg.norm(weight, dim=1),
                                        the paper's column norm of W ∈ R^{d×k} (d = in, k = out)
    ΔW = (m / ‖V‖)[:, None] · V − W      PEFT's merge: dora_factor · (W + ΔW_lora), minus W

m is PEFT's `lora_magnitude_vector` (out,). W is read on first use, per module, from a callable
(the base checkpoint), and ΔW is then kept: later products and SVDs reuse it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lorascope.errors import LorascopeError
from lorascope.families.dense_ops import DenseOps
from lorascope.run_format import Adapter


def dora_weight(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float, m: torch.Tensor):
    """W' = m ⊙ V / ‖V‖_row with V = W + s·B A, all (out, in) float32; m (out,)."""
    V = W.float() + scaling * (B.float() @ A.float())
    norm = torch.linalg.norm(V, dim=1)
    return (m.float() / norm)[:, None] * V


class DoRADelta(DenseOps):
    """One DoRA module: ΔW = W' − W, dense on first use; `factors` are its LoRA A (r, in), B (out, r)."""

    def __init__(
        self,
        A: torch.Tensor,
        B: torch.Tensor,
        scaling: float,
        magnitude: torch.Tensor,
        weight: Callable[[], torch.Tensor],
        name: str = "",
    ):
        if magnitude.shape != (B.shape[0],):
            raise LorascopeError(
                f"module {name}: DoRA magnitude {tuple(magnitude.shape)} does not match lora_B "
                f"{tuple(B.shape)}: want one magnitude per output ({B.shape[0]},)"
            )
        self.lora = Adapter(A.float(), B.float(), float(scaling))
        self.magnitude = magnitude.float()
        self._weight = weight
        self.name = name
        self._delta: torch.Tensor | None = None

    @property
    def factors(self) -> Adapter:
        return self.lora

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lora.out_features, self.lora.in_features)

    def base_weight(self) -> torch.Tensor:
        """The original W (out, in) float32, read through the callable given (once per call)."""
        W = self._weight()
        if tuple(W.shape) != self.shape:
            raise LorascopeError(
                f"module {self.name}: base W is {tuple(W.shape)}, but DoRA's ΔW is {self.shape}"
            )
        return W.float()

    def delta_weight(self) -> torch.Tensor:
        if self._delta is None:
            W = self.base_weight()
            a = self.lora
            self._delta = dora_weight(W, a.A, a.B, a.scaling, self.magnitude) - W
        return self._delta
