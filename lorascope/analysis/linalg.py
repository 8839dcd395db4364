"""Orthonormal bases of LoRA factors and the SVD of ΔW = s · B A without forming ΔW.

Conventions (DESIGN.md): A is (r, in), B is (out, r), ΔW = s · B A is (out, in).
Every function here works in float64 on the CPU and returns float64 tensors: the
factors are small, and the subspace similarity sums many squared cosines, so the
extra precision is cheap and keeps φ trustworthy near 0 and 1.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from lorascope.errors import LorascopeError

SIDES = ("left", "right")


@contextmanager
def one_thread(device: torch.device | None = None):
    """Small LAPACK calls (QRs and SVDs of r-column factors, eigh of small Gram matrices) on one CPU
    thread; nothing changes for a GPU device.

    They gain little from threads, and with OpenMP on a shared CPU they can lose a lot: measured
    here with another process busy on one of two cores, eigvalsh of a 576² matrix took 0.07 s on
    one thread and 0.4-15 s on two. `torch.set_num_threads` is process-wide: not thread-safe."""
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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


def delta_svd(A, B, scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of ΔW = s · B A, (out, in), never forming ΔW.

        B = Q_B R_B, Aᵀ = Q_A R_A          (thin QR; Q_B (out, p), Q_A (in, q))
        R_B R_Aᵀ = u σ vᵀ                  (a p × q SVD, p, q ≤ r)
        ΔW = Q_B R_B R_Aᵀ Q_Aᵀ = (Q_B u) σ (Q_A v)ᵀ

    Returns U (out, k), S (k,), V (in, k) with S = |s| · σ descending and
    k = min(out, in, r); ΔW = U diag(S) Vᵀ (a negative s flips the sign of U).
    Cost O((out + in) r²) instead of O(out · in · min(out, in)).
    A rank-deficient ΔW (B = 0 at init) gives trailing zeros in S; the matching
    columns of U and V are orthonormal but arbitrary.
    """
    A = as_float64(A, "A")
    B = as_float64(B, "B")
    if A.shape[0] != B.shape[1]:
        raise LorascopeError(f"A {tuple(A.shape)} and B {tuple(B.shape)}: want A (r, in), B (out, r)")
    Q_B, R_B = torch.linalg.qr(B)  # (out, p), (p, r)
    Q_A, R_A = torch.linalg.qr(A.T.contiguous())  # (in, q), (q, r); contiguous: LAPACK's fast path
    u, sigma, vh = torch.linalg.svd(R_B @ R_A.T, full_matrices=False)  # (p, k), (k,), (k, q)
    U = Q_B @ u
    V = Q_A @ vh.T
    s = float(scaling)
    if s < 0:
        U = -U
    return U, abs(s) * sigma, V


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


# A dense ΔW (full fine-tuning) with min(out, in) up to this gets LAPACK's full SVD; above, the top k
# come from ARPACK (scipy.sparse.linalg.svds): a truncated SVD, never a dense one when top-k suffices.
DENSE_SVD_MAX = 1024


def dense_top_svd(D, k: int | None, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k singular vectors on `side` (n, k), σ (k,)) of a dense matrix D (out, in), σ descending.

    k None: all min(out, in) of them (a full thin SVD)."""
    _check_side(side)
    D = as_float64(D, "ΔW")
    m = min(D.shape)
    k = m if k is None else min(int(k), m)
    if m <= DENSE_SVD_MAX or k >= m // 2:
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        return (U if side == "left" else Vh.T)[:, :k], S[:k]
    from scipy.sparse.linalg import svds

    # ARPACK converges to the extreme singular triplets; v0 fixed so results repeat exactly.
    v0 = np.random.default_rng(0).standard_normal(m)
    U, S, Vh = svds(D.numpy(), k=k, solver="arpack", v0=v0)
    order = np.argsort(S)[::-1].copy()  # svds returns σ ascending
    basis = U[:, order] if side == "left" else Vh[order].T
    return torch.from_numpy(np.ascontiguousarray(basis)), torch.from_numpy(S[order].copy())
