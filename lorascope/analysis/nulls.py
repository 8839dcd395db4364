"""Null distributions of the "random" rows of the paper: many seeded draws instead of one.

    draws = random_projection_draws(W, k, n_draws=200)   # ‖U_rᵀ W V_r‖_F for 200 Haar pairs (U_r, V_r)
    draws = gaussian_phi_draws((r, n), n_draws=200)      # φ grids of 200 Gaussian pairs, (200, r, r)

Table 7's random row was one Haar draw of (U, V); its spread is as large as its mean for small k
(W_q of MiniLM, k = 1: 0.063 ± 0.050), so a single draw cannot tell ΔW's 0.080 from chance. Each
draw costs one (out, k) and one (in, k) QR and a k-column product with W: 200 draws at k = 64 on a
384 × 384 W are one (384, 12 800) matmul. Place an observed value in the draws with
`stats.null_summary`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from lorascope.analysis.stats import N_NULL
from lorascope.errors import LorascopeError

# Draws whose columns W is multiplied by at once: bounds the (in, chunk·k) block in memory.
CHUNK_COLUMNS = 8192


def _haar(n: int, k: int, m: int, g: torch.Generator) -> torch.Tensor:
    """m independent Haar-distributed (n, k) orthonormal bases, (m, n, k) float64 (QR, signs fixed)."""
    Q, R = torch.linalg.qr(torch.randn(m, n, k, generator=g, dtype=torch.float64))
    d = torch.diagonal(R, dim1=-2, dim2=-1)
    return Q * torch.where(d != 0, torch.sign(d), torch.ones(())).unsqueeze(-2)


def random_projection_draws(W, k: int, n_draws: int = N_NULL, seed: int = 0) -> np.ndarray:
    """‖U_rᵀ W V_r‖_F for `n_draws` independent Haar pairs U_r (out, k), V_r (in, k): (n_draws,).

    W (out, in) in any dtype (converted to float64). E‖U_rᵀ W V_r‖²_F = k² ‖W‖²_F / (out · in)."""
    W = torch.as_tensor(W).detach().to(torch.float64)
    if W.ndim != 2:
        raise LorascopeError(f"W must be a 2-D matrix, got shape {tuple(W.shape)}")
    out, inn = W.shape
    if not 1 <= int(k) <= min(out, inn) or n_draws < 1:
        raise LorascopeError(f"need 1 ≤ k ≤ {min(out, inn)} and n_draws ≥ 1, got k={k}, n_draws={n_draws}")
    k = int(k)
    g = torch.Generator().manual_seed(seed)
    per = max(1, CHUNK_COLUMNS // k)
    norms = []
    for lo in range(0, n_draws, per):
        m = min(per, n_draws - lo)
        U, V = _haar(out, k, m, g), _haar(inn, k, m, g)
        P = U.transpose(1, 2) @ (W @ V)  # (m, k, k): U_rᵀ W V_r for m draws, batched
        norms.append(torch.linalg.matrix_norm(P))
    return torch.cat(norms).numpy()


@functools.lru_cache(maxsize=16)
def gaussian_phi_draws(
    shape: tuple[int, int], n_draws: int = N_NULL, seed: int = 0, side: str = "right"
) -> np.ndarray:
    """φ grids between the bases of `n_draws` pairs of N(0, 1) matrices of `shape` (r, n) (side
    "right") or (n, r) ("left"): (n_draws, r, r), read-only (cached: a figure and its finding share
    the draws). The paper's Fig. 4 right panel is one such draw."""
    draws = _phi_draws(tuple(shape), n_draws, seed, side)
    draws.flags.writeable = False
    return draws


def _phi_draws(shape: tuple[int, int], n_draws: int, seed: int, side: str) -> np.ndarray:
    """`similarity.gaussian_phi_samples(shape, shape, n_draws, seed, side)` batched: the same
    matrices from the same generator (drawn in its order: X1, X2 of each pair), decomposed in one
    batched thin QR and one batched r × r SVD per side instead of 2 · n_draws factor SVDs."""
    if side not in ("left", "right"):
        raise LorascopeError(f"side must be 'left' or 'right', got {side!r}")
    g = torch.Generator().manual_seed(seed)
    X = torch.stack(
        [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(2 * n_draws)]
    )  # (2m, rows, cols): X1, X2, X1, X2, …
    if side == "right":
        X = X.transpose(1, 2)  # the right basis of X is the left basis of Xᵀ
    Q, R = torch.linalg.qr(X)  # (2m, n, r), (2m, r, r): X = Q R, R = u σ vᵀ, left basis Q u
    u = torch.linalg.svd(R)[0]
    bases = Q @ u  # (2m, n, r), columns by descending σ
    M = bases[0::2].transpose(1, 2) @ bases[1::2]  # (m, r, r): U1ᵀ U2 of each pair
    P = torch.cumsum(torch.cumsum(M * M, dim=1), dim=2)  # ‖U1[:, :i]ᵀ U2[:, :j]‖²_F
    k = M.shape[1]
    i = torch.arange(1, k + 1, dtype=torch.float64)
    return (P / torch.minimum(i[:, None], i[None, :])).numpy()


def gaussian_energy_rank(
    shape: tuple[int, int], energy: float = 0.9, n_draws: int = 5, seed: int = 0
) -> float:
    """The `energy`-rank of a same-shape N(0, 1) matrix (mean over draws): the smallest k with
    Σ_{i≤k} σ_i² ≥ energy · Σ σ²; the control for Biderman et al.'s 90 %-energy rank (384 × 384: ~196).
    Cached: findings.md asks for it once per module kind, mostly of one shape."""
    return _energy_rank(tuple(int(d) for d in shape), float(energy), int(n_draws), int(seed))


@functools.lru_cache(maxsize=16)
def _energy_rank(shape: tuple[int, int], energy: float, n_draws: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    ranks = []
    for _ in range(n_draws):
        s = torch.linalg.svdvals(torch.randn(*shape, generator=g, dtype=torch.float64))
        c = torch.cumsum(s**2, 0) / torch.sum(s**2)
        ranks.append(int(torch.searchsorted(c, torch.tensor(energy, dtype=torch.float64))) + 1)
    return float(np.mean(ranks))
