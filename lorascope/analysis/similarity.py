"""Normalized subspace similarity φ between two LoRA adapters (paper eq. 4, Appendix G).

    φ(U1, U2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F / min(i, j)  ∈ [0, 1]

for orthonormal bases U1 (n, r1), U2 (n, r2) with columns by descending singular value.
For uniformly random subspaces E[φ] = max(i, j) / n: the floor every result is read against.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from lorascope.analysis.factors import learned_part
from lorascope.analysis.linalg import as_float64, factor_svd
from lorascope.errors import LorascopeError
from lorascope.module_pool import on_one_thread

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # labels warned about: a figure compares one factor with many, once each


def _first_time(label: str) -> bool:
    """True the first time a label is seen in this process: one warning per module and factor."""
    if label in _WARNED:
        return False
    _WARNED.add(label)
    return True


# How far from orthonormal a basis may be (max |UᵀU − I|), by the precision it was computed in: round-off
# of an SVD or QR stays orders of magnitude below these; a factor passed where a basis belongs does not.
ORTHONORMAL_TOL = {torch.float64: 1e-6}
ORTHONORMAL_TOL_LOW = 1e-3  # float32, bf16, fp16


def _basis(U, name: str) -> tuple[torch.Tensor, float]:
    """U as float64, checked to have orthonormal columns; and the tolerance that check used."""
    dtype = U.dtype if isinstance(U, torch.Tensor) else torch.as_tensor(np.asarray(U)).dtype
    tol = ORTHONORMAL_TOL.get(dtype, ORTHONORMAL_TOL_LOW)
    U = as_float64(U, name)
    if U.shape[1]:
        gram = U.T @ U
        err = float((gram - torch.eye(U.shape[1], dtype=torch.float64)).abs().max())
        if not err <= tol:  # also catches NaN
            raise LorascopeError(
                f"{name} is not an orthonormal basis (max |{name}ᵀ{name} − I| = {err:.2g}): pass "
                "singular vectors (factor_basis, delta_svd), not the factors themselves"
            )
    return U, tol


def phi_grid(U1, U2) -> np.ndarray:
    """φ for every (i, j): U1 (n, r1), U2 (n, r2) orthonormal columns -> (r1, r2), φ[i-1, j-1].

    M = U1ᵀ U2; P = cumsum(cumsum(M ∘ M, 0), 1) so P[i-1, j-1] = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F;
    φ = P / min(i, j). One matmul, no loop over (i, j). Inputs that are not orthonormal (beyond
    round-off) raise a LorascopeError: φ of anything else is not a subspace similarity.
    """
    (U1, tol1), (U2, tol2) = _basis(U1, "U1"), _basis(U2, "U2")
    if U1.shape[0] != U2.shape[0]:
        raise LorascopeError(
            f"bases live in different spaces: {U1.shape[0]} vs {U2.shape[0]} rows "
            "(compare modules of the same shape)"
        )
    return _phi_of_cross(U1.T @ U2, max(tol1, tol2))


def _phi_of_cross(M: torch.Tensor, tol: float) -> np.ndarray:
    """φ grid from the cross matrix M = U1ᵀ U2 (r1, r2) of two orthonormal bases.

    φ ≥ 0 by construction (a sum of squares) and ≤ 1 for orthonormal bases (‖U1_iᵀU2_j‖²_F ≤ min(i, j));
    a value above 1 + tol means the bases were not orthonormal, which is raised, never clamped away."""
    P = torch.cumsum(torch.cumsum(M * M, dim=0), dim=1)
    i = torch.arange(1, M.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, M.shape[1] + 1, dtype=torch.float64)[None, :]
    phi = P / torch.minimum(i, j)
    top = float(phi.max()) if phi.numel() else 0.0
    if not top <= 1 + tol:
        raise LorascopeError(f"φ reached {top:.6g} > 1: the bases are not orthonormal")
    return phi.numpy()


# Largest σ_max / σ_min for which the Gram route is used: its error grows like ε·κ² (1e-8 here).
GRAM_MAX_COND = 1e4
GRAM_TOL = 1e-6  # how far above 1 round-off can take φ on that route
F32_MAX_COND = 3.0  # κ of a float32 factor up to which float32 Gram products keep φ within ~1e-6 (ε₃₂ κ²)


def factor_phi(X1, X2, side: str = "right", label: str = "") -> np.ndarray:
    """φ grid between the singular bases of two factors, computed from the factors themselves.

    side="right": X (r, n) as A, bases V (n, r); side="left": X (n, r) as B, bases U.
    With X = U Σ Vᵀ (right side), the r × r Gram matrix X Xᵀ = U Σ² Uᵀ gives V = Xᵀ U Σ⁻¹, so

        V1ᵀ V2 = Σ1⁻¹ U1ᵀ (X1 X2ᵀ) U2 Σ2⁻¹

    needs three r × n × r products and two r × r eigendecompositions: about 5× faster than two thin
    QRs for a 64 × 4096 factor, equal to ~1e-8. Float32 factors (as stored) with κ ≤ F32_MAX_COND
    have the products in float32 (no float64 copy), the rest in float64: equal to ~1e-7. Factors
    with σ_max / σ_min above GRAM_MAX_COND (near rank-deficient, or r > n) take the QR route of `phi_grid`.
    """
    Y1, Y2 = _matrix(X1, "X1"), _matrix(X2, "X2")
    if side == "left":
        Y1, Y2 = Y1.T, Y2.T
    if Y1.shape[1] != Y2.shape[1]:
        raise LorascopeError(
            f"factors live in different spaces: {Y1.shape[1]} vs {Y2.shape[1]} "
            "(compare modules of the same shape)"
        )
    low = Y1.dtype == Y2.dtype == torch.float32  # as stored: products in float32, the r × r core in float64
    with on_one_thread():  # r × r work and r × n products: threads cost more than they give
        for dtype in (torch.float32, torch.float64) if low else (torch.float64,):
            Z1, Z2 = Y1.to(dtype), Y2.to(dtype)
            halves = []
            for Y in (Z1, Z2):
                e, U = torch.linalg.eigh((Y @ Y.T).double())  # ascending σ²
                e, U = e.flip(0), U.flip(1)
                if not e.numel() or e[-1] <= 0 or e[0] > GRAM_MAX_COND**2 * e[-1]:
                    if e.numel() and e[-1] <= 1e-24 * max(float(e[0]), 1e-300) and _first_time(label or side):
                        log.warning(
                            "%s: factor is rank-deficient; its trailing directions are arbitrary",
                            label or side,
                        )
                    return phi_grid(factor_svd(X1, side)[0], factor_svd(X2, side)[0])
                halves.append((U, e.sqrt()))
            (U1, s1), (U2, s2) = halves
            if dtype == torch.float32 and max(float(s[0] / s[-1]) for s in (s1, s2)) > F32_MAX_COND:
                continue  # float32 round-off (~ε₃₂ κ²) would show in φ: the same in float64
            M = (U1.T @ (Z1 @ Z2.T).double() @ U2) / s1[:, None] / s2[None, :]
            return _phi_of_cross(M, GRAM_TOL)
    raise AssertionError("unreachable: the float64 pass always returns")


def _matrix(X, name: str) -> torch.Tensor:
    """X as a detached 2-D CPU tensor in its own dtype (float32 stays float32; others become float64)."""
    t = X.detach().cpu() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if t.ndim != 2:
        raise LorascopeError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    return t if t.dtype in (torch.float32, torch.float64) else t.double()


def subspace_similarity(A1, A2) -> np.ndarray:
    """The paper's φ(A1, A2, i, j): grid (r1, r2) of the right singular bases of A1 (r1, in), A2 (r2, in).

    Invariant to any invertible mixing of A's rows that keeps the σ order (rotations, rescaling all rows)."""
    return factor_phi(A1, A2, "right")


