"""The ΔW protocol: one module's update W_T − W_0 as an object every analysis takes alike.

    d.shape                  (out, in); d.out_features, d.in_features
    d.rank                   r of its factored form (LoRA: r), None for a dense ΔW
    d.delta_weight()         ΔW (out, in), formed only when asked
    d.matvec(X)              ΔW X   (X (in, m) -> (out, m)), never forming a factored ΔW
    d.rmatvec(Y)             ΔWᵀ Y  (Y (out, m) -> (in, m))
    d.svd(k, algorithm)      (U (out, k), S (k,), V (in, k)), float64 CPU, σ descending
    d.factors                the trained LoRA factors: .A (r, in), .B (out, r), .scaling, or None (dense ΔW)
    d.factored_form          ΔW itself as s · B A (an `Adapter`), or None (dense ΔW): the factors for
                             LoRA, [B, −B0][A; A0] for a shifted init (whose trained factors are not ΔW's)

A factored ΔW = s · B A takes its SVD from thin QRs of its factors (`factored_svd`, ΔW never
formed); a dense one from the one truncated-SVD entry point (`truncated_svd`), whose `algorithm`
says how (as scikit-learn's `TruncatedSVD(algorithm=)`). The kinds of a run are `Adapter` (LoRA
factors) and `DenseDelta` (full fine-tuning), defined here and read by `lorascope.run_format`.
A leaf: torch and `lorascope.krylov` (scipy for ARPACK, imported when used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from lorascope.errors import LorascopeError
from lorascope.krylov import dense_top_svd

ALGORITHMS = ("auto", "lapack", "arpack", "krylov")

# A dense ΔW with min(out, in) up to this gets LAPACK's full SVD under "auto"; above, the top k come
# from ARPACK (scipy.sparse.linalg.svds): a truncated SVD, never a dense one when top-k suffices.
DENSE_SVD_MAX = 1024


class Delta(Protocol):
    """One module's ΔW (out, in), whatever its kind (see the module docstring)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def in_features(self) -> int: ...

    @property
    def out_features(self) -> int: ...

    @property
    def rank(self) -> int | None: ...

    @property
    def factors(self) -> Any | None: ...

    @property
    def factored_form(self) -> Adapter | None: ...

    def delta_weight(self) -> torch.Tensor: ...

    def matvec(self, X: torch.Tensor) -> torch.Tensor: ...

    def rmatvec(self, Y: torch.Tensor) -> torch.Tensor: ...

    def svd(
        self, k: int | None = None, algorithm: str = "auto"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def _f64(X, name: str) -> torch.Tensor:
    """A detached float64 CPU 2-D tensor."""
    t = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != 2:
        raise LorascopeError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    return t


def factored_svd(A, B, scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of ΔW = s · B A, (out, in), never forming ΔW.

        B = Q_B R_B, Aᵀ = Q_A R_A          (thin QR; Q_B (out, p), Q_A (in, q))
        R_B R_Aᵀ = u σ vᵀ                  (a p × q SVD, p, q ≤ r)
        ΔW = Q_B R_B R_Aᵀ Q_Aᵀ = (Q_B u) σ (Q_A v)ᵀ

    Returns U (out, k), S (k,), V (in, k) with S = |s| · σ descending and
    k = min(out, in, r); ΔW = U diag(S) Vᵀ (a negative s flips the sign of U).
    Cost O((out + in) r²) instead of O(out · in · min(out, in)).
    A rank-deficient ΔW (B = 0 at init) gives trailing zeros in S; the matching
    columns of U and V are orthonormal but arbitrary.
    """
    A = _f64(A, "A")
    B = _f64(B, "B")
    if A.shape[0] != B.shape[1]:
        raise LorascopeError(f"A {tuple(A.shape)} and B {tuple(B.shape)}: want A (r, in), B (out, r)")
    Q_B, R_B = torch.linalg.qr(B)  # (out, p), (p, r)
    Q_A, R_A = torch.linalg.qr(A.T.contiguous())  # (in, q), (q, r); contiguous: LAPACK's fast path
    u, sigma, vh = torch.linalg.svd(R_B @ R_A.T, full_matrices=False)  # (p, k), (k,), (k, q)
    U = Q_B @ u
    V = Q_A @ vh.T
    s = float(scaling)
    if s < 0:
        U = -U
    return U, abs(s) * sigma, V


def truncated_svd(
    M, k: int | None = None, algorithm: str = "auto", *, device: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of a dense matrix M (out, in): (U (out, k), S (k,), V (in, k)),
    float64 CPU tensors, σ descending. k None: all min(out, in); a larger k is cut to min(out, in).

    algorithm
      "lapack"  a full thin SVD (torch.linalg.svd), cut to k
      "arpack"  scipy's ARPACK (`svds`, start vector fixed: results repeat exactly)
      "krylov"  randomized block Krylov (`lorascope.krylov`, seed 0), the products on `device`
      "auto"    LAPACK when min(out, in) ≤ DENSE_SVD_MAX or k ≥ min(out, in) / 2, else ARPACK
    """
    if algorithm not in ALGORITHMS:
        raise LorascopeError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    m = min(M.shape)
    k = m if k is None else min(int(k), m)
    if k < 1:
        raise LorascopeError(f"k must be at least 1, got {k}")
    if algorithm == "krylov":
        return dense_top_svd(M, k, device=device)
    D = _f64(M, "ΔW")
    if algorithm == "auto":
        algorithm = "lapack" if m <= DENSE_SVD_MAX or k >= m // 2 else "arpack"
    if algorithm == "lapack":
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        return U[:, :k], S[:k], Vh[:k].T
    if k >= m:
        raise LorascopeError(f"ARPACK finds k < min(out, in) = {m} singular triplets, not {k}: use lapack")
    from scipy.sparse.linalg import svds

    # ARPACK converges to the extreme singular triplets; v0 fixed so results repeat exactly.
    v0 = np.random.default_rng(0).standard_normal(m)
    U, S, Vh = svds(D.numpy(), k=k, solver="arpack", v0=v0)
    order = np.argsort(S)[::-1].copy()  # svds returns σ ascending
    return (
        torch.from_numpy(np.ascontiguousarray(U[:, order])),
        torch.from_numpy(S[order].copy()),
        torch.from_numpy(np.ascontiguousarray(Vh[order].T)),
    )


def directions(delta: Delta, dense: int) -> int:
    """How many singular directions an analysis takes of ΔW when none are asked for: every one a
    factored ΔW has (min(r, out, in)), else the top `dense` (capped at min(out, in))."""
    return min(delta.rank if delta.rank is not None else int(dense), *delta.shape)


def rank_bound(delta: Delta) -> int:
    """The largest rank ΔW can have: r of its factored form, else min(out, in) (tables' "rank")."""
    return delta.rank if delta.rank is not None else min(delta.shape)


def frobenius_norm(delta: Delta) -> float:
    """‖ΔW‖_F: ‖σ‖₂ from the factored SVD where ΔW has a factored form (rank not None), else from
    the dense matrix."""
    if delta.rank is not None:
        return float(torch.linalg.vector_norm(delta.svd()[1]))
    return float(torch.linalg.matrix_norm(_f64(delta.delta_weight(), "ΔW")))


def check_shape(delta: Delta, shape: tuple[int, int], what: str = "W") -> None:
    """A LorascopeError unless ΔW is (out, in) = `shape`."""
    if tuple(delta.shape) != tuple(shape):
        raise LorascopeError(
            f"{what} {tuple(shape)} does not match ΔW {tuple(delta.shape)}: "
            "W must be (out, in) of the same module"
        )


# ----------------------------------------------------------------------------- the kinds of ΔW


@dataclass(frozen=True)
class Adapter:
    """One module's LoRA factors: ΔW = scaling · B A, with A (r, in) and B (out, r).

    A ΔW of the protocol: products and SVD come from the factors, ΔW is
    formed only by `delta_weight()`."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])

    @property
    def in_features(self) -> int:
        return self.A.shape[1]

    @property
    def out_features(self) -> int:
        return self.B.shape[0]

    @property
    def factors(self) -> Adapter:
        """The trained factors themselves (.A, .B, .scaling)."""
        return self

    @property
    def factored_form(self) -> Adapter:
        """ΔW = s · B A: its own factors."""
        return self

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · B A, (out, in). Dense: for its SVD use `svd()`, which never forms it."""
        return self.scaling * (self.B @ self.A)

    def matvec(self, X: torch.Tensor) -> torch.Tensor:
        """ΔW X = s · B (A X) for X (in, m), in X's dtype and device: (out + in) · r per column."""
        A, B = self.A.to(X), self.B.to(X)
        return float(self.scaling) * (B @ (A @ X))

    def rmatvec(self, Y: torch.Tensor) -> torch.Tensor:
        """ΔWᵀ Y = s · Aᵀ (Bᵀ Y) for Y (out, m)."""
        A, B = self.A.to(Y), self.B.to(Y)
        return float(self.scaling) * (A.T @ (B.T @ Y))

    def svd(self, k: int | None = None, algorithm: str = "auto"):
        """(U (out, k), S (k,), V (in, k)) of ΔW from QRs of the factors (`factored_svd`), exact
        whatever `algorithm`; k None (or more than it has): all min(out, in, r)."""
        U, S, V = factored_svd(self.A, self.B, self.scaling)
        return (U, S, V) if k is None else (U[:, : int(k)], S[: int(k)], V[:, : int(k)])


@dataclass(frozen=True)
class DenseDelta:
    """One module's update from full fine-tuning: ΔW = W_T − W_0, (out, in), stored densely.

    A ΔW of the protocol with no factors (rank None): analyses of A, B or
    A − A0 do not apply to it; its SVD is the truncated one (`truncated_svd`)."""

    delta: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.delta.shape)

    @property
    def rank(self) -> None:
        """None: a dense ΔW has no factored form (it may have any rank up to min(out, in))."""
        return None

    @property
    def factors(self) -> None:
        return None

    @property
    def factored_form(self) -> None:
        return None

    @property
    def in_features(self) -> int:
        return self.delta.shape[1]

    @property
    def out_features(self) -> int:
        return self.delta.shape[0]

    def delta_weight(self) -> torch.Tensor:
        return self.delta

    def matvec(self, X: torch.Tensor) -> torch.Tensor:
        return self.delta.to(X) @ X

    def rmatvec(self, Y: torch.Tensor) -> torch.Tensor:
        return self.delta.to(Y).T @ Y

    def svd(self, k: int | None = None, algorithm: str = "auto"):
        """Top-k of ΔW by `truncated_svd(ΔW, k, algorithm)`; k None: all min(out, in)."""
        return truncated_svd(self.delta, k, algorithm)
