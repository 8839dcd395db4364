"""Merging N adapters' ΔW of one module with PEFT's own utilities, and what the merge keeps and destroys.

The methods; in brackets PEFT's function, and the `add_weighted_adapter` combination_type that merges
ΔW the same way (before its SVD truncation):

    task_arithmetic   Σ_i w_i ΔW_i                                     [task_arithmetic; "cat", or "svd"
                                                                        with svd_rank ≥ the rank of the sum]
    ties              prune each ΔW_i to its `density` largest |entries|, elect one sign per entry from the
                      sum (or the count: majority_sign_method) of the pruned, average the weighted entries
                      of that sign                                     [ties; "ties_svd"]
    dare_linear       keep each entry with probability `density`, rescale by 1/density, Σ_i w_i
                                                                       [dare_linear; "dare_linear_svd"]
    dare_ties         DARE's pruning, then TIES' sign election         [dare_ties; "dare_ties_svd"]
    magnitude_prune   TIES' pruning, then Σ_i w_i                    [magnitude_prune; "magnitude_prune_svd"]
    svd               task arithmetic, then its best rank-`rank` approximation U_r S_r V_rᵀ
                                                                       [PEFT's "svd"; svd_rank defaults to
                                                                        the largest adapter rank]

PEFT's combination types without "_svd" ("linear", "ties", "dare_*", "magnitude_prune") apply these
utilities to the A and the B factors separately, which is not a merge of ΔW; lorascope merges ΔW as the
"_svd" types do, before their truncation (a rank-r adapter of any merge: `refactor`). ΔW_i = s_i B_i A_i
in float32, as PEFT's `get_delta_weight` forms it, and the weights as a float32 tensor, as PEFT makes them.

DARE draws from torch's global generator, as PEFT does; `merge` seeds it with `module_seed(seed, module)`
inside `torch.random.fork_rng`, so a merge repeats exactly and a module's draws do not depend on the other
modules. For the pruning methods each ΔW_i is first pruned by PEFT's `prune` (the calls the method itself
makes, in the same order) and the method then runs on the pruned tensors with density 1, which prunes
nothing: its result is unchanged, and the pruned tensors are at hand for `sign_conflict`.

What a merge keeps, per adapter i (U_i S_i V_iᵀ the SVD of ΔW_i, U S Vᵀ the top-k of the merged ΔW_M):

    retention_i   ‖P_merged ΔW_i‖²_F / ‖ΔW_i‖²_F with P_merged X = U Uᵀ X V Vᵀ: the share of ΔW_i's energy
                  inside both the left and the right top-k singular subspaces of ΔW_M (one-sided:
                  ‖U Uᵀ ΔW_i‖² and ‖ΔW_i V Vᵀ‖²). Floor, U and V uniformly random: k² / (out · in) exactly
                  (one-sided k / out, k / in)
    phi           ‖U_iᵀ U‖²_F / min(k_i, k) (left) and the same with V (right); floor max(k_i, k) / n exactly
    cosine        ⟨ΔW_i, ΔW_M⟩_F / (‖ΔW_i‖_F ‖ΔW_M‖_F)

between adapters (Task Singular Vectors, Gargiulo et al. 2025: the off-diagonal blocks U_iᵀ U_j of the
stacked bases' Gram matrix), `interference`: ‖U_iᵀ U_j‖²_F / min(k_i, k_j) (left; right with V), 1 for
one subspace, 0 for orthogonal ones; floor max(k_i, k_j) / n exactly; and for the pruning methods
`sign_conflict`: among the entries kept by at least two adapters, the fraction whose kept values do not
all share one sign (TIES then drops the minority), against the floor of independent fair-coin signs,
1 − 2^(1 − c) for an entry kept by c adapters, averaged over the same entries (exact given which
entries were kept).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lorascope.delta import Delta, frobenius_norm
from lorascope.errors import LorascopeError

METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune", "svd")
PRUNING = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
ELECTING = ("ties", "dare_ties")  # the methods whose sign election drops the minority
# add_weighted_adapter's combination_type that merges ΔW the same way (before its SVD truncation)
PEFT_COMBINATION = {
    "task_arithmetic": "cat",
    "ties": "ties_svd",
    "dare_linear": "dare_linear_svd",
    "dare_ties": "dare_ties_svd",
    "magnitude_prune": "magnitude_prune_svd",
    "svd": "svd",
}
SIGN_METHODS = ("total", "frequency")
DEFAULT_DENSITY = 0.2  # TIES' k = 20 % (Yadav et al. 2023), for the methods that prune
INSTALL = "pip install 'lorascope[merge]'"


def merge_utils():
    """PEFT's `peft.utils.merge_utils`; a LorascopeError saying how to install it where it is missing."""
    try:
        from peft.utils import merge_utils
    except ImportError:
        raise LorascopeError(
            f"merging uses PEFT's merge utilities, and PEFT is not installed: {INSTALL}"
        ) from None
    return merge_utils


