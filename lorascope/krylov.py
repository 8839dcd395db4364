"""Block Krylov: the top-k singular triplets of a matrix given by its products, the CPU-thread
policy of small decompositions (`one_thread`), and W in float64 a block of rows at a time
(`float64_rows`). A leaf (torch only), below the ΔW protocol (`lorascope.delta`) and the truncated
SVDs of W and W + ΔW (`lorascope.analysis.truncated`).

The top-k come from a randomized block Krylov method (block Lanczos with full
reorthogonalisation and Rayleigh–Ritz; Musco & Musco 2015, "Randomized block Krylov methods
for stronger and faster approximate SVD"): with a seeded Gaussian Ω (in, b), b = min(k + 8, 48),

    K = [M Ω, (M Mᵀ) M Ω, (M Mᵀ)² M Ω, ...] = Q (orthonormal, out × t·b),   Z = Mᵀ Q (in × t·b)

Qᵀ M = Zᵀ, so the Ritz values are the square roots of the eigenvalues of the Gram matrix
G = Zᵀ Z; blocks are added until the top-k Ritz values σ² change by less than `tol` · σ₁² from
one block to the next (or Q spans the whole space, or stops growing, where the result is exact).
With G = Û Σ² Ûᵀ, U = Q Û_k and V = Z Û_k Σ_k⁻¹ (= Mᵀ U Σ⁻¹). Each block costs two products with M, i.e.
O(out · in · b); a dense SVD costs O(out · in · min(out, in)).

Everything is float64 by default, on the CPU or on CUDA (`device`): the same code and dtype on both,
so the numbers agree to rounding. `dtype=float32` builds the space in float32 (the Gram matrix and
its eigh stay float64), for a caller that computes the numbers again in float64 from the returned
Ritz vectors (`truncated.weight_top_svd`). Every decomposition of a W-sized matrix is counted in SVD_CALLS, so
tests can check that a cached analysis does none.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)


@contextmanager
def one_thread(device: torch.device | None = None):
    """Small LAPACK calls (QRs and SVDs of r-column factors, eigh of small Gram matrices) on one CPU
    thread; nothing changes for a GPU device.

    They gain little from threads, and with OpenMP on a shared CPU they can lose a lot: measured
    here with another process busy on one of two cores, eigvalsh of a 576² matrix took 0.07 s on
    one thread and 0.4-15 s on two. `torch.set_num_threads` is process-wide: not thread-safe."""
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


DEVICES = ("auto", "cpu", "cuda")
OVERSAMPLE = 8  # block size b = k + OVERSAMPLE: a few extra directions speed up convergence of the k-th
BLOCK_MAX = 48  # ... but at most 48: smaller blocks need fewer products in all (measured for k = 64:
# b = 32, 48, 72 took 22, 18, 16 products of b columns, 0.69, 0.61, 0.81 s on a 4096² W)
SMALL = 2**20  # out · in below which a whole decomposition runs on one CPU thread
TOL = 1e-13  # stop when the top-k Ritz values σ² move less than TOL · σ₁² from one block to the next

# Decompositions of W-sized matrices by kind: "top" (W's top-k), "top-delta" (of W + ΔW), "left-eigh",
# "left-svd" (W's full left basis), "full" (dense SVD). Tests count calls, not time.
SVD_CALLS: Counter = Counter()

Matmul = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> CUDA when available, else the CPU; "cuda" without CUDA is a LorascopeError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise LorascopeError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LorascopeError(f"device {name!r}: this torch sees no CUDA device; use device cpu (or auto)")
    return torch.device(name)


def as_f64(X, device: torch.device, name: str = "matrix") -> torch.Tensor:
    """X as a float64 2-D tensor on `device` (no copy when it already is one)."""
    t = X if isinstance(X, torch.Tensor) else torch.as_tensor(X)
    t = t.detach().to(device=device, dtype=torch.float64)
    if t.ndim != 2:
        raise LorascopeError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    return t


ROWS = 256  # rows of W converted to float64 at a time by `float64_rows`: 8 MiB for in = 4096


def float64_rows(
    W: torch.Tensor, rows: int = ROWS, device: torch.device | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, block) for consecutive blocks of `rows` rows of a 2-D W, each W[start : start + rows]
    converted exactly into one float64 buffer on `device` (default: W's), refilled for the next block:
    a block is valid until the next one is asked for. A bf16 W as stored is never copied whole to
    float64, and no block is a fresh allocation (fresh pages; measured on a 4096² bf16 W: 30 ms for
    ‖W‖_F with a new block and vector_norm each, about 10 with the buffer and `square_sum`). For
    ‖W‖_F (`run_format.base_fingerprint`) and for W X with it (`analysis.truncated.stream_product`)."""
    device = W.device if device is None else device
    buffer = torch.empty(min(rows, W.shape[0]), W.shape[1], dtype=torch.float64, device=device)
    for start in range(0, W.shape[0], rows):
        block = buffer[: min(rows, W.shape[0] - start)]
        block.copy_(W[start : start + rows])
        yield start, block


