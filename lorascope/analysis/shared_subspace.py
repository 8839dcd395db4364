"""The directions N adapters share, per module: the top eigenvectors of the sum of their ΔW projectors.

Per module and side (right: the input space R^in, left: the output space R^out) adapter i brings its
orthonormal top-k_i basis U_i (n, k_i) of ΔW_i, columns by descending σ (from the factored SVD
`lorascope.delta.factored_svd`: ΔW_i is never formed), and weights w_i (k_i,) with Σ_t w_it = 1:

    unweighted    w_it = 1 / k_i                     every direction of an adapter counts the same
    σ-weighted    w_it = σ_it² / Σ_t σ_it²           ΔW_i ΔW_iᵀ / ‖ΔW_i‖²_F on its top-k_i

    M = Σ_i U_i diag(w_i) U_iᵀ = Z Zᵀ,     Z = [U_1 diag(√w_1) | … | U_N diag(√w_N)]   (n, K = Σ_i k_i)

so trace M = N: every adapter brings one unit of energy. The eigenvalues λ_1 ≥ λ_2 ≥ … of M are the
squared singular values of Z and come from the smaller of ZᵀZ (K × K) and Z Zᵀ (n × n); no
out × in matrix is formed, and memory is the n × K of Z (linear in N). The shared basis Q (n, keep)
holds the top eigenvectors. For m = 1 … min(n, K) (beyond, the share is 1):

    energy share      E(m)   = Σ_{t ≤ m} λ_t / N                      (the "universal subspace" curve)
    coverage          c_i(m) = ‖Q_mᵀ U_i diag(√w_i)‖²_F ∈ [0, 1]      (adapter i inside the top-m)

and the mean of c_i(m) over the adapters is E(m). The floor is the same curve for N independent
uniformly random subspaces of the same sizes k_i and weights (`subspace_floor`: seeded Monte Carlo, the
mean and the band mean ± 3 sd over the trials). Exact: a fixed m-dimensional subspace covers an
adapter drawn independently of it by E[c(m)] = m / n, for any weights (the floor of `project`); and
E(m) = 1 from m = min(n, K) on. Read against the floor:

    knee         the first m where E(m) − F̄(m) reaches 95 % of its largest value (the planted dimension,
                 for planted adapters)
    shared_dims  how many leading λ_t lie above the band's top of the floor's λ_t (directions shared
                 beyond chance)

Pure tensors in, dataclasses out; `lorascope.compare.subspaces` loads the runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from lorascope.analysis.linalg import RANK_RTOL, numerical_rank, one_thread
from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

KEEP_FACTOR = 4  # shared directions kept (basis, coverage) unless asked: 4 × the largest k_i
GRAM_FLOAT32 = 2**34  # n · K · min(n, K) above which the Gram product is taken in float32 (3× faster on
# the CPU; entries good to ~1e-6 relative, which the energy shares do not notice), below it in float64
EIGH_MAX = 2048  # an n × n eigenproblem up to this size is solved whole (vectors too); above, every
# eigenvalue comes from eigvalsh (in float32 when M is: 2-3× faster, λ good to ~1e-6 λ_1) and the top
# eigenvectors from subspace iteration on M's products, stopped by the exact eigenvalues (`_top_vectors`)
GRAM_BLOCKS = 8  # Z Zᵀ by row blocks, only the lower triangle eigvalsh reads: 9/16 of a whole product
VECTOR_TOL = {torch.float64: 1e-12, torch.float32: 1e-4}  # `_top_vectors`' stop: the energy its Ritz
# vectors miss, max_m Σ_{t ≤ m} (λ_t − θ_t) / Σ λ, at most this (so coverage means stay within it of E)
RESIDUAL_TOL = {torch.float64: 1e-10}  # and in float64 (small problems) each Ritz pair's residual
# ‖M q − θ q‖ ≤ this · λ_1 too: vectors accurate even where eigenvalues nearly coincide
VECTOR_PASSES = 60  # ... or after this many passes (logged)


def adapter_weights(S: torch.Tensor, weighted: bool) -> torch.Tensor:
    """w (k,) of one adapter's top-k directions from its singular values S (k,): 1/k each, or σ²/Σσ²."""
    S = torch.as_tensor(S, dtype=torch.float64)
    k = int(S.shape[0])
    if k == 0:
        raise LorascopeError("an adapter with no direction (ΔW = 0) has no subspace to share")
    if not weighted:
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    energy = S.square()
    total = float(energy.sum())
    if not total > 0:
        raise LorascopeError("σ-weighting an adapter whose ΔW is zero")
    return energy / total


