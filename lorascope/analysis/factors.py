"""The table of factors: which matrix of an adapter a subspace is taken of, on which side, and its name.

    A         right singular vectors of A (r, in): the paper's "U_A", the row space of A in R^in
    B         left singular vectors of B (out, r): the column space of B in R^out
    dA        right singular vectors of A − A0: the learned part of A (needs the run's A0)
    dW-right  right singular vectors of ΔW = s·B A (input space), from the factored SVD
    dW-left   left singular vectors of ΔW (output space)

Every place that needs to know a factor's side, the dimension n of its space, its label in text or
TeX, or how to get its basis from a run's module reads it here: the library, the CLI and the figures.
An "adapter" here is one module's ΔW of the protocol (`lorascope.delta`): the ΔW factors take its
`svd(k)`, the others its `factors` (.A (r, in), .B (out, r)), which a dense update (full fine-tuning)
does not have; `init` is the same for A0, B0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lorascope.analysis.linalg import as_float64, factor_svd
from lorascope.errors import LorascopeError


@dataclass(frozen=True)
class Factor:
    name: str
    side: str  # "right": a basis of R^in; "left": a basis of R^out
    text: str  # plain text (tables, findings.md)
    tex: str  # matplotlib mathtext (figure titles)
    help: str  # one line for the CLI
    # (adapter, init) -> the matrix whose singular basis is taken; None for ΔW's, from the factored SVD.
    matrix: Callable | None = None
    needs_init: bool = False

    def dim(self, adapter) -> int:
        """n, the dimension of the space the basis lives in."""
        return adapter.in_features if self.side == "right" else adapter.out_features

    def applies(self, adapter) -> bool:
        """Whether this factor exists for the module: A, B and A − A0 need LoRA factors."""
        return self.matrix is None or adapter.factors is not None

    def basis(self, adapter, init=None, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(orthonormal basis (n, k), σ (k,)) of one module, columns by descending σ, float64.

        adapter (and init, A0/B0): ΔW of the protocol (`lorascope.delta`). k None: every direction
        the factor has (r for LoRA, min(out, in) for a dense ΔW, whose top k come from `svd(k)`)."""
        if not self.applies(adapter):
            raise LorascopeError(
                f"factor {self.name} ({self.text}) needs LoRA factors, and a full fine-tuning update has "
                "none: use dW-right or dW-left"
            )
        if self.needs_init and init is None:
            raise LorascopeError(f"factor {self.name} ({self.text}) needs the run's adapter_init.safetensors")
        if self.matrix is None:
            U, S, V = adapter.svd(k)
            return (V if self.side == "right" else U), S
        basis, S = factor_svd(self.matrix(adapter, init), self.side)
        return (basis, S) if k is None else (basis[:, :k], S[:k])


def learned_part(A, A0) -> torch.Tensor:
    """A − A0, (r, in): the learned part of A, in float32 when neither is float64.

    The difference of two float32 numbers rounded to float32 is the exact difference to a relative
    2⁻²⁴ (one rounding, entry by entry): what storing A − A0 in float32 would give, the precision every
    float32 factor is analysed in, without two float64 copies of the factors (bf16 and fp16 widen
    exactly to float32 first)."""
    A, A0 = (t.detach().cpu() if isinstance(t, torch.Tensor) else as_float64(t) for t in (A, A0))
    if torch.float64 in (A.dtype, A0.dtype):
        return as_float64(A, "A") - as_float64(A0, "A0")
    return A.float() - A0.float()


def _learned_part(adapter, init) -> torch.Tensor:
    return learned_part(adapter.factors.A, init.factors.A)


FACTORS: dict[str, Factor] = {
    f.name: f
    for f in (
        Factor("A", "right", "A", "$A$", "right singular vectors of A, the paper's U_A",
               matrix=lambda adapter, init: adapter.factors.A),
        Factor("B", "left", "B", "$B$", "left singular vectors of B",
               matrix=lambda adapter, init: adapter.factors.B),
        Factor("dA", "right", "A − A0", "$(A - A_0)$",
               "right singular vectors of A - A0 (needs adapter_init)",
               matrix=_learned_part, needs_init=True),
        Factor("dW-right", "right", "ΔW (input side)", r"$\Delta W$ (input side)",
               "right (input-side) singular vectors of dW = s B A"),
        Factor("dW-left", "left", "ΔW (output side)", r"$\Delta W$ (output side)",
               "left (output-side) singular vectors of dW = s B A"),
    )
}  # fmt: skip


def get_factor(name: str) -> Factor:
    """The Factor called `name`; a LorascopeError listing the choices otherwise."""
    if name not in FACTORS:
        raise LorascopeError(f"unknown factor {name!r}: choose one of {', '.join(FACTORS)}")
    return FACTORS[name]