def b_similarity(B1, B2) -> np.ndarray:
    """φ grid of the left singular bases of B1 (out, r1) and B2 (out, r2)."""
    return factor_phi(B1, B2, "left")


def learned_a_similarity(A1, A1_init, A2, A2_init) -> np.ndarray:
    """φ grid of the right bases of the learned parts A1 − A1_init and A2 − A2_init, (r1, in) and (r2, in)."""
    return factor_phi(learned_part(A1, A1_init), learned_part(A2, A2_init))


def delta_similarity(delta1, delta2, side: str = "right") -> np.ndarray:
    """φ grid of the singular vectors of ΔW1 and ΔW2 (side "right": input space, "left": output).

    delta1, delta2: ΔW of the protocol (`lorascope.delta`); every direction each `svd()` gives
    (all r of a factored ΔW, from its factors)."""
    U1, _, V1 = delta1.svd()
    U2, _, V2 = delta2.svd()
    return phi_grid(V1, V2) if side == "right" else phi_grid(U1, U2)


def random_phi_baseline(r1: int, r2: int, n: int) -> np.ndarray:
    """E[φ] for independent uniformly random subspaces of R^n: grid (r1, r2) of max(i, j) / n.

    E‖P_i Q_j‖²_F = i j / n for random projections of ranks i and j, divided by min(i, j)."""
    if min(r1, r2, n) <= 0:
        raise LorascopeError(f"random_phi_baseline needs positive sizes, got r1={r1}, r2={r2}, n={n}")
    i = np.arange(1, r1 + 1)[:, None]
    j = np.arange(1, r2 + 1)[None, :]
    return np.minimum(np.maximum(i, j) / n, 1.0)


