"""Normalized subspace similarity φ between two LoRA adapters (paper eq. 4, Appendix G).

    φ(U1, U2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F / min(i, j)  ∈ [0, 1]

for orthonormal bases U1 (n, r1), U2 (n, r2) with columns by descending singular value.
For uniformly random subspaces E[φ] = max(i, j) / n: the floor every result is read against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lorascope.analysis.linalg import as_float64, delta_svd, factor_svd
from lorascope.analysis.modules import match_modules, select_modules
from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

# What a basis is taken of: the factor A (right), B (left), the learned part A − A0 (right),
# and ΔW's input (right) or output (left) singular vectors.
FACTORS = ("A", "B", "dA", "dW-right", "dW-left")


def phi_grid(U1, U2) -> np.ndarray:
    """φ for every (i, j): U1 (n, r1), U2 (n, r2) orthonormal columns -> (r1, r2), φ[i-1, j-1].

    M = U1ᵀ U2; P = cumsum(cumsum(M ∘ M, 0), 1) so P[i-1, j-1] = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F;
    φ = P / min(i, j). One matmul, no loop over (i, j).
    """
    U1, U2 = as_float64(U1, "U1"), as_float64(U2, "U2")
    if U1.shape[0] != U2.shape[0]:
        raise LorascopeError(
            f"bases live in different spaces: {U1.shape[0]} vs {U2.shape[0]} rows "
            "(compare modules of the same shape)"
        )
    return _phi_of_cross(U1.T @ U2)


def _phi_of_cross(M: torch.Tensor) -> np.ndarray:
    """φ grid from the cross matrix M = U1ᵀ U2 (r1, r2) of two orthonormal bases."""
    P = torch.cumsum(torch.cumsum(M * M, dim=0), dim=1)
    i = torch.arange(1, M.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, M.shape[1] + 1, dtype=torch.float64)[None, :]
    # Rounding can push a perfect overlap to 1 + 1e-16; φ is a fraction by definition.
    return (P / torch.minimum(i, j)).clamp_(0.0, 1.0).numpy()


# Largest σ_max / σ_min for which the Gram route is used: its error grows like ε·κ² (1e-8 here).
GRAM_MAX_COND = 1e4


def factor_phi(X1, X2, side: str = "right", label: str = "") -> np.ndarray:
    """φ grid between the singular bases of two factors, computed from the factors themselves.

    side="right": X (r, n) as A, bases V (n, r); side="left": X (n, r) as B, bases U.
    With X = U Σ Vᵀ (right side), the r × r Gram matrix X Xᵀ = U Σ² Uᵀ gives V = Xᵀ U Σ⁻¹, so

        V1ᵀ V2 = Σ1⁻¹ U1ᵀ (X1 X2ᵀ) U2 Σ2⁻¹

    needs three r × n × r products and two r × r eigendecompositions, in float64: about 5× faster
    than two thin QRs for a 64 × 4096 factor, equal to ~1e-8. Factors with σ_max / σ_min above
    GRAM_MAX_COND (near rank-deficient, or r > n) take the QR route of `phi_grid`.
    """
    Y1, Y2 = as_float64(X1, "X1"), as_float64(X2, "X2")
    if side == "left":
        Y1, Y2 = Y1.T, Y2.T
    if Y1.shape[1] != Y2.shape[1]:
        raise LorascopeError(
            f"factors live in different spaces: {Y1.shape[1]} vs {Y2.shape[1]} "
            "(compare modules of the same shape)"
        )
    halves = []
    for Y in (Y1, Y2):
        e, U = torch.linalg.eigh(Y @ Y.T)  # ascending σ²
        e, U = e.flip(0), U.flip(1)
        if not e.numel() or e[-1] <= 0 or e[0] > GRAM_MAX_COND**2 * e[-1]:
            if e.numel() and e[-1] <= 1e-24 * max(float(e[0]), 1e-300):
                log.warning(
                    "%s: factor is rank-deficient; its trailing directions are arbitrary", label or side
                )
            return phi_grid(factor_svd(X1, side)[0], factor_svd(X2, side)[0])
        halves.append((U, e.sqrt()))
    (U1, s1), (U2, s2) = halves
    M = (U1.T @ (Y1 @ Y2.T) @ U2) / s1[:, None] / s2[None, :]
    return _phi_of_cross(M)


def subspace_similarity(A1, A2) -> np.ndarray:
    """The paper's φ(A1, A2, i, j): grid (r1, r2) of the right singular bases of A1 (r1, in), A2 (r2, in).

    Invariant to any invertible mixing of A's rows that keeps the σ order (rotations, rescaling all rows)."""
    return factor_phi(A1, A2, "right")


