"""ΔW's top-k singular bases for many modules at once, from r × r Gram matrices (no QR, no n × r float64).

For ΔW = s·B A with A (r, in), B (out, r), the right singular vectors lie in A's row space: V = Aᵀ T,

    G_A = A Aᵀ = P Σ² Pᵀ,   H = Σ Pᵀ (Bᵀ B) P Σ = Q Λ Qᵀ,   T = P Σ⁻¹ Q,   σ_i(ΔW) = |s| √λ_i

(`delta_phi` has the derivation; the left side exchanges A and Bᵀ, and flips U's sign when s < 0, as
`delta.factored_svd` does). For a batch of modules of one shape: two batched r × n × r products,
two batched r × r eigendecompositions and one n × r × k product, in float32 (the factors as stored)
where the factor is well conditioned (κ ≤ F32_MAX_COND), else in float64.

A module takes the QR route (`delta.factored_svd`) instead when its factor is ill-conditioned
(κ > GRAM_MAX_COND) or when ΔW's k-th σ is below RANK_GAP · σ_1: the Gram route squares σ, so its
small σ are known only to √ε · σ_1, too coarse to decide a numerical rank (`linalg.numerical_rank`)
that the QR route decides to ε · σ_1. What comes back equals the QR route's top-k basis to round-off
(up to each column's sign), for every module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorascope.analysis.similarity import F32_MAX_COND, GRAM_MAX_COND
from lorascope.delta import factored_svd

# σ_k ≥ RANK_GAP · σ_1 for the Gram route to stand: then no σ ≤ k is near the numerical-rank cut
# (RANK_RTOL = 1e-5 · σ_1), which float32 Gram matrices resolve only to ~√ε₃₂ ≈ 2e-4 · σ_1.
RANK_GAP = 1e-2


def delta_bases(forms: Sequence, side: str, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(basis (n, k_j), σ (k_j,))] of ΔW_j = s_j B_j A_j for factored forms (.A (r, in), .B (out, r),
    .scaling), side "right" (n = in) or "left" (n = out), k_j = min(k, r_j, n); σ float64 descending,
    the basis float32 where the Gram route ran in float32, else float64. A Gram-route basis is the
    transposed view of a row-major (k_j, n): copied into rows, it copies fast. Modules of one shape
    and dtype are batched together."""
    out: list = [None] * len(forms)
    groups: dict[tuple, list[int]] = {}
    for j, f in enumerate(forms):
        groups.setdefault((tuple(f.A.shape), tuple(f.B.shape), f.A.dtype, f.B.dtype), []).append(j)
    for idx in groups.values():
        for j, result in zip(idx, _group_bases([forms[j] for j in idx], side, k), strict=True):
            out[j] = result
    return out


def _group_bases(forms: Sequence, side: str, k: int) -> list:
    X = [f.A if side == "right" else f.B.T for f in forms]  # (r, n): the basis lies in Xᵀ's span
    Z = [f.B.T if side == "right" else f.A for f in forms]  # (r, m)
    s = torch.tensor([float(f.scaling) for f in forms], dtype=torch.float64)
    r, n = X[0].shape
    k = min(int(k), r, n)
    low = X[0].dtype == Z[0].dtype == torch.float32
    results: list = [None] * len(forms)
    todo = list(range(len(forms)))
    for dtype in (torch.float32, torch.float64) if low else (torch.float64,):
        if not todo:
            break
        T, S, kappa = transforms(_grams([X[j] for j in todo], dtype), _grams([Z[j] for j in todo], dtype), k)
        S = s[todo].abs()[:, None] * S
        stands = (kappa <= GRAM_MAX_COND) & (S[:, 0] > 0) & (S[:, -1] >= RANK_GAP * S[:, 0])
        if dtype == torch.float32:
            stands &= kappa <= F32_MAX_COND  # else float32 round-off (~ε₃₂ κ²) would show: float64 next
        T = T.to(dtype)
        for i in torch.nonzero(stands).flatten().tolist():
            j = todo[i]
            Vt = T[i].T @ X[j].to(dtype)  # (k, n) = Vᵀ: 5× faster than Xᵀ T (n, k), and rows to copy
            results[j] = ((Vt if side == "right" or s[j] >= 0 else -Vt).T, S[i])
        todo = [j for i, j in enumerate(todo) if not stands[i] and kappa[i] <= GRAM_MAX_COND]
    for j, f in enumerate(forms):  # ill-conditioned, or σ near the rank cut: the QR route
        if results[j] is None:
            U, S, V = factored_svd(f.A, f.B, f.scaling)
            basis = V if side == "right" else U
            results[j] = (basis[:, :k], S[:k])
    return results


def _grams(X: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """X_j X_jᵀ for each (r, n) factor, (b, r, r) float64, each product in `dtype`: one matmul per
    module on the factor as stored (a stacked copy of the factors would cost more than the products)."""
    G = torch.empty(len(X), X[0].shape[0], X[0].shape[0], dtype=dtype)
    for j, x in enumerate(X):
        x = x.to(dtype)
        torch.mm(x, x.T, out=G[j])
    return G.double()


def transforms(G_own: torch.Tensor, G_other: torch.Tensor, k: int):
    """(T (b, r, k), σ/|s| (b, k) descending, κ (b,) of the factor) with basis = Xᵀ T, for G_own = X Xᵀ
    and G_other = Z Zᵀ (b, r, r) float64. With G_own = L Lᵀ (Cholesky),

        H = Lᵀ G_other L = Q Λ Qᵀ,   T = L⁻ᵀ Q:   Tᵀ G_own T = I,   Xᵀ G_other X (Xᵀ T) = (Xᵀ T) Λ,

    one eigendecomposition per module, its factor's κ from the eigenvalues alone; κ = inf where G_own
    is not positive definite (T is then garbage, for the caller to refuse)."""
    e = torch.linalg.eigvalsh(G_own)  # ascending σ² of the factor
    L, info = torch.linalg.cholesky_ex(G_own)
    bad = (info != 0) | (e[:, 0] <= 0)
    kappa = torch.where(bad, torch.inf, (e[:, -1] / e[:, 0].clamp_min(1e-300)).sqrt())
    L = torch.where(bad[:, None, None], torch.eye(L.shape[-1], dtype=L.dtype), L)  # kept finite
    H = L.transpose(1, 2) @ G_other @ L
    lam, Q = torch.linalg.eigh((H + H.transpose(1, 2)) / 2)
    lam, Q = lam.flip(-1).clamp_min(0), Q.flip(-1)
    T = torch.linalg.solve_triangular(L.transpose(1, 2), Q[:, :, :k].contiguous(), upper=True)
    return T, lam[:, :k].sqrt(), kappa
