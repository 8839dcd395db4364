"""The top-k of W + s·B A from W's cached decomposition: no product with W, no matrix-free iteration.

With W = U Σ Vᵀ (U (out, m) every left singular vector, m = min(out, in)) and ΔW = s·B A
(A (r, in), B (out, r)), every column of M = W + s·B A lies in span(U) + span(B), spanned by
E = [U, Q_B] with Q_B an orthonormal basis of B's part outside span(U) (empty when out ≤ in:
U is square then). In that basis

    Eᵀ M Mᵀ E = diag(Σ², 0) + s·p̃ b̃ᵀ + s·b̃ p̃ᵀ + s²·b̃ (A Aᵀ) b̃ᵀ = D + C K Cᵀ      (N × N, N = m + r')

    b̃ = Eᵀ B = [Uᵀ B; R_B]   (N, r)         p̃ = Eᵀ W Aᵀ = [(Wᵀ U)ᵀ Aᵀ; 0]   (N, r)
    C = [p̃, b̃] (N, 2r)       K = [[0, s·I], [s·I, s²·A Aᵀ]] (2r, 2r)

since W Wᵀ = U Σ² Uᵀ and W Aᵀ lies in span(U). Wᵀ U = V Σ is the right basis scaled by σ, cached
beside U (`lorascope.wspectra.Entry.basis`): p̃ needs no division by a small σ. So the left
singular vectors of M are u_i = E y_i and σ_i(M)² = λ_i, with (λ_i, y_i) the top eigenpairs of the
diagonal-plus-rank-2r matrix D + C K Cᵀ: a product with it costs O(N·r), against O(out·in) for one
with W. And the cosines of intruder dimensions need no product at all:

    u_iᵀ u_j(W) = y_i[j]   (j < m),   so   max_j |u_iᵀ u_j(W)| = max_{j<m} |y_i[j]|.

The eigenpairs come from a dense eigh for N ≤ DENSE_N, else from block Krylov on the operator
(`truncated.block_krylov_svd`: singular pairs of a symmetric PSD matrix are its eigenpairs).
Products with U and Wᵀ U run in their dtype (float32 as cached, whose rounding is already
~1e-7), everything of size N × r and smaller in float64.
"""

from __future__ import annotations

import torch

from lorascope.analysis.linalg import one_thread
from lorascope.analysis.truncated import block_krylov_svd
from lorascope.errors import LorascopeError

DENSE_N = 128  # N at or below which D + C K Cᵀ is formed and decomposed whole: an eigh of N² costs
# O(N³), block Krylov O(N·r) per product (measured on one thread for k = 10, r = 16..64: N = 512 44 ms
# against 3-6 ms, N = 1024 250-280 ms against 5-25 ms, N = 2048 2.5 s against 7-13 ms)
BLOCK_EXTRA = 2  # Krylov blocks of k + 2 columns: for k = 10, N = 4096, r = 64, 18 products of 12 columns
# took 74 ms (one thread) against 110 ms for 14 of 18 (the default k + 8): narrow products cost less each


