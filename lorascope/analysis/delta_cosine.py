"""The signed, σ-weighted similarity of two updates: the cosine of ΔW₁ and ΔW₂ from their factors.

    cos(ΔW₁, ΔW₂) = ⟨ΔW₁, ΔW₂⟩_F / (‖ΔW₁‖_F ‖ΔW₂‖_F),   ⟨ΔW₁, ΔW₂⟩_F = s₁ s₂ tr((B₁ᵀ B₂)(A₂ A₁ᵀ))

for ΔW = s · B A with A (r, in), B (out, r): r × r products of its factored SVD, ΔW never
formed. Unlike φ, which compares subspaces (sign-blind, every direction weighted alike), the
cosine sees the sign (cos(ΔW, −ΔW) = −1) and weights each direction by its σ. Both are functions
of ΔW alone: B → B R, A → R⁻¹ A leaves ⟨ΔW₁, ΔW₂⟩ unchanged; A and B themselves (and any score
of flattened A ‖ B) are not. For independent random updates E[cos] = 0, the floor of the signed score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lorascope.delta import Delta
from lorascope.errors import LorascopeError


def factored_pieces(delta: Delta) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L, R) with ΔW = L R, float64: (U Σ (out, r), Vᵀ (r, in)) from the factored SVD of a ΔW that
    has a factored form (LoRA's s·B A, a shifted init's s·(BA − B0A0)); (ΔW (out, in), None) for a
    dense update (R = identity)."""
    if delta.rank is not None:
        U, S, V = delta.svd()
        return U * S, V.T
    return delta.delta_weight().to(torch.float64), None


def _inner(p, q) -> float:
    """⟨L_p R_p, L_q R_q⟩_F = Σ (L_pᵀ L_q) ∘ (R_p R_qᵀ), with R = None the identity."""
    (L1, R1), (L2, R2) = p, q
    if L1.shape[0] != L2.shape[0]:
        raise LorascopeError(f"updates of different shapes: out {L1.shape[0]} vs {L2.shape[0]}")
    if R1 is None and R2 is None:
        return float(torch.sum(L1 * L2))
    G = L1.T @ L2  # (p1, p2)
    if R1 is None:
        return float(torch.sum(G * R2.T))  # R_p = I: R_p R_qᵀ = R_qᵀ (in, p2)
    if R2 is None:
        return float(torch.sum(G * R1))
    return float(torch.sum(G * (R1 @ R2.T)))


def delta_inner(a, b) -> float:
    """⟨ΔW_a, ΔW_b⟩_F of two modules' updates (factored or dense), without forming a factored ΔW."""
    return _inner(factored_pieces(a), factored_pieces(b))


def delta_cosine(a, b) -> float:
    """cos(ΔW_a, ΔW_b) ∈ [−1, 1]; nan when either update is zero."""
    pa, pb = factored_pieces(a), factored_pieces(b)
    na, nb = _inner(pa, pa), _inner(pb, pb)
    if na <= 0 or nb <= 0:
        return float("nan")
    return _inner(pa, pb) / np.sqrt(na * nb)


def cosine_matrix(pieces: Sequence) -> np.ndarray:
    """(N, N) cosines among N updates of one module given as `factored_pieces` (L, R)."""
    N = len(pieces)
    G = np.empty((N, N))
    for i in range(N):
        for j in range(i, N):
            G[i, j] = G[j, i] = _inner(pieces[i], pieces[j])
    norms = np.sqrt(np.clip(np.diag(G), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return G / np.outer(norms, norms)
