"""How ΔW relates to the pre-trained W (paper Section 7.3, Table 7, Figure 8).

With U (out, k), V (in, k) the top-k singular vectors of ΔW, ‖Uᵀ W V‖_F measures how much
W already acts along ΔW's directions. The paper compares it with the same quantity for
W's own top-k directions (the ceiling) and for random directions (the floor), and reports
amplification = ‖ΔW‖_F / ‖Uᵀ W V‖_F: large when ΔW boosts directions W does not emphasise.
"""

from __future__ import annotations

import numpy as np
import torch

from lorascope.analysis.linalg import as_float64, delta_svd, random_orthonormal
from lorascope.analysis.similarity import phi_grid
from lorascope.errors import LorascopeError

# The side the paper's Figure 8 compares W's and ΔW's singular vectors on: the left (output space),
# U from W = U Σ Vᵀ and from ΔW. The one place that says so; the figure and the default below read it.
FIG8_SIDE = "left"


def _check_shapes(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> None:
    if W.shape != (B.shape[0], A.shape[1]):
        raise LorascopeError(
            f"W {tuple(W.shape)} does not match ΔW = B A ({B.shape[0]}, {A.shape[1]}): "
            "W must be (out, in) of the same module"
        )


def weight_svd(W) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of W in float64: (U (out, m), σ (m,), Vh (m, in)). Compute once per module and pass
    it as `w_svd=` when analysing several adapters of the same base weight."""
    return torch.linalg.svd(as_float64(W, "W"), full_matrices=False)


def amplification(W, A, B, scaling: float, k: int | None = None, seed: int = 0, w_svd=None) -> dict:
    """Table 7 numbers for one module. W (out, in), A (r, in), B (out, r), ΔW = s · B A.

    k defaults to r (capped at min(out, in)). `w_svd`: `weight_svd(W)`, if already computed.
    Returns a dict:
      w_norm       ‖W‖_F
      dw_norm      ‖ΔW‖_F
      proj_dw      ‖Uᵀ W V‖_F, U, V the top-k singular vectors of ΔW
      proj_w       the same with W's own top-k singular vectors (= √Σ_{i≤k} σ_i(W)²)
      proj_random  the same with random orthonormal U, V (seeded by `seed`)
      amplification  dw_norm / proj_dw (inf if proj_dw = 0; proj_dw and this are nan if ΔW = 0)
      k
    """
    W, A, B = as_float64(W, "W"), as_float64(A, "A"), as_float64(B, "B")
    _check_shapes(W, A, B)
    kmax = min(W.shape[0], W.shape[1], A.shape[0])
    k = kmax if k is None else int(k)
    if not 1 <= k <= min(W.shape):
        raise LorascopeError(f"k must be in 1..{min(W.shape)}, got {k}")
    if k > kmax:
        raise LorascopeError(f"k = {k} exceeds the rank of ΔW ({kmax}): use k ≤ {kmax}")
    U, S, V = delta_svd(A, B, scaling)
    U, V = U[:, :k], V[:, :k]
    sigma_w = w_svd[1] if w_svd is not None else torch.linalg.svdvals(W)
    U_r = random_orthonormal(W.shape[0], k, seed)
    V_r = random_orthonormal(W.shape[1], k, seed + 1)
    proj_dw = float(torch.linalg.matrix_norm(U.T @ W @ V))
    dw_norm = float(torch.linalg.vector_norm(S))  # ‖ΔW‖_F = ‖σ(ΔW)‖_2
    if dw_norm == 0:
        # ΔW = 0 (B = 0 at init) has no singular directions: U, V above are arbitrary.
        proj_dw, amp = float("nan"), float("nan")
    else:
        amp = dw_norm / proj_dw if proj_dw > 0 else float("inf")
    return {
        "w_norm": float(torch.linalg.vector_norm(sigma_w)),
        "dw_norm": dw_norm,
        "proj_dw": proj_dw,
        "proj_w": float(torch.linalg.vector_norm(sigma_w[:k])),
        "proj_random": float(torch.linalg.matrix_norm(U_r.T @ W @ V_r)),
        "amplification": amp,
        "k": k,
    }


def w_delta_similarity(
    W, A, B, scaling: float = 1.0, side: str = FIG8_SIDE, top_w: int | None = None, w_svd=None
) -> np.ndarray:
    """Figure 8: φ between W's top-i and ΔW's top-j singular vectors on the same side.

    Returns (top_w, k) with top_w defaulting to min(out, in) and k = min(out, in, r);
    side "left" (FIG8_SIDE, the paper's) compares output-space directions (U), "right" input-space
    ones (V).
    `w_svd`: `weight_svd(W)`, if already computed."""
    W, A, B = as_float64(W, "W"), as_float64(A, "A"), as_float64(B, "B")
    _check_shapes(W, A, B)
    if side not in ("left", "right"):
        raise LorascopeError(f"side must be 'left' or 'right', got {side!r}")
    U_w, _, Vh_w = w_svd if w_svd is not None else torch.linalg.svd(W, full_matrices=False)
    U, _, V = delta_svd(A, B, scaling)
    basis_w = U_w if side == "left" else Vh_w.T
    if top_w is not None:
        basis_w = basis_w[:, :top_w]
    return phi_grid(basis_w, U if side == "left" else V)
