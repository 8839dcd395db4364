"""How ΔW relates to the pre-trained W (paper Section 7.3, Table 7, Figure 8).

With U (out, k), V (in, k) the top-k singular vectors of ΔW, ‖Uᵀ W V‖_F measures how much
W already acts along ΔW's directions. The paper compares it with the same quantity for
W's own top-k directions (the ceiling) and for random directions (the floor), and reports
amplification = ‖ΔW‖_F / ‖Uᵀ W V‖_F: large when ΔW boosts directions W does not emphasise.

Only W's top-k singular values are needed for the ceiling, and only W's top singular vectors
for Figure 8 with `top_w`: they come from the truncated SVD (`truncated.top_svd`), or from a
cache (`w_top=`, e.g. `lorascope.wspectra.SpectraCache().entry(W).top(k)`), never from a dense SVD of W.
`amplifications` does several ΔW of one W at once: every product with W (each ΔW's W V, the random
floor's W V_r, W's top-k Rayleigh–Ritz when they are not cached) in one float64 pass over it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from lorascope.analysis.linalg import random_orthonormal
from lorascope.analysis.similarity import phi_grid
from lorascope.analysis.truncated import (
    full_svd,
    resolve_device,
    stream_product,
    top_svd,
    weight_top_and_products,
)
from lorascope.delta import Delta, check_shape, frobenius_norm
from lorascope.errors import LorascopeError

# The side the paper's Figure 8 compares W's and ΔW's singular vectors on: the left (output space),
# U from W = U Σ Vᵀ and from ΔW. The one place that says so; the figure and the default below read it.
FIG8_SIDE = "left"


def _matrix(W) -> torch.Tensor:
    """W as a 2-D tensor in its own dtype (a bf16 W as stored stays bf16: the products convert it)."""
    t = W.detach() if isinstance(W, torch.Tensor) else torch.as_tensor(W)
    if t.ndim != 2:
        raise LorascopeError(f"W must be a 2-D matrix, got shape {tuple(t.shape)}")
    return t


def _top_of_w(W, k: int, w_svd, w_top, device):
    """W's top-k (U, S, V): from a full `w_svd` (U, S, Vh), a cached `w_top` (U, S, V) with k' ≥ k,
    or the truncated SVD."""
    if w_svd is not None:
        U, S, Vh = w_svd
        return U[:, :k], S[:k], Vh[:k].T
    if w_top is not None:
        U, S, V = w_top
        if S.shape[0] < k:
            raise LorascopeError(f"w_top holds W's top-{S.shape[0]}, but k = {k} are needed")
        return U[:, :k], S[:k], V[:, :k]
    return top_svd(W, k, device=device)


def weight_svd(W) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin dense SVD of W in float64: (U (out, m), σ (m,), Vh (m, in)). Only when every direction is
    needed: for the top-k use `truncated.top_svd` (or the cache in `lorascope.wspectra`)."""
    return full_svd(W, device="cpu")


