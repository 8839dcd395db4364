"""The singular value spectrum of ΔW = s · B A and three summaries of how many directions it uses.

    energy rank     smallest k with Σ_{i≤k} σ_i² ≥ 0.9 · Σ σ_i²
    stable rank     ‖ΔW‖²_F / ‖ΔW‖²_2 = Σ σ_i² / σ_1²
    effective rank  exp(H(p)), p = σ / Σ σ, H(p) = −Σ p_i log p_i   (Roy & Vetterli 2007)

All three are between 1 and rank(ΔW) for ΔW ≠ 0; for ΔW = 0 (B = 0 at init) they are 0.
"""

from __future__ import annotations

import numpy as np
import torch

from lorascope.analysis.linalg import as_float64, delta_svd
from lorascope.errors import LorascopeError


def spectrum_metrics(sigma, energy: float = 0.9) -> dict:
    """Energy, stable and effective rank of a spectrum σ (any order, non-negative), plus ‖·‖_F and σ_1."""
    s = np.sort(np.abs(np.asarray(sigma, dtype=np.float64)))[::-1]
    if not 0 < energy <= 1:
        raise LorascopeError(f"energy must be in (0, 1], got {energy}")
    total = float(np.sum(s**2))
    if total == 0.0:
        return {"sigma_1": 0.0, "fro_norm": 0.0, "energy_rank": 0, "stable_rank": 0.0, "effective_rank": 0.0}
    cum = np.cumsum(s**2) / total
    # The tolerance keeps an exact 90 % split (σ² = 0.9, 0.1) from missing by one rounding error.
    energy_rank = int(np.searchsorted(cum, energy - 1e-12) + 1)
    p = s[s > 0] / s.sum()
    return {
        "sigma_1": float(s[0]),
        "fro_norm": float(np.sqrt(total)),
        "energy_rank": energy_rank,
        "stable_rank": total / float(s[0]) ** 2,
        "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
    }


def spectrum(A, B, scaling: float = 1.0, energy: float = 0.9) -> dict:
    """Spectrum of ΔW = s · B A (A (r, in), B (out, r)) from the factored SVD.

    Returns `spectrum_metrics(σ)` plus "singular_values": σ (k,) descending, k = min(out, in, r)."""
    _, S, _ = delta_svd(A, B, scaling)
    sigma = S.numpy()
    return {"singular_values": sigma, **spectrum_metrics(sigma, energy)}


def dense_spectrum(delta, energy: float = 0.9) -> dict:
    """The same for a dense ΔW (out, in), e.g. full fine-tuning's: all min(out, in) singular values."""
    sigma = torch.linalg.svdvals(as_float64(delta, "ΔW")).numpy()
    return {"singular_values": sigma, **spectrum_metrics(sigma, energy)}