def factored_bases(
    A: torch.Tensor, B: torch.Tensor, scaling: torch.Tensor, side: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The factored SVD (`lorascope.delta.factored_svd`) of a batch of modules of one shape at once:
    (U (b, n, r), S (b, r)), U the right (side "right", n = in) or left (n = out) singular vectors of
    ΔW_j = s_j B_j A_j, σ descending, for A (b, r, in), B (b, out, r), scaling (b,), float64: two
    batched QRs and one batched r × r SVD,

        B_j = Q_B R_B,  A_jᵀ = Q_A R_A,  R_B R_Aᵀ = u σ vᵀ,  ΔW_j = |s_j| (±Q_B u) σ (Q_A v)ᵀ,

    never forming ΔW. Columns past a module's numerical rank are orthonormal but arbitrary, as there."""
    A = torch.as_tensor(A).to(torch.float64)
    B = torch.as_tensor(B).to(torch.float64)
    s = torch.as_tensor(scaling, dtype=torch.float64).reshape(-1)
    if A.ndim != 3 or B.ndim != 3 or A.shape[0] != B.shape[0] or A.shape[1] != B.shape[2]:
        raise LorascopeError(
            f"want A (b, r, in) and B (b, out, r), got {tuple(A.shape)} and {tuple(B.shape)}"
        )
    Q_B, R_B = torch.linalg.qr(B)
    Q_A, R_A = torch.linalg.qr(A.transpose(1, 2).contiguous())
    u, sigma, vh = torch.linalg.svd(R_B @ R_A.transpose(1, 2), full_matrices=False)
    S = s.abs()[:, None] * sigma
    if side == "right":
        return Q_A @ vh.transpose(1, 2), S
    U = Q_B @ u
    return torch.where(s[:, None, None] < 0, -U, U), S


def stack(bases: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Z = [U_1 diag(√w_1) | … | U_N diag(√w_N)] (n, Σ k_i), float64."""
    if not len(bases):
        raise LorascopeError("no adapter bases to stack")
    n = int(bases[0].shape[0])
    blocks = []
    for i, (U, w) in enumerate(zip(bases, weights, strict=True)):
        U = torch.as_tensor(U)
        w = torch.as_tensor(w, dtype=torch.float64)
        if U.ndim != 2 or U.shape[0] != n or U.shape[1] != w.shape[0] or U.shape[1] == 0:
            raise LorascopeError(
                f"basis {i} has shape {tuple(U.shape)} and {w.shape[0]} weights; want (n={n}, k ≥ 1) and k"
            )
        blocks.append(U.to(torch.float64) * w.sqrt()[None, :])
    return torch.cat(blocks, dim=1)


@dataclass
class SharedSubspace:
    """The directions N adapters of one module share (see the module docstring)."""

    n: int  # the dimension of the space (in for the right side, out for the left)
    widths: list[int]  # k_i, the directions each adapter brings
    eigenvalues: np.ndarray  # λ (min(n, K),), descending, Σ = N
    basis: torch.Tensor  # Q (n, keep), float64, the top `keep` shared directions
    coverage: np.ndarray  # (N, keep): c_i(m) for m = 1 … keep

    @property
    def adapters(self) -> int:
        return len(self.widths)

    @property
    def energy(self) -> np.ndarray:
        """E(m) for m = 1 … len(eigenvalues)."""
        return np.cumsum(self.eigenvalues) / self.adapters

    def energy_at(self, m: int) -> float:
        e = self.energy
        return float(e[min(m, len(e)) - 1]) if m >= 1 else 0.0


def shared_subspace(
    bases: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], keep: int | None = None
) -> SharedSubspace:
    """The shared subspace of N adapters' bases U_i (n, k_i) with weights w_i (k_i,), Σ w_i = 1 each.

    keep: the shared directions returned in `basis` and `coverage` (default KEEP_FACTOR × the largest
    k_i); never more than M's numerical rank (λ_t > 1e-5 λ_1). The eigenvalues are always all of them."""
    if len(bases) < 1:
        raise LorascopeError("a shared subspace needs at least one adapter")
    return shared_subspace_of(stack(bases, weights), [int(U.shape[1]) for U in bases], keep)


def shared_subspace_of(Z: torch.Tensor, widths: Sequence[int], keep: int | None = None) -> SharedSubspace:
    """`shared_subspace` of the stacked Z = [U_1 diag(√w_1) | …] (n, Σ k_i) (`stack`), float64 or float32
    (the many-adapter route: built once in float32, no float64 copy of Z when the products are large)."""
    widths = [int(k) for k in widths]
    if sum(widths) != Z.shape[1] or min(widths, default=0) < 1:
        raise LorascopeError(f"widths {widths[:4]}… do not add up to Z's {Z.shape[1]} columns")
    keep = KEEP_FACTOR * max(widths) if keep is None else keep
    lam, Q = spectrum(Z, keep)
    keep = Q.shape[1]
    C = (Q.T.to(Z.dtype) @ Z).square().to(torch.float64)  # (keep, K): each weighted column's energy in
    # each shared direction; summed per adapter, then over m
    owner = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))
    per = torch.zeros(keep, len(widths), dtype=torch.float64).index_add_(1, owner, C)
    coverage = per.cumsum(0).T.contiguous().numpy()
    return SharedSubspace(int(Z.shape[0]), widths, lam, Q, coverage)