def b_similarity(B1, B2) -> np.ndarray:
    """φ grid of the left singular bases of B1 (out, r1) and B2 (out, r2)."""
    return factor_phi(B1, B2, "left")


def learned_a_similarity(A1, A1_init, A2, A2_init) -> np.ndarray:
    """φ grid of the right bases of the learned parts A1 − A1_init and A2 − A2_init, (r1, in) and (r2, in)."""
    return factor_phi(as_float64(A1) - as_float64(A1_init), as_float64(A2) - as_float64(A2_init))


def delta_similarity(A1, B1, A2, B2, side: str = "right") -> np.ndarray:
    """φ grid of ΔW1 = B1 A1 and ΔW2 = B2 A2 singular vectors (side "right": input space, "left": output).

    The scalings do not change singular vectors, so they are not needed."""
    U1, _, V1 = delta_svd(A1, B1)
    U2, _, V2 = delta_svd(A2, B2)
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


def _learned_part(adapter, init):
    if init is None:
        raise LorascopeError("factor dA (A − A0) needs the run's adapter_init.safetensors")
    return as_float64(adapter.A) - as_float64(init.A)


# The factors whose φ comes straight from one matrix per module (see factor_phi).
_FACTOR_MATRIX = {
    "A": lambda adapter, init: adapter.A,
    "B": lambda adapter, init: adapter.B,
    "dA": _learned_part,
}


