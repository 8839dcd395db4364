"""Truncated and matrix-free SVDs of W and W + ΔW: the top-k singular triplets without a dense SVD.

    top_svd(W, k)                      top-k of W (out, in): (U (out, k), S (k,), V (in, k))
    top_svd(W, k, delta=(A, B, s))     top-k of W + s·B A, never forming it: products W x + s·B (A x)
    left_basis(W)                      every left singular vector of W (intruder dimensions need them all)

The top-k come from a randomized block Krylov method (block Lanczos with full
reorthogonalisation and Rayleigh–Ritz; Musco & Musco 2015, "Randomized block Krylov methods
for stronger and faster approximate SVD"): with a seeded Gaussian Ω (in, b), b = min(k + 8, 48),

    K = [M Ω, (M Mᵀ) M Ω, (M Mᵀ)² M Ω, ...] = Q (orthonormal, out × t·b),   Z = Mᵀ Q (in × t·b)

Qᵀ M = Zᵀ, so the Ritz values are the square roots of the eigenvalues of the Gram matrix
G = Zᵀ Z; blocks are added until the top-k Ritz values σ² change by less than `tol` · σ₁² from
one block to the next (or Q spans the whole space, or stops growing, where the result is exact).
With G = Û Σ² Ûᵀ, U = Q Û_k and V = Z Û_k Σ_k⁻¹ (= Mᵀ U Σ⁻¹). Each block costs two products with M, i.e.
O(out · in · b); a dense SVD costs O(out · in · min(out, in)).

Everything is float64, on the CPU or on CUDA (`device`): the same code and dtype on both, so the
numbers agree to rounding. Every decomposition of a W-sized matrix is counted in SVD_CALLS, so
tests can check that a cached analysis does none.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import torch

from lorascope.analysis.linalg import delta_svd, one_thread
from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

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


def factors_of(delta) -> tuple | None:
    """(A, B, s) when ΔW is given as factors: a tuple (A, B, scaling) or an object with .A, .B, .scaling;
    None when it is a dense (out, in) matrix."""
    if isinstance(delta, tuple | list):
        if len(delta) != 3:
            raise LorascopeError("ΔW as factors is a tuple (A, B, scaling)")
        return tuple(delta)
    if hasattr(delta, "A") and hasattr(delta, "B"):
        return delta.A, delta.B, float(getattr(delta, "scaling", 1.0))
    return None


def delta_shape(delta) -> tuple[int, int]:
    """(out, in) of ΔW given dense or as factors; checks that A (r, in) and B (out, r) share r."""
    parts = factors_of(delta)
    if parts is None:
        return tuple(delta.shape)
    A, B = parts[0], parts[1]
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        raise LorascopeError(f"A {tuple(A.shape)} and B {tuple(B.shape)}: want A (r, in), B (out, r)")
    return (B.shape[0], A.shape[1])


def linear_map(W: torch.Tensor, delta=None) -> tuple[Matmul, Matmul, tuple[int, int]]:
    """(X ↦ M X, Y ↦ Mᵀ Y, shape) for M = W, or M = W + ΔW with ΔW dense or as factors (A, B, s).

    With factors, M X = W X + s·B (A X) costs out·in + (out + in)·r per column: W + ΔW is never formed.
    W (and a dense ΔW) must already be float64 on the target device."""
    if delta is None:
        return (lambda X: apply(W, X)), (lambda Y: apply_t(W, Y)), tuple(W.shape)
    parts = factors_of(delta)
    if parts is None:
        D = as_f64(delta, W.device, "ΔW")
        if D.shape != W.shape:
            raise LorascopeError(f"W {tuple(W.shape)} and ΔW {tuple(D.shape)} differ in shape")
        M = W + D  # ΔW is dense already: adding it costs nothing a product would not
        return (lambda X: apply(M, X)), (lambda Y: apply_t(M, Y)), tuple(W.shape)
    A, B, s = as_f64(parts[0], W.device, "A"), as_f64(parts[1], W.device, "B"), float(parts[2])
    if A.shape[0] != B.shape[1] or (B.shape[0], A.shape[1]) != tuple(W.shape):
        raise LorascopeError(
            f"W {tuple(W.shape)} does not match ΔW = B A with A {tuple(A.shape)}, B {tuple(B.shape)}: "
            "want A (r, in), B (out, r) of the same module"
        )
    return (
        (lambda X: apply(W, X) + s * (B @ (A @ X))),
        (lambda Y: apply_t(W, Y) + s * (A.T @ (B.T @ Y))),
        tuple(W.shape),
    )


def apply(W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """W X for a block X (in, b), computed as (Xᵀ Wᵀ)ᵀ: MKL's dgemm runs the short-wide product
    Xᵀ Wᵀ up to 2-3× faster than W X for b = 16..128 (measured on 4096² float64, 2 cores)."""
    return (X.T @ W.T).T


STREAM_ROWS = 256  # rows of W converted to float64 at a time by `stream_product`: 8 MiB for in = 4096,
# which stays in cache between the conversion and the product (measured, bf16 4096² W and 64 columns,
# 2 cores: 40 ms for read + convert + norm + product at 256 rows, 44 at 128 or 512, 71 at 1024,
# 72 ms for a whole float64 copy followed by the product)


def stream_product(
    W: torch.Tensor, X: torch.Tensor, *, device: torch.device | None = None, rows: int = STREAM_ROWS
) -> tuple[torch.Tensor, float]:
    """(W X, ‖W‖_F) in float64 from one pass over W (out, in) in any dtype (e.g. bf16 as stored).

    W is converted to float64 a block of `rows` rows at a time, so the pass costs about what reading
    W costs and no float64 copy of W is made; every product is float64, as with `apply`.
    X (in, c) is converted to float64 on `device` (default: X's device)."""
    device = X.device if device is None else device
    X = as_f64(X, device, "X")
    if W.ndim != 2 or W.shape[1] != X.shape[0]:
        raise LorascopeError(f"W {tuple(W.shape)} and X {tuple(X.shape)}: want W (out, in), X (in, c)")
    W = W.detach().to(device)  # in its own dtype: the CPU tensor itself, or one upload to the GPU
    out = torch.empty(W.shape[0], X.shape[1], dtype=torch.float64, device=device)
    Xt = X.T.contiguous()
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, W.shape[0], rows):
        block = W[i : i + rows].to(torch.float64)
        squares += torch.linalg.vector_norm(block).square()
        out[i : i + rows] = (Xt @ block.T).T  # short-wide, as in `apply`
    return out, float(squares.sqrt())