def spectrum(Z: torch.Tensor, keep: int | None = None, eigenvalues_only: bool = False):
    """(λ (min(n, K),) descending as numpy, Q (n, keep) top eigenvectors of Z Zᵀ, float64) for Z (n, K).

    K ≤ n: from ZᵀZ (K × K); Q = Z v / √λ. K > n: from Z Zᵀ (n × n, its lower triangle, `gram_lower`):
    a whole eigh up to EIGH_MAX, above it eigvalsh for the values and subspace iteration for the top
    vectors (`_top_vectors`). keep is capped at the numerical rank of M. eigenvalues_only: Q is None
    (the floor's trials). Products (and, past EIGH_MAX, M and eigvalsh) in float32 once n · K · min(n, K)
    exceeds GRAM_FLOAT32; Z itself is never copied to float64 then."""
    n, K = Z.shape
    flops = n * K * min(n, K)
    small = flops < 5e7  # threads cost more than they give
    low = flops > GRAM_FLOAT32
    Zc = Z.to(torch.float32 if low else torch.float64)
    # Products on the threads torch has; every eigendecomposition on one: LAPACK's tridiagonal reduction
    # gains little from a second thread and loses up to 10× when another process shares the cores
    # (measured on 2 cores: eigh of a 1600² matrix 0.9 s on one thread, 7-8 s on two).
    with one_thread() if small else nullcontext():
        if K <= n:
            G = (Zc.T @ Zc).to(torch.float64)
            with one_thread():
                if eigenvalues_only:
                    return _descending(torch.linalg.eigvalsh(G)), None
                lam, V = torch.linalg.eigh(G)
            lam, V = lam.flip(0).clamp_min(0.0), V.flip(1)
            keep = _keep(lam, keep)
            Q = (Zc @ V[:, :keep].to(Zc.dtype)).to(torch.float64) / lam[:keep].sqrt()[None, :]
            return lam.numpy(), _reorthonormalise(Q)
        M = gram_lower(Zc)
        del Zc
        if n <= EIGH_MAX or not low:
            M = M.to(torch.float64)
        with one_thread():
            if eigenvalues_only:
                return _descending(torch.linalg.eigvalsh(M).to(torch.float64)), None
            if n <= EIGH_MAX:
                lam, V = torch.linalg.eigh(M)
                lam, V = lam.flip(0).clamp_min(0.0), V.flip(1)
                return lam.numpy(), V[:, : _keep(lam, keep)].contiguous()
            lam = torch.linalg.eigvalsh(M).to(torch.float64).flip(0).clamp_min(0.0)
        keep = _keep(lam, keep)
        M = torch.tril(M)  # the diagonal blocks hold both triangles: keep the lower, mirror it
        M += torch.tril(M, -1).T
        return lam.numpy(), _top_vectors(M, lam, keep)


