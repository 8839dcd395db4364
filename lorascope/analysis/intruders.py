"""Intruder dimensions (Shuttleworth et al. 2024, arXiv 2410.21228).

A singular vector of the fine-tuned W + ΔW is an "intruder" when it is nearly orthogonal
to every singular vector of the pre-trained W: a new direction, not a reweighted old one.
"""

from __future__ import annotations

import numpy as np
import torch

from lorascope.analysis.linalg import as_float64
from lorascope.errors import LorascopeError


def intruder_dimensions(W, delta, k: int = 10, eps: float = 0.5) -> dict:
    """Among the top-k left singular vectors u_i of W + ΔW, those with max_j |u_iᵀ u_j(W)| < eps.

    W, delta: (out, in). The u_j(W) are all min(out, in) left singular vectors of W.
    Returns {"count": int, "indices": list of 0-based i < k that are intruders,
    "max_cos": (k,) array of max_j |cos|}. Assumes W's singular values are distinct
    enough for its singular vectors to be well defined (true of trained weights).
    """
    W, delta = as_float64(W, "W"), as_float64(delta, "delta")
    if W.shape != delta.shape:
        raise LorascopeError(f"W {tuple(W.shape)} and ΔW {tuple(delta.shape)} differ in shape")
    if not 1 <= k <= min(W.shape):
        raise LorascopeError(f"k must be in 1..{min(W.shape)}, got {k}")
    U_w = torch.linalg.svd(W, full_matrices=False)[0]  # (out, m)
    U_ft = torch.linalg.svd(W + delta, full_matrices=False)[0][:, :k]  # (out, k)
    max_cos = (U_ft.T @ U_w).abs().amax(dim=1).numpy()  # (k,)
    indices = [int(i) for i in np.flatnonzero(max_cos < eps)]
    return {"count": len(indices), "indices": indices, "max_cos": max_cos}