def gaussian_phi_samples(
    shape1: tuple[int, int], shape2: tuple[int, int], n_seeds: int = 5, seed: int = 0, side: str = "right"
) -> np.ndarray:
    """φ grids between the bases of two random N(0, 1) matrices, one per seed: (n_seeds, k1, k2).

    shape1, shape2 are the factor shapes, e.g. (r1, in) and (r2, in) for side="right"
    (the paper's Figure 4 right panel uses two Gaussian matrices shaped like A)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_seeds):
        X1 = torch.randn(*shape1, generator=g, dtype=torch.float64)
        X2 = torch.randn(*shape2, generator=g, dtype=torch.float64)
        out.append(phi_grid(factor_svd(X1, side)[0], factor_svd(X2, side)[0]))
    return np.stack(out)


def gaussian_phi_baseline(
    shape1: tuple[int, int], shape2: tuple[int, int], n_seeds: int = 5, seed: int = 0, side: str = "right"
) -> np.ndarray:
    """Mean over seeds of `gaussian_phi_samples`: the empirical random floor, (k1, k2)."""
    return gaussian_phi_samples(shape1, shape2, n_seeds, seed, side).mean(axis=0)


def grid_frame(phi: np.ndarray) -> pd.DataFrame:
    """A φ array (r1, r2) as a DataFrame with index i = 1..r1 and columns j = 1..r2."""
    return pd.DataFrame(
        phi,
        index=pd.RangeIndex(1, phi.shape[0] + 1, name="i"),
        columns=pd.RangeIndex(1, phi.shape[1] + 1, name="j"),
    )


def long_grid(grid: pd.DataFrame, **labels) -> pd.DataFrame:
    """A φ grid (index i, columns j) as rows (…labels, i, j, phi): the long format of every φ CSV."""
    i, j = np.meshgrid(grid.index.to_numpy(), grid.columns.to_numpy(), indexing="ij")
    frame = pd.DataFrame({"i": i.ravel(), "j": j.ravel(), "phi": grid.to_numpy().ravel()})
    for position, (key, value) in enumerate(labels.items()):
        frame.insert(position, key, value)
    return frame


def block_mean_floor(a: int, b: int, n: int) -> float:
    """E[mean of φ(i, j) over the block i ≤ a, j ≤ b] for independent uniformly random subspaces of R^n.

    Exact, by linearity of expectation: (1 / ab) Σ_{i ≤ a, j ≤ b} min(max(i, j) / n, 1). For a = b = 8,
    n = 384 it is 0.0151, not the corner's 8/n = 0.021."""
    return float(random_phi_baseline(a, b, n).mean())


def diag_mean_floor(k: int, n: int) -> float:
    """E[mean of φ(t, t) over t ≤ k] for random subspaces of R^n: (k + 1) / (2n) (capped at φ ≤ 1)."""
    return float(np.diag(random_phi_baseline(k, k, n)).mean())


def block_mean_draws(
    shape1: tuple[int, int],
    shape2: tuple[int, int],
    a: int,
    b: int,
    n_draws: int = 200,
    seed: int = 0,
    side: str = "right",
) -> np.ndarray:
    """Monte Carlo null of the block mean of φ: (n_draws,) means over i ≤ a, j ≤ b of φ between the
    singular bases of two random N(0, 1) matrices of shapes `shape1`, `shape2` (as in
    `gaussian_phi_samples`, batched: one SVD call per matrix stack)."""
    g = torch.Generator().manual_seed(seed)
    bases = []
    for shape in (shape1, shape2):
        X = torch.randn(n_draws, *shape, generator=g, dtype=torch.float64)
        U, _, Vh = torch.linalg.svd(X, full_matrices=False)
        bases.append(Vh.transpose(1, 2) if side == "right" else U)  # (m, n, r)
    M = bases[0].transpose(1, 2)[:, :a] @ bases[1][:, :, :b]  # (m, a, b)
    P = torch.cumsum(torch.cumsum(M * M, dim=1), dim=2)
    i = torch.arange(1, a + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, b + 1, dtype=torch.float64)[None, :]
    return (P / torch.minimum(i, j)).mean(dim=(1, 2)).numpy()
