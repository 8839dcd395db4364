"""Orthonormal bases of LoRA factors (the SVD of ΔW = s · B A from its factors: `lorascope.delta`).

Conventions (DESIGN.md): A is (r, in), B is (out, r), ΔW = s · B A is (out, in).
Every function here works in float64 on the CPU and returns float64 tensors: the
factors are small, and the subspace similarity sums many squared cosines, so the
extra precision is cheap and keeps φ trustworthy near 0 and 1.
"""

from __future__ import annotations

import numpy as np
import torch

from lorascope.delta import factored_svd as delta_svd  # noqa: F401  (public: la.delta_svd)
from lorascope.errors import LorascopeError
from lorascope.krylov import one_thread  # noqa: F401  (re-exported: the analyses import it here)

SIDES = ("left", "right")


def as_float64(X, name: str = "matrix") -> torch.Tensor:
    """A detached float64 CPU tensor from a torch tensor or array-like; must be 2-D."""
    t = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != 2:
        raise LorascopeError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    return t


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise LorascopeError(f"side must be 'left' or 'right', got {side!r}")


def factor_svd(X, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(basis, σ) of a factor: X = U Σ Vᵀ, σ descending.

    side="right" (for A, (r, in)): basis = V, (in, k), spans the row space of A;
    this is the paper's "U_A". side="left" (for B, (out, r)): basis = U, (out, k).
    k = min(X.shape). Columns whose σ is 0 (a rank-deficient factor, e.g. B = 0 at
    init) are still orthonormal, but their direction is arbitrary: check σ.
    """
    _check_side(side)
    X = as_float64(X, "factor")
    rows, cols = X.shape
    # LoRA factors are very elongated (64 x 4096): a thin QR first, then an r x r SVD, is
    # several times faster than LAPACK's SVD of the whole factor, and as accurate.
    if cols > 2 * rows:  # wide: X = Rᵀ Qᵀ with Xᵀ = Q R, and Rᵀ = u σ vᵀ gives X = u σ (Q v)ᵀ
        Q, R = torch.linalg.qr(X.T.contiguous())  # (cols, rows), (rows, rows)
        u, S, vh = torch.linalg.svd(R.T)
        U, V = u, Q @ vh.T
    elif rows > 2 * cols:  # tall: X = Q R, R = u σ vᵀ gives X = (Q u) σ vᵀ
        Q, R = torch.linalg.qr(X)
        u, S, vh = torch.linalg.svd(R)
        U, V = Q @ u, vh.T
    else:
        U, S, Vh = torch.linalg.svd(X, full_matrices=False)
        V = Vh.T
    return (V if side == "right" else U), S


def factor_basis(X, side: str = "right") -> torch.Tensor:
    """Orthonormal basis of a factor's row space (side="right", A (r, in) -> V (in, r))
    or column space (side="left", B (out, r) -> U (out, r)), columns by descending σ."""
    return factor_svd(X, side)[0]


def random_orthonormal(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """(n, k) orthonormal columns spanning a uniformly random k-dim subspace of R^n (seeded)."""
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    # Fix QR's sign freedom so the distribution is exactly Haar (Mezzadri 2007).
    return Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones(()))


# σ_t ≤ RANK_RTOL · σ_1 counts as zero: float32 factors that are exactly low-rank in exact arithmetic
# come back with σ ~ 1e-7 σ_1, and the singular vectors of such σ are arbitrary.
RANK_RTOL = 1e-5


def numerical_rank(S: torch.Tensor, rtol: float = RANK_RTOL) -> int:
    """How many singular values (descending) exceed rtol · σ_1; 0 for an all-zero spectrum."""
    s1 = float(S[0]) if S.numel() else 0.0
    return int((S > rtol * s1).sum()) if s1 > 0 else 0