def structured_core(
    U, sigma, WtU, A, B, scaling: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(d (N,), C (N, 2r), K (2r, 2r), m) with Eᵀ (W + s·BA)(W + s·BA)ᵀ E = diag(d) + C K Cᵀ, float64.

    U (out, m): W's full left basis; sigma (m,): its singular values; WtU (in, m) = Wᵀ U = V Σ;
    A (r, in), B (out, r), scaling s. E = [U, Q_B] (module docstring); m = U's column count."""
    out, m = U.shape
    r = A.shape[0]
    if sigma.shape != (m,) or WtU.shape != (A.shape[1], m) or B.shape != (out, r):
        raise LorascopeError(
            f"shapes do not fit W = U Σ Vᵀ + s·B A: U {tuple(U.shape)}, σ {tuple(sigma.shape)}, "
            f"Wᵀ U {tuple(WtU.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}"
        )
    dt = U.dtype
    B = B.detach().to(U.device)
    b = (B.to(dt).T.contiguous() @ U).T.double()  # (m, r) = Uᵀ B: short-wide from a contiguous Bᵀ
    # (measured on one thread, 4096² U, r = 64: 33 ms against 40 for the strided Bᵀ and 41 for Uᵀ B)
    p = (A.detach().to(U.device, dt) @ WtU).T.double()  # (m, r) = Uᵀ W Aᵀ
    A64 = A.detach().to(U.device, torch.float64)
    d = sigma.to(U.device, torch.float64).square()
    if out > m:  # B's part outside span(U): W's column space does not fill the output space
        B_perp = B.double() - U.double() @ b
        B_perp = B_perp - U.double() @ (U.double().T @ B_perp)  # twice is enough
        Q, R = torch.linalg.qr(B_perp)
        keep = R.diagonal().abs() > 1e-12 * max(float(torch.linalg.matrix_norm(B.double())), 1e-300)
        R = R[keep]
        b = torch.cat([b, R], 0)
        p = torch.cat([p, p.new_zeros(R.shape[0], r)], 0)
        d = torch.cat([d, d.new_zeros(R.shape[0])])
    s = float(scaling)
    eye = s * torch.eye(r, dtype=torch.float64, device=U.device)
    K = torch.cat([torch.cat([torch.zeros_like(eye), eye], 1), torch.cat([eye, s * s * (A64 @ A64.T)], 1)], 0)
    return d, torch.cat([p, b], 1), K, m


def top_eigenpairs(
    d, C, K, k: int, *, seed: int = 0, dense_n: int = DENSE_N
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of the PSD matrix diag(d) + C K Cᵀ (N × N): (λ (k,) descending, Y (N, k))."""
    N = d.shape[0]
    if not 1 <= k <= N:
        raise LorascopeError(f"k must be in 1..{N}, got {k}")
    if N <= dense_n:
        with one_thread(d.device):
            lam, Y = torch.linalg.eigh(torch.diag(d) + C @ K @ C.T)
        return lam[-k:].flip(0), Y[:, -k:].flip(1)

    # (2r, N) each, contiguous: (K Cᵀ)ᵀ is read transposed by the GEMM, which runs it about 20 % faster
    # than a contiguous C K (measured on one thread, N = 4096, 2r = 128, 12 columns: 1.5 ms against 1.8)
    KCt, Ct, dcol = (C @ K).T.contiguous(), C.T.contiguous(), d[:, None]

    def product(X):
        return torch.addmm(dcol * X, KCt.T, Ct @ X)

    with one_thread(d.device):  # products of O(N·r): threads cost more than they give (linalg.one_thread)
        Y, lam, _ = block_krylov_svd(
            product, product, (N, N), k, device=d.device, seed=seed, block=k + BLOCK_EXTRA
        )
    return lam, Y


def top_of_w_plus_delta(
    U, sigma, WtU, A, B, scaling: float, k: int, *, seed: int = 0, dense_n: int = DENSE_N
) -> dict:
    """Top-k of W + s·B A from W = U Σ Vᵀ (U (out, m), sigma (m,), WtU = Wᵀ U (in, m)), A (r, in), B (out, r).

    Returns {"sigma": (k,) σ_i(W + s·BA) descending, "max_cos": (k,) max_j |u_iᵀ u_j(W)| over all m
    left singular vectors of W, "coords": (N, k) y_i, u_i = [U, Q_B] y_i}, float64 CPU tensors."""
    d, C, K, m = structured_core(U, sigma, WtU, A, B, scaling)
    lam, Y = top_eigenpairs(d, C, K, int(k), seed=seed, dense_n=dense_n)
    return {
        "sigma": lam.clamp_min(0).sqrt().cpu(),
        "max_cos": Y[:m].abs().amax(0).cpu(),
        "coords": Y.cpu(),
    }