def gram_lower(Z: torch.Tensor, blocks: int = GRAM_BLOCKS) -> torch.Tensor:
    """M = Z Zᵀ (n, n) in Z's dtype with only its lower triangle (and diagonal blocks) filled: the part
    eigvalsh / eigh read (UPLO="L"), by row blocks M[b, :b+1] = Z_b Z_{≤b}ᵀ: (blocks + 1) / (2 blocks)
    of a whole product's flops."""
    n = int(Z.shape[0])
    M = torch.zeros(n, n, dtype=Z.dtype)
    edges = [n * b // blocks for b in range(blocks + 1)]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        M[a:b, :b] = Z[a:b] @ Z[:b].T
    return M


def _top_vectors(M: torch.Tensor, lam: torch.Tensor, keep: int, seed: int = 0) -> torch.Tensor:
    """Q (n, keep) float64: the top eigenvectors of the symmetric M (n, n) by subspace iteration with
    Rayleigh–Ritz on a block of 2·keep, given all of M's eigenvalues λ (descending, from eigvalsh).

    The Ritz values θ_t ≤ λ_t, and Σ_{t ≤ m} θ_t is exactly the energy the Ritz vectors Q_m capture, so
    the stop is exact: max_m Σ_{t ≤ m} (λ_t − θ_t) ≤ VECTOR_TOL[dtype] · Σ λ (the coverage means then
    stay within that of E(m)); after VECTOR_PASSES passes the shortfall reached is logged."""
    n = int(M.shape[0])
    b = min(n, 2 * keep)
    g = torch.Generator().manual_seed(seed)
    X = torch.linalg.qr(M @ torch.randn(n, b, generator=g, dtype=torch.float64).to(M.dtype))[0]
    tol = VECTOR_TOL.get(M.dtype, VECTOR_TOL[torch.float32]) * float(lam.sum())
    for _ in range(VECTOR_PASSES):
        Y = M @ X
        H = (X.T @ Y).to(torch.float64)
        with one_thread():
            theta, W = torch.linalg.eigh((H + H.T) / 2)
        theta, W = theta.flip(0), W.flip(1)
        short = float((lam[:keep] - theta[:keep]).cumsum(0).max())
        if short <= tol and _residual(X, Y, theta, W, keep) <= RESIDUAL_TOL.get(M.dtype, np.inf) * lam[0]:
            break
        X = torch.linalg.qr(Y)[0]
    else:
        log.info("top %d shared directions: %d passes left %.2g of the energy uncaptured (tolerance %.2g)",
                 keep, VECTOR_PASSES, short / float(lam.sum()), tol / float(lam.sum()))  # fmt: skip
    return _reorthonormalise(X.to(torch.float64) @ W[:, :keep])


def _residual(X, Y, theta, W, keep: int) -> float:
    """max_t ‖M q_t − θ_t q_t‖ over the top-keep Ritz pairs q_t = X w_t, with Y = M X."""
    Wk = W[:, :keep].to(X.dtype)
    return float((Y @ Wk - (X @ Wk) * theta[:keep].to(X.dtype)[None, :]).norm(dim=0).max())


def _descending(lam: torch.Tensor) -> np.ndarray:
    return lam.flip(0).clamp_min(0.0).numpy()


def _keep(lam: torch.Tensor, keep: int | None) -> int:
    rank = numerical_rank(lam, RANK_RTOL)
    if rank == 0:
        raise LorascopeError("the adapters' bases are all zero: nothing is shared")
    return rank if keep is None else max(1, min(int(keep), rank))


def _reorthonormalise(Q: torch.Tensor) -> torch.Tensor:
    """Q from Z v / √λ is orthonormal up to rounding that grows as λ shrinks: one QR, signs kept."""
    q, r = torch.linalg.qr(Q)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))[None, :]


def project(basis: torch.Tensor, U: torch.Tensor, w: torch.Tensor) -> np.ndarray:
    """c(m), m = 1 … keep: how much of an adapter (basis U (n, k), weights w, Σ w = 1) lies inside the
    top-m shared directions Q = basis (n, keep). For an adapter drawn independently of Q,
    E[c(m)] = m / n exactly (`subspace_floor.projection_floor`)."""
    Q = torch.as_tensor(basis).to(torch.float64)
    U = torch.as_tensor(U).to(torch.float64)
    if Q.shape[0] != U.shape[0]:
        raise LorascopeError(f"the shared basis lives in R^{Q.shape[0]}, the adapter's in R^{U.shape[0]}")
    w = torch.as_tensor(w, dtype=torch.float64)
    C = (Q.T @ (U * w.sqrt()[None, :])).square().sum(1)
    return C.cumsum(0).numpy()
