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


def _wishart(dof: int, r: int, m: int, rng: np.random.Generator) -> torch.Tensor:
    """m draws of Σ_k g_k g_kᵀ over `dof` N(0, I_r) vectors, (m, r, r): Bartlett's A Aᵀ (A lower
    triangular, A_ii² ~ χ²(dof − i + 1), A_ij ~ N(0, 1) below) when dof ≥ r, r² numbers instead of dof·r."""
    if dof < r:
        G = torch.from_numpy(rng.standard_normal((m, dof, r)))
        return G.transpose(1, 2) @ G
    A = np.tril(rng.standard_normal((m, r, r)), -1)
    A[:, np.arange(r), np.arange(r)] = np.sqrt(rng.chisquare(dof - np.arange(r), size=(m, r)))
    A = torch.from_numpy(A)
    return A @ A.transpose(1, 2)


@functools.lru_cache(maxsize=64)
def random_subspace_phi_draws(
    n: int, r: int, top_j: int, n_draws: int = N_NULL, cells: int = 1, seed: int = 0
) -> np.ndarray:
    """The null of a φ(r, j) curve: (n_draws, top_j), draw d holding, for j = 1..top_j, the mean over
    `cells` independent pairs of φ(U_r, V_j) between a Haar r-dim subspace U_r of R^n and the top-j
    of an independent basis V (a mean over seeds and layers is the mean of that many cells).

    By rotation invariance V may be the first top_j coordinates: ‖U_rᵀ V_j‖²_F = Σ_{k ≤ j} ‖U_r[k]‖²,
    so φ(r, j) = cumsum of U_r's squared row norms / min(r, j); E φ(r, j) = max(r, j)/n exactly."""
    if not 1 <= r <= n or not 1 <= top_j <= n or n_draws < 1 or cells < 1:
        raise LorascopeError(f"need 1 ≤ r, top_j ≤ n and n_draws, cells ≥ 1, got n={n}, r={r}, top_j={top_j}")
    rng = np.random.default_rng(seed)
    total, per = n_draws * cells, max(1, CHUNK_COLUMNS // r)
    rows = []
    for lo in range(0, total, per):
        # U_r = G (GᵀG)^(-1/2) for Gaussian G (n, r): row k's squared norm is g_kᵀ (GᵀG)⁻¹ g_k, one
        # Cholesky of the r × r Gram matrix instead of a QR of G.
        m = min(per, total - lo)
        G = torch.from_numpy(rng.standard_normal((m, top_j, r)))  # the rows V_j sees
        L = torch.linalg.cholesky(G.transpose(1, 2) @ G + _wishart(n - top_j, r, m, rng))
        X = torch.linalg.solve_triangular(L, G.transpose(1, 2), upper=False)  # (m, r, top_j)
        rows.append((X**2).sum(1))
    overlap = torch.cumsum(torch.cat(rows), dim=1)  # (draws·cells, top_j): ‖U_rᵀ V_j‖²_F
    phi = overlap / torch.minimum(torch.arange(1, top_j + 1, dtype=torch.float64), torch.tensor(float(r)))
    draws = phi.reshape(n_draws, cells, top_j).mean(dim=1).numpy()
    draws.flags.writeable = False  # cached: a figure and its finding share the draws
    return draws
