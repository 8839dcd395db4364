"""Inits that move W (PiSSA, MiLoRA, OLoRA, ...): ΔW from the ORIGINAL W is s · (B A − B0 A0).

PEFT's PiSSA / OLoRA write a function of W into (A0, B0) and train on the residual
W_res = W − s · B0 A0, so the trained model is W_res + s · B A and its change from the user's W is

    ΔW = s · (B A − B0 A0) = s · [B, −B0] [A; A0]        factored, rank ≤ 2r

B0 A0 is recomputed from W exactly as the init defines it (`initial_factors`), where W is (out, in):
    pissa    W = U Σ Vᵀ (full SVD): A0 = √(Σ_r/s) V_rᵀ, B0 = U_r √(Σ_r/s), so s·B0 A0 = W's top-r part
             (unique for σ_r > σ_{r+1}: the signs of the SVD cancel in the product)
    milora   the same with the r smallest singular values (Wang et al. 2024, MiLoRA)
    olora    W = Q R (thin QR): A0 = R[:r], B0 = Q[:, :r] (not divided by s; the QR signs cancel)
Randomized ("pissa_niter_K"), data-dependent (CorDA, LoRA-GA, EVA) and quantization (LoftQ) inits
cannot be recomputed from W: they need the saved initial factors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lorascope.errors import LorascopeError
from lorascope.run_format import Adapter

RECOMPUTABLE = ("pissa", "milora", "olora")


def initial_factors(
    W: torch.Tensor, init: str, rank: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0 (r, in), B0 (out, r)) float32 of `init` for W (out, in), as PEFT's pissa_init/olora_init.

    In float32, as PEFT decomposes W: the same LAPACK call then gives the same A0, B0 to rounding, and
    s·B0 A0 (≈ ‖W‖) cancels to float32 accuracy in ΔW."""
    W = W.float()
    if rank > min(W.shape):
        raise LorascopeError(f"{init} needs r ≤ min(out, in) = {min(W.shape)}, got r = {rank}")
    if init in ("pissa", "milora"):
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        part = slice(0, rank) if init == "pissa" else slice(S.shape[0] - rank, S.shape[0])
        root = torch.sqrt(S[part] / scaling)
        return torch.diag(root) @ Vh[part], U[:, part] @ torch.diag(root)
    if init == "olora":
        Q, R = torch.linalg.qr(W)
        return R[:rank].contiguous(), Q[:, :rank].contiguous()
    raise LorascopeError(
        f"init {init!r} cannot be recomputed from W (choose one of {', '.join(RECOMPUTABLE)})"
    )


class ShiftedDelta:
    """ΔW = s · (B A − B0 A0), (out, in): factored with rank 2r; `factors` are the trained A, B.

    A0, B0 are given, or computed on first use by `initial` (e.g. `initial_factors` of W read lazily)."""

    def __init__(
        self,
        trained: Adapter,
        initial: Adapter | Callable[[], Adapter],
        name: str = "",
    ):
        self.trained = trained
        self._initial = initial
        self.name = name

    @property
    def factors(self) -> Adapter:
        return self.trained

    @property
    def initial(self) -> Adapter:
        """A0, B0 (and s) of the init, computed once."""
        if callable(self._initial):  # a function computing them on first use
            init = self._initial()
            if (init.A.shape, init.B.shape) != (self.trained.A.shape, self.trained.B.shape):
                raise LorascopeError(
                    f"module {self.name}: initial factors A0 {tuple(init.A.shape)}, B0 {tuple(init.B.shape)} "
                    f"do not match A {tuple(self.trained.A.shape)}, B {tuple(self.trained.B.shape)}"
                )
            self._initial = init
        return self._initial

    @property
    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """([A; A0] (2r, in), [B, −(s0/s)·B0] (out, 2r), s): ΔW = s · B' A'."""
        a, a0 = self.trained, self.initial
        ratio = a0.scaling / a.scaling
        return torch.cat([a.A, a0.A], 0), torch.cat([a.B, -ratio * a0.B], 1), a.scaling

    @property
    def factored_form(self) -> Adapter:
        """ΔW = s · B' A' with the stacked factors (rank 2r)."""
        return Adapter(*self.stacked)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.trained.out_features, self.trained.in_features)

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def rank(self) -> int:
        return 2 * self.trained.rank

    def delta_weight(self) -> torch.Tensor:
        A, B, s = self.stacked
        return s * (B @ A)

    def matvec(self, X: torch.Tensor) -> torch.Tensor:
        A, B, s = self.stacked
        return s * (B.to(X.dtype) @ (A.to(X.dtype) @ X))

    def rmatvec(self, Y: torch.Tensor) -> torch.Tensor:
        A, B, s = self.stacked
        return s * (A.to(Y.dtype).T @ (B.to(Y.dtype).T @ Y))

    def svd(self, k: int | None = None, algorithm: str = "auto"):
        """From the QR of the stacked factors (never forming ΔW): float64 (U, S, V), k ≤ 2r."""
        return self.factored_form.svd(k, algorithm)
