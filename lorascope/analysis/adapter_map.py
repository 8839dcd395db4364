"""Adapter maps: how alike N adapters of one base are, through the subspaces of ΔW.

Per module, every adapter a gets one orthonormal basis U_a (n, k_a), columns by descending σ
(`top_basis`), and every pair gets

    score(a, b) = (1 / k_ab) Σ_{t=1}^{k_ab} φ(U_a, U_b, t, t),    φ(t, t) = ‖U_a[:, :t]ᵀ U_b[:, :t]‖²_F / t,

with k_ab = min(k_a, k_b) ≤ k. The score depends on ΔW only, not on how it is factored:
B → B R, A → R⁻¹ A leaves it unchanged, while a cosine between flattened A‖B vectors does not.
For independent uniformly random subspaces E[φ(t, t)] = t / n, so the random floor of the
score is (k_ab + 1) / (2 n) (`random_floor`).

Cost (`map_scores`): the N bases of a module are stacked into Z (n, N·k) and one matmul forms
G = Zᵀ Z, whose (a, b) block is U_aᵀ U_b; cumulative sums reduce every block at once. No Python
loop over pairs; O(n N² k²) flops and O(N² k²) memory per module (in row blocks above a budget).
Arrays in, arrays out; the comparison layer (`lorascope.compare.maps`) loads the runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lorascope.analysis.factors import get_factor
from lorascope.analysis.linalg import RANK_RTOL, numerical_rank
from lorascope.errors import LorascopeError

# Which basis stands for a module: ΔW's input (right) or output (left) singular vectors, the
# right singular vectors of A (the paper's U_A), or the left ones of B.
MAP_FACTORS = ("dW-right", "dW-left", "A", "B")

# Bytes of one float64 work array per block of Gram rows in `map_scores` (four such live at once).
BLOCK_BYTES = 2**26


def top_basis(factor: str, k: int, delta, *, rtol: float = RANK_RTOL) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal top-k basis of one module: (basis (n, k'), σ (k',)), float64, σ descending.

    delta: the module's ΔW of the protocol (`lorascope.delta`):
      factor "dW-right": right singular vectors of ΔW, n = in (`delta.svd(k)`: from the factors for
                         LoRA, ΔW never formed; truncated for a dense ΔW)
      factor "dW-left":  left singular vectors of ΔW, n = out
      factor "A":        right singular vectors of A, n = in;  "B": left singular vectors of B, n = out
                         (`delta.factors`: a dense ΔW has none)
    k' = min(k, numerical rank), the numerical rank counting σ > rtol · σ_1; k' = 0 when the matrix is zero.
    """
    if factor not in MAP_FACTORS:
        raise LorascopeError(
            f"unknown factor {factor!r} for an adapter map: choose one of {', '.join(MAP_FACTORS)}"
        )
    if int(k) < 1:
        raise LorascopeError(f"k must be at least 1, got {k}")
    basis, S = get_factor(factor).basis(delta, k=int(k))
    keep = numerical_rank(S, rtol)
    return basis[:, :keep], S[:keep]