@functools.lru_cache(maxsize=8)
def _random_bases(out: int, n_in: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """amplification's seeded random orthonormal U_r (out, k) and V_r (in, k), float64 CPU: the same for
    every module of a shape, so drawn (a Gaussian and a QR each) once per shape. Read-only."""
    return random_orthonormal(out, k, seed), random_orthonormal(n_in, k, seed + 1)


def random_projection(W, k: int, seed: int = 0, *, device: str = "auto") -> float:
    """‖U_rᵀ W V_r‖_F for the seeded random orthonormal U_r (out, k) and V_r (in, k) of `amplification`
    (`random_orthonormal(out, k, seed)`, `random_orthonormal(in, k, seed + 1)`): a function of W alone."""
    dev = resolve_device(device)
    W = _matrix(W)
    U_r, V_r = (t.to(dev) for t in _random_bases(*W.shape, int(k), int(seed)))
    return float(torch.linalg.matrix_norm(U_r.T @ stream_product(W, V_r, device=dev)[0]))


@dataclass(frozen=True)
class Amplification:
    """Table 7's numbers for one module (see `amplification`); `asdict()` gives the table row."""

    w_norm: float
    dw_norm: float
    proj_dw: float
    proj_w: float
    proj_random: float
    amplification: float
    k: int

    def asdict(self) -> dict:
        return dataclasses.asdict(self)

    def __getitem__(self, name: str):
        return getattr(self, name)


# How the top-k of a dense ΔW are found here: block Krylov, the method of W's own top-k.
DENSE_ALGORITHM = "krylov"


def _top_of_delta(delta: Delta, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """ΔW's top-k (U (out, k), S (k,), V (in, k)) and ‖ΔW‖_F. A factored ΔW is decomposed once: its
    whole σ gives the norm (`frobenius_norm` would decompose it again)."""
    if delta.rank is not None:
        U, S, V = delta.svd(None, algorithm=DENSE_ALGORITHM)
        dw_norm = float(torch.linalg.vector_norm(S))
        U, S, V = U[:, :k], S[:k], V[:, :k]
    else:
        U, S, V = delta.svd(k, algorithm=DENSE_ALGORITHM)
        dw_norm = frobenius_norm(delta)
    if S.shape[0] < k:
        raise LorascopeError(f"k = {k} exceeds the rank of ΔW ({S.shape[0]}): use k ≤ {S.shape[0]}")
    return U, S, V, dw_norm


@dataclass
class WSide:
    """What `amplifications` computed of W alone, for a cache to keep (`lorascope.wspectra`):
    top  W's top-k (U, S, V) when neither `w_top` nor `w_svd` was given, else None;
    random  {k: ‖U_rᵀ W V_r‖_F} for the floors it computed (seeded as asked)."""

    top: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    random: dict[int, float] = field(default_factory=dict)


def amplification(
    W,
    delta: Delta,
    *,
    k: int | None = None,
    seed: int = 0,
    w_svd=None,
    w_top=None,
    proj_random: float | None = None,
    device: str = "auto",
) -> Amplification:
    """Table 7 numbers for one module. W (out, in); `delta`: its ΔW, of the protocol (`lorascope.delta`).

    k defaults to every direction of ΔW's factored form, min(out, in, r) (a dense ΔW needs k).
    W's top-k come from `w_top` (U (out, k'), S, V (in, k'), k' ≥ k, e.g. cached), `w_svd` (a full
    `weight_svd(W)`), or else the truncated SVD; `proj_random`: the cached
    `random_projection(W, k, seed)`, if known. The products run in float64 on `device` ("auto":
    CUDA when available); W may be in any dtype (bf16 as stored): one pass over it gives W V,
    ‖W‖_F, the random floor's W V_r and, when W's top-k are computed, their Rayleigh–Ritz
    (`truncated.weight_top_and_products`), converting a block of rows at a time. Returns an
    `Amplification`:
      w_norm       ‖W‖_F
      dw_norm      ‖ΔW‖_F
      proj_dw      ‖Uᵀ W V‖_F, U, V the top-k singular vectors of ΔW
      proj_w       the same with W's own top-k singular vectors (= √Σ_{i≤k} σ_i(W)²)
      proj_random  the same with random orthonormal U, V (seeded by `seed`)
      amplification  dw_norm / proj_dw (inf if proj_dw = 0; proj_dw and this are nan if ΔW = 0)
      k
    """
    W = _matrix(W)
    check_shape(delta, tuple(W.shape))
    k = _resolve_k(delta, k, W.shape)
    random = {k: float(proj_random)} if proj_random is not None else None
    numbers, _ = amplifications(
        W, {"": delta}, k=k, seed=seed, w_svd=w_svd, w_top=w_top, random=random, device=device
    )
    return numbers[""]


def _resolve_k(delta: Delta, k: int | None, shape) -> int:
    """k as given (checked against W's shape), else every direction of ΔW's factored form."""
    if k is not None:
        if not 1 <= int(k) <= min(shape):
            raise LorascopeError(f"k must be in 1..{min(shape)}, got {k}")
        return int(k)
    if delta.rank is None:
        raise LorascopeError("a dense ΔW has no rank to default to: give k")
    return min(delta.rank, *shape)


PASS_COLUMNS = 1024  # columns of one pass over W (ΔW's V, the floors' V_r): a sweep of many runs takes
# several passes rather than W X for all of them at once (1024 float64 columns of an 8192-row W: 64 MiB)


def _passes(widths: list[int], cap: int) -> list[list[int]]:
    """Consecutive groups of the indices of `widths`, each at most `cap` wide (one wider alone)."""
    groups: list[list[int]] = [[]]
    used = 0
    for i, w in enumerate(widths):
        if groups[-1] and used + w > cap:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += w
    return groups


def amplifications(
    W,
    deltas: Mapping[str, Delta],
    *,
    k: int | Mapping[str, int | None] | None = None,
    seed: int = 0,
    w_svd=None,
    w_top=None,
    random: Mapping[int, float] | None = None,
    top_k: int | None = None,
    device: str = "auto",
) -> tuple[dict[str, Amplification], WSide]:
    """`amplification` of several ΔW of one W ({label: delta}, e.g. a sweep's runs of one module),
    from one pass over W for up to PASS_COLUMNS columns of them: returns ({label: Amplification}, WSide).

    k: as for `amplification`, for every ΔW (None: each its own rank), or {label: k}; `random`: known floors
    {k: random_projection(W, k, seed)}; `top_k`: how many of W's top singular triplets to compute
    when neither `w_top` nor `w_svd` is given (default: the largest k; a cache keeps them for the
    next analysis: `WSide.top`). Every ΔW's V, the random V_r of each missing floor and, when W's
    top-k are computed, their Rayleigh–Ritz basis are stacked into one block of columns (a sweep
    wider than PASS_COLUMNS takes one more stream over W per PASS_COLUMNS columns); each product
    W V is reduced to its norm ‖Uᵀ W V‖_F as soon as it is made."""
    dev = resolve_device(device)
    W = _matrix(W)
    if not deltas:
        raise LorascopeError("amplifications: no ΔW given")
    sides = {}
    for label, delta in deltas.items():
        check_shape(delta, tuple(W.shape))
        k_d = _resolve_k(delta, k.get(label) if isinstance(k, Mapping) else k, W.shape)
        sides[label] = (k_d, *_top_of_delta(delta, k_d))
    ks = sorted({side[0] for side in sides.values()})
    if w_svd is None and w_top is not None and w_top[1].shape[0] < max(ks):
        raise LorascopeError(f"w_top holds W's top-{w_top[1].shape[0]}, but k = {max(ks)} are needed")
    known = dict(random or {})
    missing = [q for q in ks if q not in known]
    bases = {q: _random_bases(*W.shape, q, int(seed)) for q in missing}
    # ‖Lᵢᵀ W Rᵢ‖_F for each pair: every ΔW's (U, V), then each missing floor's (U_r, V_r).
    pairs = [(side[1], side[3]) for side in sides.values()] + [bases[q] for q in missing]
    norms, computed, w_norm = [], WSide(), None
    for n, group in enumerate(_passes([R.shape[1] for _, R in pairs], PASS_COLUMNS)):
        X = torch.cat([pairs[i][1].to(dev, torch.float64) for i in group], 1)
        if n == 0 and w_svd is None and w_top is None:
            top_k = max(ks) if top_k is None else max(int(top_k), max(ks))  # every ΔW's k is served
            *w_top, (WX, w_norm) = weight_top_and_products(W, top_k, X, device=dev)
            computed.top = w_top = tuple(w_top)
        else:
            WX, w_norm = stream_product(W, X, device=dev)
        start = 0
        for i in group:
            L, width = pairs[i][0], pairs[i][1].shape[1]
            norms.append(float(torch.linalg.matrix_norm(L.to(dev).T @ WX[:, start : start + width])))
            start += width
    for j, q in enumerate(missing):
        known[q] = computed.random[q] = norms[len(sides) + j]
    numbers = {}
    for i, (label, (k_d, _, _, _, dw_norm)) in enumerate(sides.items()):
        _, sigma_w, _ = _top_of_w(W, k_d, w_svd, w_top, dev)
        if dw_norm == 0:
            # ΔW = 0 (B = 0 at init) has no singular directions: U, V above are arbitrary.
            proj_dw, amp = float("nan"), float("nan")
        else:
            proj_dw = norms[i]  # ‖Uᵀ W V‖_F
            amp = dw_norm / proj_dw if proj_dw > 0 else float("inf")
        numbers[label] = Amplification(
            w_norm=w_norm,
            dw_norm=dw_norm,
            proj_dw=proj_dw,
            proj_w=float(torch.linalg.vector_norm(sigma_w)),
            proj_random=known[k_d],
            amplification=amp,
            k=k_d,
        )
    return numbers, computed


def w_delta_similarity(
    W,
    delta: Delta,
    *,
    side: str = FIG8_SIDE,
    top_w: int | None = None,
    k: int | None = None,
    w_svd=None,
    w_top=None,
    device: str = "auto",
) -> np.ndarray:
    """Figure 8: φ between W's top-i and ΔW's top-j singular vectors on the same side, (top_w, k).

    `delta`: ΔW of the protocol (`lorascope.delta`); k defaults to min(out, in, r) for a factored ΔW
    (a dense one needs k). side "left" (FIG8_SIDE, the paper's) compares output-space directions
    (U), "right" input-space ones (V).
    W's directions: `w_top` (cached top-k' with k' ≥ top_w), `w_svd` (a full `weight_svd(W)`),
    else the truncated top-`top_w`; top_w=None means every direction, which needs a dense SVD.
    """
    if side not in ("left", "right"):
        raise LorascopeError(f"side must be 'left' or 'right', got {side!r}")
    dev = resolve_device(device)
    W = _matrix(W)  # converted to float64 only where W itself is decomposed (not when w_top is given)
    check_shape(delta, tuple(W.shape))
    U, _, V, _ = _top_of_delta(delta, _resolve_k(delta, k, W.shape))
    if top_w is None and w_svd is None:
        w_svd = full_svd(W, device=dev)
    top_w = min(W.shape) if top_w is None else int(top_w)
    if not 1 <= top_w <= min(W.shape):
        raise LorascopeError(f"top_w must be in 1..{min(W.shape)}, got {top_w}")
    U_w, _, V_w = _top_of_w(W, top_w, w_svd, w_top, dev)
    return phi_grid(U_w, U) if side == "left" else phi_grid(V_w, V)


ENERGY_COLUMNS = ["energy_top_left", "energy_bottom_left", "energy_top_right", "energy_bottom_right"]


def energy_share(W_svd, delta, r: int) -> dict[str, float]:
    """The share of ΔW's energy in W's top-r and bottom-r singular subspaces (PiSSA / MiLoRA's measure).

    W_svd: W's thin SVD (U (out, m), S (m,), V (in, m)), σ descending, m = min(out, in); delta: ΔW
    (out, in) through its products. With U_top = U[:, :r], U_bot = U[:, m−r:] (V alike):
      energy_top_left     ‖U_topᵀ ΔW‖²_F / ‖ΔW‖²_F      (output space)
      energy_bottom_left  ‖U_botᵀ ΔW‖²_F / ‖ΔW‖²_F
      energy_top_right    ‖ΔW V_top‖²_F / ‖ΔW‖²_F       (input space)
      energy_bottom_right ‖ΔW V_bot‖²_F / ‖ΔW‖²_F
    Each is in [0, 1]; r directions of a random ΔW carry about r/m. nan where ΔW = 0.
    ‖ΔW‖²_F from ΔW's own factored SVD where it has one (`lorascope.delta.frobenius_norm`)."""
    U, _, V = (t.double() for t in W_svd)
    m = U.shape[1]
    if not 1 <= int(r) <= m:
        raise LorascopeError(f"r must be in 1..{m}, got {r}")
    r = int(r)
    total = frobenius_norm(delta) ** 2
    if total == 0:
        return dict.fromkeys(ENERGY_COLUMNS, float("nan"))

    def share(X):
        return float(torch.linalg.matrix_norm(X)) ** 2 / total

    return {
        "energy_top_left": share(delta.rmatvec(U[:, :r])),
        "energy_bottom_left": share(delta.rmatvec(U[:, m - r :])),
        "energy_top_right": share(delta.matvec(V[:, :r])),
        "energy_bottom_right": share(delta.matvec(V[:, m - r :])),
    }


def svd_from_basis(U: torch.Tensor, S: torch.Tensor, WtU: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """W's thin SVD (U, σ, V) float64 from its cached whole decomposition (`wspectra.Entry.basis`:
    U (out, m), σ (m,), Wᵀ U = V Σ (in, m)): v_i = Wᵀ u_i / σ_i (0 where σ_i = 0), no product with W."""
    U, S, WtU = U.double(), S.double(), WtU.double()
    return U, S, WtU / torch.where(S > 0, S, torch.ones_like(S))
