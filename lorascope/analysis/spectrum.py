"""The singular value spectrum of ΔW and three summaries of how many directions it uses.

    energy rank     smallest k with Σ_{i≤k} σ_i² ≥ 0.9 · Σ σ_i²
    stable rank     ‖ΔW‖²_F / ‖ΔW‖²_2 = Σ σ_i² / σ_1²
    effective rank  exp(H(p)), p = σ / Σ σ, H(p) = −Σ p_i log p_i   (Roy & Vetterli 2007)

All three are between 1 and rank(ΔW) for ΔW ≠ 0; for ΔW = 0 (B = 0 at init) they are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lorascope.delta import Delta
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


@dataclass(frozen=True)
class Spectrum:
    """σ(ΔW) and its summaries (`spectrum_metrics`). Reads like the dict it replaces: res["stable_rank"]."""

    singular_values: np.ndarray  # (k,) descending
    sigma_1: float
    fro_norm: float
    energy_rank: int
    stable_rank: float
    effective_rank: float

    def metrics(self) -> dict:
        """The five summaries as a dict (a table row), without the singular values."""
        return {f: getattr(self, f) for f in METRICS}

    def __getitem__(self, name: str):
        return getattr(self, name)


METRICS = ("sigma_1", "fro_norm", "energy_rank", "stable_rank", "effective_rank")


def spectrum(delta: Delta, energy: float = 0.9) -> Spectrum:
    """Spectrum of a ΔW of the protocol (`lorascope.delta`): every σ it has, `delta.svd()` — from
    the factors for LoRA (k = min(out, in, r)), all min(out, in) of a dense ΔW."""
    sigma = delta.svd()[1].numpy()
    return Spectrum(sigma, **spectrum_metrics(sigma, energy))
