"""Truncated and matrix-free SVDs of W and W + ΔW: the top-k singular triplets without a dense SVD.

    top_svd(W, k)                      top-k of W (out, in): (U (out, k), S (k,), V (in, k))
    top_svd(W, k, delta=d)             top-k of W + ΔW, never forming it: products W x + d.matvec(x)
    weight_top_svd(W, k)               W's top-k as top_svd(W, k) gives them: for a large W, a float32
                                       Krylov space and float64 numbers
    weight_top_and_products(W, k, X)   the same, and W X, ‖W‖_F from the float64 pass of its numbers
    left_basis(W)                      every left singular vector of W (intruder dimensions need them all)

The top-k come from the randomized block Krylov method of `lorascope.krylov` (float64, on the
CPU or on CUDA; W's own top-k from a float32 space refined in float64); every decomposition of a
W-sized matrix is counted in SVD_CALLS, so tests can check that a cached analysis does none.
"""

from __future__ import annotations

import torch

from lorascope.delta import check_shape
from lorascope.errors import LorascopeError
from lorascope.krylov import (  # noqa: F401  (re-exported: the analyses' names for them)
    BLOCK_MAX,
    DEVICES,
    OVERSAMPLE,
    ROWS,
    SMALL,
    SVD_CALLS,
    TOL,
    Matmul,
    apply,
    apply_t,
    as_f64,
    block_krylov_svd,
    dense_top_svd,
    float64_rows,
    one_thread,
    resolve_device,
    square_sum,
)


def linear_map(W: torch.Tensor, delta=None) -> tuple[Matmul, Matmul, tuple[int, int]]:
    """(X ↦ M X, Y ↦ Mᵀ Y, shape) for M = W, or M = W + ΔW with ΔW of the protocol (`lorascope.delta`).

    M X = W X + ΔW X, the second through `delta.matvec`: for factors s·B (A X), out·in + (out + in)·r
    per column, so W + ΔW is never formed. W must already be float64 on the target device."""
    if delta is None:
        return (lambda X: apply(W, X)), (lambda Y: apply_t(W, Y)), tuple(W.shape)
    check_shape(delta, tuple(W.shape))
    return (
        (lambda X: apply(W, X) + delta.matvec(X)),
        (lambda Y: apply_t(W, Y) + delta.rmatvec(Y)),
        tuple(W.shape),
    )


STREAM_ROWS = ROWS  # rows of W converted to float64 at a time by `stream_product`: 8 MiB for in = 4096,
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
    for i, block in float64_rows(W, rows, device):
        squares += square_sum(block)
        out[i : i + rows] = (Xt @ block.T).T  # short-wide, as in `apply`
    return out, float(squares.sqrt())