def module_basis(adapter, factor: str, init=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(basis, σ) of one module for a `factor` in FACTORS; `adapter`/`init` have .A, .B, .scaling."""
    if factor in _FACTOR_MATRIX:
        return factor_svd(_FACTOR_MATRIX[factor](adapter, init), "left" if factor == "B" else "right")
    if factor in ("dW-right", "dW-left"):
        U, S, V = delta_svd(adapter.A, adapter.B, adapter.scaling)
        return (V if factor == "dW-right" else U), S
    raise LorascopeError(f"unknown factor {factor!r}: choose one of {', '.join(FACTORS)}")


@dataclass
class PairSimilarity:
    """φ grids of two runs, per common module. grids[m] is a DataFrame indexed by i (rows), j (columns)."""

    factor: str
    name_a: str
    name_b: str
    grids: dict[str, pd.DataFrame]
    dims: dict[str, int]  # n, the dimension of the space the bases live in
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """Per module: ranks, φ(1, 1), the mean of φ(k, k) for k ≤ min(r_a, r_b), and the
        same mean of the random floor max(k, k)/n = k/n, so the two compare like for like."""
        rows = []
        for m, g in self.grids.items():
            r_a, r_b = g.shape
            d = np.diag(g.to_numpy())  # length min(r_a, r_b)
            rows.append(
                {
                    "module": m,
                    "r_a": r_a,
                    "r_b": r_b,
                    "phi_11": float(g.iloc[0, 0]),
                    "phi_diag_mean": float(d.mean()),
                    "random_floor": float(np.diag(random_phi_baseline(r_a, r_b, self.dims[m])).mean()),
                }
            )
        return pd.DataFrame(rows).set_index("module")

    def long(self) -> pd.DataFrame:
        """Every φ value: columns module, i, j, phi (i, j from 1)."""
        parts = []
        for m, g in self.grids.items():
            i, j = np.meshgrid(g.index.to_numpy(), g.columns.to_numpy(), indexing="ij")
            parts.append(
                pd.DataFrame({"module": m, "i": i.ravel(), "j": j.ravel(), "phi": g.to_numpy().ravel()})
            )
        return pd.concat(parts, ignore_index=True)


def grid_frame(phi: np.ndarray) -> pd.DataFrame:
    """A φ array (r1, r2) as a DataFrame with index i = 1..r1 and columns j = 1..r2."""
    return pd.DataFrame(
        phi,
        index=pd.RangeIndex(1, phi.shape[0] + 1, name="i"),
        columns=pd.RangeIndex(1, phi.shape[1] + 1, name="j"),
    )


def run_similarity(
    run_a, run_b, factor: str = "A", modules: str | None = None, layers=None, progress: bool = False
) -> PairSimilarity:
    """φ grids between two runs (`lorascope.runs.Run`), module by module, matched by name.

    Modules in only one run are listed in `only_a` / `only_b` (and logged); a LorascopeError
    if the runs share none, or a common module has different shapes in the two runs."""
    if factor not in FACTORS:
        raise LorascopeError(f"unknown factor {factor!r}: choose one of {', '.join(FACTORS)}")
    common, only_a, only_b = match_modules(run_a.adapters, run_b.adapters)
    if not common:
        raise LorascopeError(
            f"{run_a.path} and {run_b.path} share no module "
            f"({next(iter(run_a.adapters), '-')} vs {next(iter(run_b.adapters), '-')}): "
            "compare runs of the same base model and targets"
        )
    for side, names in (("first", only_a), ("second", only_b)):
        if names:
            log.info("%d module(s) only in the %s run, skipped: %s", len(names), side, ", ".join(names))
    if factor == "dA":
        for run in (run_a, run_b):
            if run.init is None:
                raise LorascopeError(f"{run.path}: has no adapter_init.safetensors; --factor dA needs A0")
    common = select_modules(common, modules, layers)
    from tqdm.auto import tqdm

    grids, dims = {}, {}
    for m in tqdm(common, desc=f"phi {factor}", unit="module", disable=not progress):
        inits = [run.init.get(m) if run.init is not None else None for run in (run_a, run_b)]
        if factor in _FACTOR_MATRIX:  # φ straight from the factors (Gram route)
            pairs = zip((run_a, run_b), inits, strict=True)
            X1, X2 = (_FACTOR_MATRIX[factor](run.adapters[m], init) for run, init in pairs)
            side = "left" if factor == "B" else "right"
            n1, n2 = (X.shape[0] if side == "left" else X.shape[1] for X in (X1, X2))
            if n1 != n2:
                raise LorascopeError(f"module {m}: the runs' factors have different shapes ({n1} vs {n2})")
            grids[m] = grid_frame(factor_phi(X1, X2, side, label=f"{m} ({factor})"))
            dims[m] = n1
            continue
        (U1, S1), (U2, S2) = (
            module_basis(run.adapters[m], factor, init)
            for run, init in zip((run_a, run_b), inits, strict=True)
        )
        if U1.shape[0] != U2.shape[0]:
            raise LorascopeError(
                f"module {m}: the runs' factors have different shapes ({U1.shape[0]} vs {U2.shape[0]})"
            )
        for run, S in ((run_a, S1), (run_b, S2)):
            if S.numel() and float(S[-1]) <= 1e-12 * max(float(S[0]), 1e-300):
                log.warning(
                    "%s %s: %s is rank-deficient; its trailing directions are arbitrary", run.name, m, factor
                )
        grids[m] = grid_frame(phi_grid(U1, U2))
        dims[m] = U1.shape[0]
    return PairSimilarity(factor, run_a.name, run_b.name, grids, dims, only_a, only_b)