def check_method(method: str) -> str:
    if method not in METHODS:
        raise LorascopeError(
            f"unknown merge method {method!r}: PEFT's merge utilities offer {', '.join(METHODS[:-1])}, "
            "and svd is PEFT's SVD merge (task arithmetic, truncated)"
        )
    return method


def check_density(method: str, density: float | None) -> float | None:
    """The density a pruning method uses (DEFAULT_DENSITY unless given), in (0, 1]; None for the others."""
    if density is not None:
        d = float(density)
        if not 0.0 < d <= 1.0:  # NaN fails too
            raise LorascopeError(f"--density must be in (0, 1] (the fraction of entries kept), got {density}")
    if method not in PRUNING:
        return None
    return DEFAULT_DENSITY if density is None else float(density)


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """One finite weight per adapter (1.0 each unless given)."""
    if weights is None:
        return [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise LorascopeError(f"--weights: {len(weights)} weight(s) for {n} adapters; give one per adapter")
    if not all(math.isfinite(w) for w in weights):
        raise LorascopeError(f"--weights must be finite numbers, got {weights}")
    return weights


def module_seed(seed: int, module: str) -> int:
    """The seed of one module's random pruning: a hash of (seed, module name), the same on every machine."""
    digest = hashlib.sha256(f"{int(seed)}:{module}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class Merged:
    """The merged ΔW_M (out, in) of one module as PEFT's utility returns it (float32; for "svd" the sum,
    before truncation), and the pruned ΔW_i of a pruning method (None for the others)."""

    delta: torch.Tensor
    pruned: list[torch.Tensor] | None


def merge(
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    method: str,
    *,
    density: float | None = None,
    majority_sign_method: str = "total",
    seed: int = 0,
    module: str = "",
) -> Merged:
    """ΔW_M of one module from the adapters' dense ΔW_i (out, in) with PEFT's `merge_utils`."""
    mu = merge_utils()
    check_method(method)
    density = check_density(method, density)
    if majority_sign_method not in SIGN_METHODS:
        raise LorascopeError(f"majority sign method must be one of {', '.join(SIGN_METHODS)}")
    if len(deltas) < 2:
        raise LorascopeError(f"a merge needs at least 2 adapters, got {len(deltas)}")
    shapes = {tuple(d.shape) for d in deltas}
    if len(shapes) != 1:
        raise LorascopeError(f"module {module}: the adapters' ΔW have different shapes {sorted(shapes)}")
    deltas = list(deltas)
    w = torch.tensor(check_weights(weights, len(deltas))).to(deltas[0].device)  # float32, as PEFT
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The density .* no pruning will be performed")
        torch.manual_seed(module_seed(seed, module))
        if method in ("task_arithmetic", "svd"):
            return Merged(mu.task_arithmetic(deltas, w), None)
        kind = "random" if method.startswith("dare") else "magnitude"
        pruned = [mu.prune(d, density, method=kind, rescale=kind == "random") for d in deltas]
        if method == "ties":
            out = mu.ties(pruned, w, 1.0, majority_sign_method)
        elif method == "dare_ties":
            out = mu.dare_ties(pruned, w, 1.0, majority_sign_method)
        elif method == "dare_linear":
            out = mu.dare_linear(pruned, w, 1.0)
        else:
            out = mu.magnitude_prune(pruned, w, 1.0)
    return Merged(out, pruned)


@dataclass
class SignConflict:
    """TIES' sign election over the pruned ΔW_i of one module (see the module docstring)."""

    fraction: float  # conflicting entries / entries kept by ≥ 2 adapters (NaN when there are none)
    floor: float  # the same for independent fair-coin signs on those entries
    shared_entries: float  # entries kept by ≥ 2 adapters / all entries
    kept: np.ndarray  # (N,): the fraction of ΔW_i's entries its pruning kept
    against: np.ndarray  # (N,): the fraction of those whose sign is not the elected one
    against_energy: np.ndarray  # (N,): their share of the pruned ΔW_i's energy


def sign_conflict(pruned: Sequence[torch.Tensor], majority_sign_method: str = "total") -> SignConflict:
    """Sign agreement among the entries the pruning kept; the elected sign is PEFT's
    `calculate_majority_sign_mask` (what `ties` and `dare_ties` keep). One pass per adapter over its
    pruned ΔW_i, plus PEFT's election over the stack."""
    mu = merge_utils()
    pruned = list(pruned)
    N, shape = len(pruned), pruned[0].shape
    count = torch.zeros(shape, dtype=torch.int16)
    pos = torch.zeros(shape, dtype=torch.bool)
    neg = torch.zeros(shape, dtype=torch.bool)
    kept_n = np.empty(N)
    for i, P in enumerate(pruned):
        count += P != 0
        pos |= P > 0
        neg |= P < 0
        kept_n[i] = float((P != 0).sum())
    # entries kept by exactly c adapters, c = 0 … N; conflicts: kept with both signs (so by c ≥ 2)
    by_count = torch.bincount(count.flatten().to(torch.int64), minlength=N + 1).double()
    n_multi = float(by_count[2:].sum())
    conflicts = float((pos & neg).sum())
    del count, pos, neg
    if n_multi:
        c = torch.arange(N + 1, dtype=torch.float64)
        floor = float((by_count[2:] * (1.0 - 2.0 ** (1.0 - c[2:]))).sum()) / n_multi
        fraction = conflicts / n_multi
    else:
        fraction = floor = float("nan")
    agree = mu.calculate_majority_sign_mask(torch.stack(pruned), method=majority_sign_method)
    against, against_energy = np.empty(N), np.empty(N)
    for i, P in enumerate(pruned):
        off = (P != 0) & ~agree[i]
        against[i] = float(off.sum()) / max(kept_n[i], 1.0)
        sq = P.square()
        total = float(sq.sum())
        against_energy[i] = float((sq * off).sum()) / total if total > 0 else float("nan")
    n_entries = float(pruned[0].numel())
    return SignConflict(
        fraction=fraction,
        floor=floor,
        shared_entries=n_multi / n_entries,
        kept=kept_n / n_entries,
        against=against,
        against_energy=against_energy,
    )


def refactor(
    U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (rank, in), B (out, rank)) with B A the best rank-`rank` approximation U_r S_r V_rᵀ, as PEFT's SVD
    merge factors it: B = U_r diag(S_r), A = V_rᵀ (scaling 1). Fewer than `rank` singular triplets are
    padded with zeros."""
    k = min(int(rank), int(S.shape[0]))
    B = torch.zeros(U.shape[0], int(rank), dtype=torch.float64)
    A = torch.zeros(int(rank), V.shape[0], dtype=torch.float64)
    B[:, :k] = U[:, :k].to(torch.float64) * S[:k].to(torch.float64)[None, :]
    A[:k] = V[:, :k].to(torch.float64).T
    return A, B


def retention(U: torch.Tensor, V: torch.Tensor, delta: Delta) -> tuple[float, float, float]:
    """(two-sided, left, right) retention of one ΔW_i by the merged ΔW's top-k bases U (out, k), V (in, k):
    ‖Uᵀ ΔW_i V‖²_F, ‖Uᵀ ΔW_i‖²_F and ‖ΔW_i V‖²_F over ‖ΔW_i‖²_F.

    delta: ΔW_i of the protocol (`lorascope.delta`), through its products ΔW_i V and ΔW_iᵀ U (for
    factors: (out + in) · r · k, ΔW_i never formed)."""
    U, V = U.to(torch.float64), V.to(torch.float64)
    DV = delta.matvec(V)  # (out, k)
    DtU = delta.rmatvec(U)  # (in, k)
    total = frobenius_norm(delta) ** 2
    both = float((U.T @ DV).square().sum())
    left = float(DtU.square().sum())
    right = float(DV.square().sum())
    if not total > 0:
        return (float("nan"),) * 3
    return both / total, left / total, right / total


def retention_floor(k: int, out: int, n_in: int) -> tuple[float, float, float]:
    """E[retention] for U, V uniformly random k-frames of R^out, R^in, independent of ΔW_i: (k²/(out·in),
    k/out, k/in)."""
    return k * k / (out * n_in), k / out, k / n_in


def phi_top(U_i: torch.Tensor, U: torch.Tensor) -> tuple[float, float]:
    """(φ, floor): ‖U_iᵀ U‖²_F / min(k_i, k) for orthonormal U_i (n, k_i), U (n, k); floor max(k_i, k)/n."""
    ki, k = int(U_i.shape[1]), int(U.shape[1])
    phi = float((U_i.to(torch.float64).T @ U.to(torch.float64)).square().sum()) / min(ki, k)
    return phi, max(ki, k) / int(U.shape[0])


def interference(bases: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(I (N, N), floor (N, N)): I[i, j] = ‖U_iᵀ U_j‖²_F / min(k_i, k_j) for the orthonormal bases
    U_i (n, k_i) (diagonal 1), from one Gram matrix of the stacked bases; floor max(k_i, k_j) / n."""
    widths = [int(U.shape[1]) for U in bases]
    n = int(bases[0].shape[0])
    Z = torch.cat([torch.as_tensor(U).to(torch.float64) for U in bases], dim=1)
    G = (Z.T @ Z).square()
    edges = np.cumsum([0, *widths])
    N = len(widths)
    out = np.empty((N, N))
    for a in range(N):
        rows = G[edges[a] : edges[a + 1]].sum(0)
        for b in range(N):
            out[a, b] = float(rows[edges[b] : edges[b + 1]].sum()) / min(widths[a], widths[b])
    kw = np.asarray(widths)
    return (out + out.T) / 2, np.maximum(kw[:, None], kw[None, :]) / n


def cosine_factored(delta_i: Delta, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> float:
    """`cosine` for a merged ΔW_M = U diag(S) Vᵀ held by its SVD (task arithmetic and svd from the
    factors) and ΔW_i = s B A (its `factored_form`):
    ⟨s B A, U S Vᵀ⟩ = s Σ_{t,j} (Uᵀ B)_{tj} S_t (A V)_{jt}, ‖ΔW_M‖_F = ‖S‖, k × r products only."""
    f = delta_i.factored_form
    A, B, s = f.A, f.B, f.scaling
    A, B = torch.as_tensor(A).to(torch.float64), torch.as_tensor(B).to(torch.float64)
    U, S, V = U.to(torch.float64), S.to(torch.float64), V.to(torch.float64)
    dot = float(s) * float(((U.T @ B) * S[:, None] * (A @ V).T).sum())
    norm_i = abs(float(s)) * float(((B.T @ B) * (A @ A.T)).sum()) ** 0.5
    norms = norm_i * float(torch.linalg.vector_norm(S))
    return dot / norms if norms > 0 else float("nan")


def cosine(delta_i: Delta, merged: torch.Tensor) -> float:
    """⟨ΔW_i, ΔW_M⟩_F / (‖ΔW_i‖_F ‖ΔW_M‖_F) with ΔW_M dense (out, in) and ΔW_i of the protocol
    (`lorascope.delta`); with a factored form ⟨ΔW_i, ΔW_M⟩ = s Σ (Bᵀ ΔW_M) ∘ A, an r × out × in
    product."""
    M = torch.as_tensor(merged)
    f = delta_i.factored_form
    if f is not None:
        A, B, s = f.A, f.B, f.scaling
        A, B = torch.as_tensor(A).to(M.dtype), torch.as_tensor(B).to(M.dtype)
        dot = float(s) * float(((B.T @ M).double() * A.double()).sum())
        gram = (B.double().T @ B.double()) * (A.double() @ A.double().T)
        norm_i = abs(float(s)) * float(gram.sum()) ** 0.5
    else:
        D = torch.as_tensor(delta_i.delta_weight())
        dot = float(torch.sum(D * M, dtype=torch.float64))
        norm_i = float(torch.linalg.vector_norm(D))
    norms = norm_i * float(torch.linalg.vector_norm(M))
    return dot / norms if norms > 0 else float("nan")
