"""Intruder dimensions (Shuttleworth et al. 2024, arXiv 2410.21228).

A singular vector of the fine-tuned W + ΔW is an "intruder" when it is nearly orthogonal
to every singular vector of the pre-trained W: a new direction, not a reweighted old one.

    max_cos_i = max_j |u_iᵀ u_j(W)|,  u_i the top-k left singular vectors of W + ΔW,
                                     u_j(W) all min(out, in) left singular vectors of W
    count(ε)  = #{i ≤ k : max_cos_i < ε}

With W's whole decomposition known (`w_basis=(U, σ, Wᵀ U)`, cached by
`lorascope.wspectra.Entry.basis`) and ΔW of a factored form (`factored_form`: LoRA, a shifted
init), the top-k of W + ΔW and their cosines follow from n × r products of its factors and a
small structured problem, with no product with W (`analysis.w_plus_delta`). Otherwise they come
from the matrix-free truncated SVD (products W x + ΔW x); W's full left basis is the one
decomposition that needs all of W's directions: pass it (`U_w=`, e.g. cached by
`lorascope.wspectra`) to compute it once per base weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lorascope.analysis.truncated import as_f64, left_basis, resolve_device, top_svd
from lorascope.analysis.w_plus_delta import top_of_w_plus_delta
from lorascope.delta import Delta, check_shape
from lorascope.errors import LorascopeError

EPS_GRID = np.round(np.linspace(0.1, 0.9, 17), 2)  # ε = 0.10, 0.15, ..., 0.90 for the count curve


@dataclass(frozen=True)
class Intruders:
    """Intruder dimensions of one module (see `intruder_dimensions`); reads like the dict it replaces."""

    count: int  # how many of the top-k are intruders at ε
    indices: list[int]  # their 0-based i < k
    max_cos: np.ndarray  # (k,) max_j |u_iᵀ u_j(W)|
    sigma: np.ndarray  # (k,) singular values of W + ΔW

    def __getitem__(self, name: str):
        return getattr(self, name)


def intruder_dimensions(
    W,
    delta: Delta,
    k: int = 10,
    eps: float = 0.5,
    *,
    U_w=None,
    w_basis=None,
    device: str = "auto",
    seed: int = 0,
) -> Intruders:
    """Among the top-k left singular vectors u_i of W + ΔW, those with max_j |u_iᵀ u_j(W)| < eps.

    W: (out, in). delta: ΔW of the protocol (`lorascope.delta`), applied by its products (W + ΔW is
    never formed). U_w: all left singular vectors of W, (out, min(out, in)), if already computed
    (`truncated.left_basis(W)` or the W-spectra cache). w_basis: (U (out, m), σ (m,), Wᵀ U (in, m)),
    W's whole decomposition (`wspectra.Entry.basis`): with a factored ΔW, W is then not touched at
    all (its shape only). Float64 on `device` ("auto": CUDA when available). Assumes W's singular
    values are distinct enough for its singular vectors to be well defined (true of trained weights).
    """
    if not 0 < eps <= 1:
        raise LorascopeError(f"eps must be in (0, 1], got {eps}")
    dev = resolve_device(device)
    check_shape(delta, tuple(W.shape))
    if not 1 <= k <= min(W.shape):
        raise LorascopeError(f"k must be in 1..{min(W.shape)}, got {k}")
    form = delta.factored_form  # ΔW = s·B A, whatever its kind (None: dense)
    if w_basis is not None and form is not None:
        U, S, WtU = (t.to(dev) for t in w_basis)
        res = top_of_w_plus_delta(U, S, WtU, form.A, form.B, float(form.scaling), k, seed=seed)
        max_cos = res["max_cos"].numpy()
        indices = [int(i) for i in np.flatnonzero(max_cos < eps)]
        return Intruders(len(indices), indices, max_cos, res["sigma"].numpy())
    W = as_f64(W, dev, "W")
    U_ft, S_ft, _ = top_svd(W, k, delta=delta, device=dev, seed=seed)  # (out, k)
    if U_w is None:
        U_w = left_basis(W, device=dev)
    U_w = as_f64(U_w, dev, "U_w")
    if U_w.shape != (W.shape[0], min(W.shape)):
        raise LorascopeError(
            f"U_w {tuple(U_w.shape)} is not W's full left basis ({W.shape[0]}, {min(W.shape)})"
        )
    max_cos = (U_ft.to(dev).T @ U_w).abs().amax(dim=1).cpu().numpy()  # (k,)
    indices = [int(i) for i in np.flatnonzero(max_cos < eps)]
    return Intruders(len(indices), indices, max_cos, S_ft.numpy())


def intruder_curve(max_cos, eps=EPS_GRID) -> tuple[np.ndarray, np.ndarray]:
    """(eps (n,), count (n,)): the number of intruders count(ε) = #{i : max_cos_i < ε} for each ε.

    max_cos: (k,) from `intruder_dimensions`. count is non-decreasing in ε; count(1) = k unless a
    direction of W + ΔW is exactly one of W's."""
    max_cos = np.asarray(max_cos, dtype=float)
    eps = np.asarray(eps, dtype=float)
    return eps, (max_cos[None, :] < eps[:, None]).sum(axis=1)