def square_sum(block: torch.Tensor) -> torch.Tensor:
    """Σ w² of a float64 block as a 0-d tensor: a dot product (all terms ≥ 0, so no cancellation, and
    no overflow for weights: vector_norm's scaling is not needed)."""
    flat = block.reshape(-1)
    return torch.dot(flat, flat)


def apply(W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """W X for a block X (in, b). In float64 computed as (Xᵀ Wᵀ)ᵀ: MKL's dgemm runs that short-wide
    product up to 2-3× faster than W X for b = 16..128; in float32 sgemm runs W X itself about 15 %
    faster than the short-wide form (both measured on a 4096² W, 2 cores, interleaved repeats)."""
    return W @ X if W.dtype == torch.float32 else (X.T @ W.T).T


def apply_t(W: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Wᵀ Y for a block Y (out, b): (Yᵀ W)ᵀ in float64, Wᵀ Y in float32 (see `apply`)."""
    return W.T @ Y if W.dtype == torch.float32 else (Y.T @ W).T


def block_krylov_svd(
    matmul: Matmul,
    rmatmul: Matmul,
    shape: tuple[int, int],
    k: int,
    *,
    device: torch.device,
    seed: int = 0,
    tol: float = TOL,
    max_blocks: int = 200,
    dtype: torch.dtype = torch.float64,
    keep: int | None = None,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of the (out, in) operator M given by its products, float64 on `device`.

    Returns U (out, k), S (k,) descending, V (in, k) with M ≈ U diag(S) Vᵀ on the top-k.
    See the module docstring for the method; `tol` bounds the last change of the Ritz values σ²
    relative to σ₁². A warning is logged if `max_blocks` blocks did not converge.
    dtype: of the blocks and of the products' arguments (float32 for `truncated.weight_top_svd`,
    which refines the numbers in float64; the Gram matrix and its eigh are float64 either way);
    keep (≥ k, default k): how many Ritz triplets to return, the convergence test watching the top k.
    block: columns per block (default min(k + OVERSAMPLE, BLOCK_MAX)).
    """
    b = min(min(shape), block or min(k + OVERSAMPLE, BLOCK_MAX))
    args = (matmul, rmatmul, shape, k, device, seed, tol, max_blocks, dtype, keep or k, b)
    if shape[0] * shape[1] < SMALL:  # every operation is small: threads cost more than they give
        with one_thread(device):
            return _block_krylov(*args)
    return _block_krylov(*args)


def _block_krylov(
    matmul: Matmul,
    rmatmul: Matmul,
    shape,
    k: int,
    device,
    seed: int,
    tol: float,
    max_blocks: int,
    dtype: torch.dtype,
    keep: int,
    b: int,
):
    """`block_krylov_svd` itself, on the threads the caller chose, with blocks of b columns."""
    out, n_in = shape
    m = min(out, n_in)
    if not 1 <= k <= m:
        raise LorascopeError(f"k must be in 1..{m}, got {k}")
    g = torch.Generator().manual_seed(seed)  # CPU generator: the same start on every device
    omega = torch.randn(n_in, b, generator=g, dtype=torch.float64).to(device, dtype)
    X = _orthonormal(matmul(omega), torch.empty(out, 0, dtype=dtype, device=device))
    Q = X  # (out, t·b) orthonormal basis of the Krylov space
    Z = torch.empty(n_in, 0, dtype=dtype, device=device)  # Mᵀ Q
    G = torch.empty(0, 0, dtype=torch.float64, device=device)  # Zᵀ Z = Qᵀ M Mᵀ Q
    previous, converged = None, False
    for _ in range(max_blocks):
        Zx = rmatmul(X)  # (in, b): the new block of Z = Mᵀ Q
        cross, square = (Z.T @ Zx).double(), (Zx.T @ Zx).double()
        G = torch.cat([torch.cat([G, cross], 1), torch.cat([cross.T, square], 1)], 0)
        Z = torch.cat([Z, Zx], 1)
        if Q.shape[1] >= m:  # Q spans all of M's column space: the Ritz pairs are exact
            converged = True
            break
        if G.shape[0] >= k:
            with one_thread(device):
                ritz = torch.linalg.eigvalsh(G)[-k:].flip(0)  # σ², descending
            if previous is not None and float((ritz - previous).abs().max()) <= tol * float(ritz[0]):
                converged = True
                break
            previous = ritz
        # The next block M Mᵀ X, at most as many columns as the space has left.
        X = _orthonormal(matmul(Zx[:, : m - Q.shape[1]]), Q)
        if X.shape[1] == 0:  # the Krylov space is invariant under M Mᵀ: its Ritz pairs are exact
            converged = True
            break
        Q = torch.cat([Q, X], 1)
    if not converged:
        log.warning("block Krylov SVD: the top-%d did not converge in %d blocks", k, max_blocks)
    # Rayleigh–Ritz: Qᵀ M = Zᵀ, and G = Zᵀ Z = Û Σ² Ûᵀ gives U = Q Û, V = Z Û Σ⁻¹ (= Mᵀ U Σ⁻¹).
    with one_thread(device):
        _, vecs = torch.linalg.eigh(G)
    vecs = vecs[:, -min(keep, G.shape[0]) :].flip(1).to(dtype)  # (t·b, keep), by descending σ
    U = Q @ vecs
    ZU = Z @ vecs  # (in, k) = Mᵀ U
    S = torch.linalg.vector_norm(ZU, dim=0)  # σ_i = ‖Mᵀ u_i‖: as accurate as u_i, unlike √eigenvalue
    V = ZU / torch.where(S > 0, S, torch.ones_like(S))
    return U, S, V


def _orthonormal(Y: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the part of span(Y) orthogonal to span(Q) (Q orthonormal, maybe empty).

    Reorthogonalised twice ("twice is enough", Parlett); columns that were (numerically) in
    span(Q) or in the span of the previous columns are dropped."""
    scale = float(torch.linalg.vector_norm(Y, dim=0).max()) if Y.numel() else 0.0
    for _ in range(2):
        Y = Y - Q @ (Q.T @ Y)
    with one_thread(Y.device):
        X, R = torch.linalg.qr(Y)
    keep = R.diagonal().abs() > DROP[Y.dtype] * scale
    return X[:, keep]


# A new direction below DROP · (the largest column's norm) is taken for rounding: what two
# orthogonalisations leave of a column inside span(Q) is ~eps · √n at most (1e-14 in float64,
# 1e-5 in float32 at n = 4096) and typically far less.
DROP = {torch.float64: 1e-10, torch.float32: 1e-5}


def dense_top_svd(
    M, k: int, *, device: str | torch.device = "auto", seed: int = 0, tol: float = TOL
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of a dense M (out, in) by block Krylov: float64 CPU tensors U (out, k),
    S (k,) descending, V (in, k); the products run in float64 on `device` ("auto": CUDA when
    available). Counted as "top" in SVD_CALLS."""
    dev = resolve_device(device)
    M = as_f64(M, dev, "W")
    SVD_CALLS["top"] += 1
    matmul, rmatmul = (lambda X: apply(M, X)), (lambda Y: apply_t(M, Y))
    U, S, V = block_krylov_svd(matmul, rmatmul, tuple(M.shape), int(k), device=dev, seed=seed, tol=tol)
    return U.cpu(), S.cpu(), V.cpu()