def map_scores(
    bases: Sequence, k: int | None = None, *, block_bytes: int = BLOCK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """Mean φ(t, t) over t ≤ k_ab for every pair among N bases of one module.

    bases: N orthonormal matrices U_a (n, k_a), 1 ≤ k_a ≤ k, columns by descending σ (float32
    storage is fine: the products are taken in float64). k defaults to max k_a.
    Returns (score (N, N) float64, k_pair (N, N) int64), k_pair[a, b] = min(k_a, k_b) and

        score[a, b] = (1 / k_ab) Σ_{t ≤ k_ab} D_ab[t] / t,   D_ab[t] = Σ_{p, q ≤ t} (U_aᵀ U_b)[p, q]²

    Stacks the bases (`stack_bases`) and reduces their Gram matrix (`gram_scores`).
    """
    if not len(bases):
        raise LorascopeError("map_scores needs at least one basis")
    widths = [int(U.shape[1]) for U in bases]
    k = int(k or max(widths))
    return gram_scores(stack_bases(bases, k), widths, k, block_bytes=block_bytes)


def stack_bases(bases: Sequence, k: int, dtype=torch.float32) -> torch.Tensor:
    """Z = [U_1 | … | U_N] (n, N·k): basis a in columns a·k .. a·k + k_a − 1, zero-padded to k."""
    n = int(bases[0].shape[0])
    Z = torch.zeros(n, len(bases) * k, dtype=dtype)
    for a, U in enumerate(bases):
        if U.ndim != 2 or U.shape[0] != n or not 1 <= U.shape[1] <= k:
            raise LorascopeError(f"basis {a} has shape {tuple(U.shape)}; all bases must be (n={n}, 1..{k})")
        Z[:, a * k : a * k + U.shape[1]] = torch.as_tensor(U)
    return Z


def gram_scores(
    Z: torch.Tensor, widths: Sequence[int], k: int, *, block_bytes: int = BLOCK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """`map_scores` from the stacked bases Z (n, N·k) (`stack_bases`) and their widths k_a.

    G = Zᵀ Z holds M_ab = U_aᵀ U_b as block (a, b); D_ab is the diagonal of
    cumsum(cumsum(M_ab ∘ M_ab, 0), 1): zero padding adds nothing to it and is never summed past k_ab.
    G is symmetric, so only its blocks b ≥ a are formed, a block of Gram rows at a time (at most
    `block_bytes`, and at least GRAM_ROW_BLOCKS blocks: ~(1 + 1/blocks)/2 of the whole product). A
    float32 Z whose Gram costs more than GRAM_F32_FLOPS is multiplied in float32 over GRAM_CHUNK rows
    of Z at a time, the chunks summed in float64: products of float32 numbers are exact in float64,
    and a chunk's float32 round-off stays at ε₃₂ of its own partial sums, so G equals the float64
    product to ~1e-7 at half its cost (and may change by as much with the padding of Z). Below that
    cost, and for a float64 Z, the products are float64.
    No loop over pairs; score is symmetric, its diagonal 1 up to rounding.
    """
    N = len(widths)
    if Z.ndim != 2 or Z.shape[1] != N * k or not all(1 <= w <= k for w in widths):
        raise LorascopeError(f"Z {tuple(Z.shape)} does not hold {N} bases of 1..{k} columns")
    if Z.dtype != torch.float32 or Z.shape[0] * Z.shape[1] ** 2 < GRAM_F32_FLOPS:
        Z = Z.to(torch.float64)
    kw = torch.tensor([int(w) for w in widths])
    k_pair = torch.minimum(kw[:, None], kw[None, :])  # (N, N)
    inv_t = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)
    score = torch.empty(N, N, dtype=torch.float64)
    rows = max(1, min(block_bytes // (8 * N * k * k), -(-N // GRAM_ROW_BLOCKS)))  # adapters per block
    for lo in range(0, N, rows):
        hi = min(N, lo + rows)
        G = _gram_block(Z, lo * k, hi * k)  # (b·k, (N − lo)·k): rows lo..hi against columns lo..N
        M2 = (G * G).reshape(hi - lo, k, N - lo, k).permute(0, 2, 1, 3)  # (b, N − lo, k, k): (M_ab)²
        del G
        D = M2.cumsum(-1).cumsum(-2).diagonal(dim1=-2, dim2=-1)  # (b, N − lo, k): D_ab[t]
        cum = (D * inv_t).cumsum(-1)  # Σ_{t' ≤ t} φ(t', t')
        kb = k_pair[lo:hi, lo:]
        block = cum.gather(-1, (kb - 1)[..., None])[..., 0] / kb
        score[lo:hi, lo:] = block
        score[lo:, lo:hi] = block.T
    score = (score + score.T) / 2  # the diagonal blocks: φ(U_a, U_b) = φ(U_b, U_a) up to rounding
    return score.numpy(), k_pair.numpy().astype(np.int64)


GRAM_ROW_BLOCKS = 8  # blocks of Gram rows at least: the blocks below the diagonal are never formed
GRAM_CHUNK = 256  # rows of Z per float32 product, summed in float64
GRAM_F32_FLOPS = 1e9  # n (N k)² from which the Gram is formed in float32 chunks (~0.02 s in float64 below)


def _gram_block(Z: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    """Z[:, c0:c1]ᵀ Z[:, c0:] in float64; a float32 Z in float32 over GRAM_CHUNK rows at a time."""
    if Z.dtype == torch.float64:
        return Z[:, c0:c1].T @ Z[:, c0:]
    G = torch.zeros(c1 - c0, Z.shape[1] - c0, dtype=torch.float64)
    for r0 in range(0, Z.shape[0], GRAM_CHUNK):
        chunk = Z[r0 : r0 + GRAM_CHUNK, c0:]
        G += (chunk[:, : c1 - c0].T @ chunk).double()
    return G


def random_floor(k_pair, n: int) -> np.ndarray:
    """E[score] for independent uniformly random subspaces of R^n: mean of t / n over t ≤ k_ab,
    i.e. (k_ab + 1) / (2 n), elementwise on k_pair (any shape)."""
    if n < 1:
        raise LorascopeError(f"random_floor needs n ≥ 1, got {n}")
    return (np.asarray(k_pair, dtype=np.float64) + 1.0) / (2.0 * n)


def map_linkage(similarity) -> np.ndarray:
    """Average-linkage (UPGMA) tree of N adapters on the distance 1 − similarity (N, N).

    Returns scipy's linkage matrix (N − 1, 4); `scipy.cluster.hierarchy.leaves_list` gives the
    dendrogram order, `fcluster(Z, g, "maxclust")` g groups."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    S = np.asarray(similarity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 2:
        raise LorascopeError(f"map_linkage needs an N × N similarity with N ≥ 2, got shape {S.shape}")
    D = 1.0 - (S + S.T) / 2
    np.fill_diagonal(D, 0.0)
    # 1 − φ can be −1e-16 for identical subspaces; a distance is never negative.
    return linkage(squareform(np.clip(D, 0.0, None), checks=False), method="average")


def leaf_order(Z) -> list[int]:
    """The dendrogram's left-to-right order of the N leaves of linkage matrix Z."""
    from scipy.cluster.hierarchy import leaves_list

    return [int(i) for i in leaves_list(np.asarray(Z))]
