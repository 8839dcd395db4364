"""The floor of the shared-subspace curves: what N independent random adapters share by chance.

For N independent uniformly random subspaces of R^n of the real adapters' sizes k_i and weights w_i,
the energy curve E(m) and the eigenvalues λ_t of M = Σ_i U_i diag(w_i) U_iᵀ (`shared_subspace`) by
seeded Monte Carlo: their mean and the band mean ± BAND_SD sd over the trials. Exact where it exists:
a fixed m-dimensional subspace covers an independent random adapter by E[c(m)] = m / n
(`projection_floor`). Read against it: `knee` (where the real curve stops gaining on the floor) and
`shared_dims` (how many λ_t lie above the band).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lorascope.analysis import shared_subspace as ss
from lorascope.analysis.linalg import one_thread
from lorascope.errors import LorascopeError
from lorascope.module_pool import module_map

BAND_SD = 3.0  # the Monte Carlo band: mean ± BAND_SD standard deviations over the trials
TRIALS = 16  # Monte Carlo trials of the floor unless asked


@dataclass
class SubspaceFloor:
    """E(m) and λ_t for N independent uniformly random subspaces of the sizes and weights of the real
    adapters: mean, standard deviation and the band mean ± BAND_SD sd over `trials` seeded draws."""

    n: int
    widths: list[int]
    trials: int
    seed: int
    energy_mean: np.ndarray  # (L,) with L = min(n, K)
    energy_sd: np.ndarray
    eig_mean: np.ndarray
    eig_sd: np.ndarray

    @property
    def energy_lo(self) -> np.ndarray:
        return np.clip(self.energy_mean - BAND_SD * self.energy_sd, 0.0, 1.0)

    @property
    def energy_hi(self) -> np.ndarray:
        return np.clip(self.energy_mean + BAND_SD * self.energy_sd, 0.0, 1.0)

    @property
    def eig_hi(self) -> np.ndarray:
        return self.eig_mean + BAND_SD * self.eig_sd

    def contains(self, energy, atol: float = 1e-9) -> bool:
        """Whether a curve E(m) lies inside the band at every m the floor has (rounding allowed)."""
        e = np.asarray(energy)[: len(self.energy_mean)]
        L = len(e)
        return bool(np.all(e >= self.energy_lo[:L] - atol) and np.all(e <= self.energy_hi[:L] + atol))

    def at(self, m: int) -> tuple[float, float, float]:
        """(mean, lo, hi) of E(m)."""
        i = min(m, len(self.energy_mean)) - 1
        return float(self.energy_mean[i]), float(self.energy_lo[i]), float(self.energy_hi[i])


def random_floor(
    n: int, weights: Sequence[torch.Tensor], trials: int = TRIALS, seed: int = 0
) -> SubspaceFloor:
    """The floor of the energy curve: N independent uniformly random subspaces of R^n, adapter i of
    dimension k_i = len(weights[i]) with weights weights[i], `trials` draws seeded by seed, seed + 1, …

    A uniformly random k-dimensional subspace is the span of an n × k Gaussian matrix (its Q factor);
    the order of its columns is arbitrary, so any weight profile applies to it."""
    if trials < 2:
        raise LorascopeError(f"the Monte Carlo floor needs at least 2 trials, got {trials}")
    widths = [int(len(w)) for w in weights]
    if any(k > n for k in widths):
        raise LorascopeError(f"an adapter brings more directions ({max(widths)}) than the space has ({n})")
    K = sum(widths)
    # float32 draws where `spectrum` takes the products in float32 anyway (the same distribution)
    dtype = torch.float32 if n * K * min(n, K) > ss.GRAM_FLOAT32 else torch.float64
    sqrt_w = torch.cat([torch.as_tensor(w, dtype=torch.float64).sqrt() for w in weights]).to(dtype)

    def trial(t: int) -> np.ndarray:
        g = torch.Generator().manual_seed(seed + t)
        Z = torch.empty(n, K, dtype=dtype)
        col = 0
        for k, count in _runs(widths):  # one batched QR per run of equal widths
            X = torch.randn(count, n, k, generator=g, dtype=dtype)
            with one_thread():
                Q = torch.linalg.qr(X)[0]  # (count, n, k)
            Z[:, col : col + count * k] = Q.permute(1, 0, 2).reshape(n, count * k)
            col += count * k
            del X, Q
        Z *= sqrt_w[None, :]
        return ss.spectrum(Z, eigenvalues_only=True)[0]

    eigs = module_map(trial, list(range(trials)))  # the trials are independent: one per core
    energies = [np.cumsum(lam) / len(widths) for lam in eigs]
    E, L = np.stack(energies), np.stack(eigs)
    return SubspaceFloor(n, widths, trials, seed, E.mean(0), E.std(0, ddof=1), L.mean(0), L.std(0, ddof=1))


def _runs(widths: Sequence[int]) -> list[tuple[int, int]]:
    """[(k, count)] for consecutive equal widths: [16, 16, 8] -> [(16, 2), (8, 1)]."""
    out: list[list[int]] = []
    for k in widths:
        if out and out[-1][0] == k:
            out[-1][1] += 1
        else:
            out.append([k, 1])
    return [(k, c) for k, c in out]


KNEE_SHARE = 0.95  # the knee: the first m whose excess over the floor reaches this share of the largest


def knee(result: ss.SharedSubspace, floor: SubspaceFloor) -> int:
    """The first m (from 1) at which E(m) − F̄(m), the excess over chance, reaches KNEE_SHARE of its
    largest value: where the curve stops gaining on the floor. (argmax alone would wander along the
    plateau that follows a planted subspace, where the remaining directions are as random as the floor's.)"""
    e = result.energy
    L = min(len(e), len(floor.energy_mean))
    excess = e[:L] - floor.energy_mean[:L]
    top = float(excess.max())
    if not top > 0:
        return int(np.argmax(excess)) + 1
    return int(np.argmax(excess >= KNEE_SHARE * top)) + 1


def shared_dims(result: ss.SharedSubspace, floor: SubspaceFloor) -> int:
    """How many leading eigenvalues λ_1 … λ_d lie above the top of the floor's band at the same t."""
    lam = result.eigenvalues
    hi = floor.eig_hi[: len(lam)]
    above = lam[: len(hi)] > hi
    return int(len(above) if above.all() else np.argmin(above))


def projection_floor(n: int, keep: int) -> np.ndarray:
    """m / n for m = 1 … keep: the exact mean coverage of an independent random adapter."""
    return np.arange(1, keep + 1, dtype=np.float64) / n
