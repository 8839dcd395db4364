"""φ between the singular bases of two ΔW = s·B A from r × r Gram matrices: no QR, no n × r basis.

Right side (dW-right). ΔWᵀ ΔW = s² Aᵀ (Bᵀ B) A, so ΔW's right singular vectors lie in A's row space:
V = Aᵀ T with T (r, r). With G_A = A Aᵀ = L Lᵀ (Cholesky) and G_B = Bᵀ B,

    H = Lᵀ G_B L = Q Λ Qᵀ  (eigenvalues descending),   T = L⁻ᵀ Q,   σ_i(ΔW) = |s| √λ_i,

(Vᵀ V = Qᵀ L⁻¹ G_A L⁻ᵀ Q = I; κ(A) from G_A's eigenvalues), and between two adapters

    V1ᵀ V2 = T1ᵀ (A1 A2ᵀ) T2                                   (r1, r2)

The left side (dW-left) is the same with the roles of A and Bᵀ exchanged (U = B T', T' from
G_B and G_A). Per module: G_A, G_B of each adapter and one cross product, r × n × r each, run in
the factors' dtype (float32 as stored: no float64 copy of an n × r factor) when both Gram matrices
are well conditioned (κ ≤ F32_MAX_COND, where float32 round-off stays below 1e-6 in φ), else in
float64; everything r × r is float64. Ill-conditioned factors (κ > GRAM_MAX_COND, e.g. B = 0 at
initialisation) return None: the caller takes the QR route (`linalg.delta_svd`).
"""

from __future__ import annotations

import torch

from lorascope.analysis.gram_bases import transforms
from lorascope.analysis.similarity import F32_MAX_COND, GRAM_MAX_COND, GRAM_TOL, _phi_of_cross
from lorascope.module_pool import on_one_thread


def _gram(X: torch.Tensor, Y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """X Yᵀ (X (p, n), Y (q, n)) computed in `dtype`, returned in float64."""
    return (X.to(dtype) @ Y.to(dtype).T).double()


def _transform(G_own: torch.Tensor, G_other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(T (r, r), λ (r,) descending, κ of the factor) with basis = Xᵀ T, or None if X is ill-conditioned.

    G_own = X Xᵀ of the factor whose row space holds the basis, G_other the Gram of the other factor
    (`gram_bases.transforms`, for one module)."""
    if not G_own.numel():
        return None
    T, sigma, kappa = transforms(G_own[None], G_other[None], G_own.shape[0])
    if not float(kappa[0]) <= GRAM_MAX_COND:  # also catches NaN
        return None
    return T[0], sigma[0] ** 2, float(kappa[0])


def delta_phi(a1, a2, side: str = "right") -> tuple | None:
    """(φ grid (r1, r2), σ(ΔW1) (r1,), σ(ΔW2) (r2,)) for two factored modules (.A (r, in), .B (out, r),
    .scaling), bases on `side` ("right": input space, "left": output space); None where a factor is
    ill-conditioned (take `linalg.delta_svd` and `similarity.phi_grid` then)."""
    with on_one_thread():  # r × r work and r × n products: threads cost more than they give
        X = [a.A if side == "right" else a.B.T for a in (a1, a2)]  # the basis lives in Xᵀ's span
        Z = [a.B.T if side == "right" else a.A for a in (a1, a2)]  # (r, out) or (r, in)
        low = all(t.dtype == torch.float32 for t in (*X, *Z))
        for dtype in (torch.float32, torch.float64) if low else (torch.float64,):
            parts = [_transform(_gram(x, x, dtype), _gram(z, z, dtype)) for x, z in zip(X, Z, strict=True)]
            if any(p is None for p in parts):
                return None
            if dtype == torch.float32 and max(p[2] for p in parts) > F32_MAX_COND:
                continue  # float32 round-off would show in φ: the same in float64
            (T1, lam1, _), (T2, lam2, _) = parts
            M = T1.T @ _gram(X[0], X[1], dtype) @ T2
            scale = [abs(float(a.scaling)) for a in (a1, a2)]
            return _phi_of_cross(M, GRAM_TOL), scale[0] * lam1.sqrt(), scale[1] * lam2.sqrt()
    return None