def apply_t(W: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Wᵀ Y for a block Y (out, b), computed as (Yᵀ W)ᵀ (see `apply`)."""
    return (Y.T @ W).T


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of the (out, in) operator M given by its products, float64 on `device`.

    Returns U (out, k), S (k,) descending, V (in, k) with M ≈ U diag(S) Vᵀ on the top-k.
    See the module docstring for the method; `tol` bounds the last change of the Ritz values σ²
    relative to σ₁². A warning is logged if `max_blocks` blocks did not converge.
    """
    args = (matmul, rmatmul, shape, k, device, seed, tol, max_blocks)
    if shape[0] * shape[1] < SMALL:  # every operation is small: threads cost more than they give
        with one_thread(device):
            return _block_krylov(*args)
    return _block_krylov(*args)


def _block_krylov(
    matmul: Matmul, rmatmul: Matmul, shape, k: int, device, seed: int, tol: float, max_blocks: int
):
    """`block_krylov_svd` itself, on the threads the caller chose."""
    out, n_in = shape
    m = min(out, n_in)
    if not 1 <= k <= m:
        raise LorascopeError(f"k must be in 1..{m}, got {k}")
    b = min(m, k + OVERSAMPLE, BLOCK_MAX)
    g = torch.Generator().manual_seed(seed)  # CPU generator: the same start on every device
    omega = torch.randn(n_in, b, generator=g, dtype=torch.float64).to(device)
    X = _orthonormal(matmul(omega), torch.empty(out, 0, dtype=torch.float64, device=device))
    Q = X  # (out, t·b) orthonormal basis of the Krylov space
    Z = torch.empty(n_in, 0, dtype=torch.float64, device=device)  # Mᵀ Q
    G = torch.empty(0, 0, dtype=torch.float64, device=device)  # Zᵀ Z = Qᵀ M Mᵀ Q
    previous, converged = None, False
    for _ in range(max_blocks):
        Zx = rmatmul(X)  # (in, b): the new block of Z = Mᵀ Q
        cross = Z.T @ Zx
        G = torch.cat([torch.cat([G, cross], 1), torch.cat([cross.T, Zx.T @ Zx], 1)], 0)
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
    vecs = vecs[:, -k:].flip(1)  # (t·b, k), by descending σ
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
    keep = R.diagonal().abs() > 1e-10 * scale
    return X[:, keep]


def top_svd(
    W, k: int, *, delta=None, device: str | torch.device = "auto", seed: int = 0, tol: float = TOL
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of W (out, in), or of W + ΔW, by block Krylov (never a dense SVD).

    delta: None, a dense (out, in) ΔW, or factors (A (r, in), B (out, r), scaling) / an object with
    .A, .B, .scaling, for which W + s·B A is never formed. Returns float64 CPU tensors
    U (out, k), S (k,) descending, V (in, k). Float64 on `device` ("auto": CUDA when available).
    """
    dev = resolve_device(device)
    W = as_f64(W, dev, "W")
    matmul, rmatmul, shape = linear_map(W, delta)
    SVD_CALLS["top" if delta is None else "top-delta"] += 1
    U, S, V = block_krylov_svd(matmul, rmatmul, shape, int(k), device=dev, seed=seed, tol=tol)
    return U.cpu(), S.cpu(), V.cpu()


def left_basis(W, *, method: str = "auto", device: str | torch.device = "auto") -> torch.Tensor:
    """All min(out, in) left singular vectors of W (out, in), as columns by descending σ: (out, m).

    method "eigh": eigenvectors of W Wᵀ (out × out), about 2× faster than an SVD; an eigenvector's
    error is that of the SVD's times about σ₁ / (2 σ_j), still ~1e-7 for real weights, which the
    |cos| < ε test of intruder dimensions does not notice. "svd": thin SVD of W. "auto": eigh when
    out ≤ in, else svd (W Wᵀ would be larger than W and carry out − in null directions).
    Float64 on `device`; returns a CPU tensor.
    """
    return left_spectrum(W, method=method, device=device)[0]


def left_spectrum(
    W, *, method: str = "auto", device: str | torch.device = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U (out, m), σ (m,)): `left_basis` and W's m singular values, descending, from the same
    decomposition (eigh: σ_j = √λ_j(W Wᵀ), clamped at 0). CPU float64 tensors."""
    if method not in ("auto", "eigh", "svd"):
        raise LorascopeError(f"method must be auto, eigh or svd, got {method!r}")
    dev = resolve_device(device)
    W = as_f64(W, dev, "W")
    out, n_in = W.shape
    if method == "auto":
        method = "eigh" if out <= n_in else "svd"
    SVD_CALLS[f"left-{method}"] += 1
    if method == "svd":
        U, S, _ = torch.linalg.svd(W, full_matrices=False)
        return U.cpu(), S.cpu()
    lam, vecs = torch.linalg.eigh(W @ W.T)  # ascending σ²
    m = min(out, n_in)
    return vecs.flip(1)[:, :m].cpu(), lam.flip(0)[:m].clamp_min(0).sqrt().cpu()


def full_svd(W, *, device: str | torch.device = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin dense SVD of W (out, in) in float64: (U (out, m), S (m,), Vh (m, in)), CPU tensors.

    Only where every singular direction is asked for (Fig. 8 without `top_w`); counted as "full"."""
    dev = resolve_device(device)
    SVD_CALLS["full"] += 1
    U, S, Vh = torch.linalg.svd(as_f64(W, dev, "W"), full_matrices=False)
    return U.cpu(), S.cpu(), Vh.cpu()


def delta_top_svd(
    delta, k: int | None = None, *, device: str | torch.device = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of ΔW (out, in): (U (out, k), S (k,), V (in, k)), float64 CPU tensors.

    Factors (A, B, s): exact, from `delta_svd` (QR of the factors, no W-sized matrix), k defaults
    to min(out, in, r). Dense ΔW (a full fine-tuning run): `top_svd`, and k must be given."""
    parts = factors_of(delta)
    if parts is not None:
        U, S, V = delta_svd(parts[0], parts[1], parts[2])
        kmax = S.shape[0]
        k = kmax if k is None else int(k)
        if not 1 <= k <= kmax:
            raise LorascopeError(f"k = {k} exceeds the rank of ΔW ({kmax}): use k ≤ {kmax}")
        return U[:, :k], S[:k], V[:, :k]
    if k is None:
        raise LorascopeError("a dense ΔW has no rank to default to: give k")
    return top_svd(delta, int(k), device=device)