def top_svd(
    W, k: int, *, delta=None, device: str | torch.device = "auto", seed: int = 0, tol: float = TOL
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of W (out, in), or of W + ΔW, by block Krylov (never a dense SVD).

    delta: None, or a ΔW of the protocol (`lorascope.delta`), applied by its products (W + ΔW is never
    formed). A dense ΔW's own top-k: `lorascope.delta.truncated_svd`. Returns float64 CPU tensors
    U (out, k), S (k,) descending, V (in, k). W alone: `weight_top_svd` (a float32 Krylov space,
    float64 numbers; `tol` unused); W + ΔW: float64 on `device` ("auto": CUDA when available).
    """
    if delta is None:
        return weight_top_svd(W, k, device=device, seed=seed)
    dev = resolve_device(device)
    W = as_f64(W, dev, "W")
    matmul, rmatmul, shape = linear_map(W, delta)
    SVD_CALLS["top-delta"] += 1
    U, S, V = block_krylov_svd(matmul, rmatmul, shape, int(k), device=dev, seed=seed, tol=tol)
    return U.cpu(), S.cpu(), V.cpu()


REFINE = 16  # Ritz vectors beyond the top-k that `weight_top_svd` refines in float64
TOL32 = 1e-6  # its float32 Krylov stops when the top-k σ² move less than TOL32 · σ₁² (float32 noise: ~1e-7)


def weight_top_svd(
    W, k: int, *, device: str | torch.device = "auto", seed: int = 0, precision: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W's top-k singular triplets, float64 CPU tensors U (out, k), S (k,) descending, V (in, k), from
    a float32 Krylov space and one float64 Rayleigh–Ritz (precision "mixed"), or from the float64
    block Krylov ("float64", `dense_top_svd`); "auto": mixed where out · in ≥ SMALL (where the
    products dominate the cost), float64 below.

    The block Krylov space is built from W in float32 (a bf16 or float16 W exactly) until the top-k
    Ritz values σ² move less than TOL32 · σ₁²: products at twice the float64 rate, on half the bytes.
    Its top p = k + REFINE right Ritz vectors V_p (orthonormalised in float64) then give the numbers:
    Z = W V_p in float64 (`stream_product`, one pass), Zᵀ Z = Y Σ² Yᵀ, V = V_p Y, U = Z Y Σ⁻¹.
    Ritz values err by the square of the subspace's angle, so σ agrees with a float64 SVD to about
    1e-12 where the float32 space is good to 1e-6 (the top-k of a 4096² bf16 W with a 1.7 % gap at
    k = 64: √Σσ² to 1e-9, each σ to 2e-7, 12 float32 products of 48 columns against 18 in float64).
    Counted as "top" in SVD_CALLS. `weight_top_and_products` also returns W X for given columns X."""
    U, S, V, _ = weight_top_and_products(W, k, None, device=device, seed=seed, precision=precision)
    return U, S, V


def weight_top_and_products(
    W,
    k: int,
    X: torch.Tensor | None,
    *,
    device: str | torch.device = "auto",
    seed: int = 0,
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, float] | None]:
    """(U, S, V) as `weight_top_svd` gives them and, for columns X (in, c), (W X, ‖W‖_F) in float64 on
    `device` from the same float64 pass over W as the Rayleigh–Ritz (None for X None): an analysis
    that needs W's top-k and products of its own with W (amplification's W V, the random floor's
    W V_r) pays for one conversion and one stream over W, not one each."""
    dev = resolve_device(device)
    W = W.detach() if isinstance(W, torch.Tensor) else torch.as_tensor(W)
    if W.ndim != 2:
        raise LorascopeError(f"W must be a 2-D matrix, got shape {tuple(W.shape)}")
    if precision not in ("auto", "mixed", "float64"):
        raise LorascopeError(f"precision must be auto, mixed or float64, got {precision!r}")
    if precision == "float64" or (precision == "auto" and W.shape[0] * W.shape[1] < SMALL):
        U, S, V = dense_top_svd(W, k, device=dev, seed=seed)
        return U, S, V, (stream_product(W, X, device=dev) if X is not None else None)
    m, k = min(W.shape), int(k)
    if not 1 <= k <= m:
        raise LorascopeError(f"k must be in 1..{m}, got {k}")
    SVD_CALLS["top"] += 1
    V32 = _float32_ritz_vectors(W, k, dev, seed, keep=min(m, k + REFINE))
    with one_thread(dev):
        V_p = torch.linalg.qr(V32.double())[0]  # (in, p)
    p = V_p.shape[1]
    columns = V_p if X is None else torch.cat([V_p, as_f64(X, dev, "X")], 1)
    ZX, w_norm = stream_product(W, columns, device=dev)  # W [V_p, X] in float64: W as given, not rounded
    Z = ZX[:, :p]  # (out, p) = W V_p
    with one_thread(dev):
        _, Y = torch.linalg.eigh(Z.T @ Z)
    Y = Y[:, -k:].flip(1)  # (p, k) by descending σ
    ZY = Z @ Y
    S = torch.linalg.vector_norm(ZY, dim=0)  # σ_i = ‖W v_i‖
    U = ZY / torch.where(S > 0, S, torch.ones_like(S))
    products = None if X is None else (ZX[:, p:], w_norm)
    return U.cpu(), S.cpu(), (V_p @ Y).cpu(), products


def _float32_ritz_vectors(W, k: int, device, seed: int, keep: int) -> torch.Tensor:
    """The top `keep` right Ritz vectors (in, keep) of W's float32 block Krylov space (its float32
    copy freed on return, before the float64 pass)."""
    Wf = W.to(device, torch.float32)
    _, _, V32 = block_krylov_svd(
        lambda X: apply(Wf, X), lambda Y: apply_t(Wf, Y), tuple(W.shape), k, device=device, seed=seed,
        tol=TOL32, dtype=torch.float32, keep=keep,
    )  # fmt: skip
    return V32


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
    G = W @ W.T
    del W  # a float64 copy of a bf16 W is not needed by the eigh: 0.5 GB less at the peak for 8192²
    lam, vecs = torch.linalg.eigh(G)  # ascending σ²
    del G
    m = min(out, n_in)
    return vecs.flip(1)[:, :m].cpu(), lam.flip(0)[:m].clamp_min(0).sqrt().cpu()


def full_svd(W, *, device: str | torch.device = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin dense SVD of W (out, in) in float64: (U (out, m), S (m,), Vh (m, in)), CPU tensors.

    Only where every singular direction is asked for (Fig. 8 without `top_w`); counted as "full"."""
    dev = resolve_device(device)
    SVD_CALLS["full"] += 1
    U, S, Vh = torch.linalg.svd(as_f64(W, dev, "W"), full_matrices=False)
    return U.cpu(), S.cpu(), Vh.cpu()
