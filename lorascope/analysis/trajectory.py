"""How an adapter forms during training: its factors and ΔW, step by step, against A0 and the final ΔW_T.

Per module and step t (A0 = A at step 0, T = the final step, s = scaling, ΔW_t = s · B_t A_t):

    dA_norm       ‖A_t − A0‖_F
    dA_rel        ‖A_t − A0‖_F / ‖A0‖_F                          (Zhu et al. 2024: A barely moves)
    B_norm        ‖B_t‖_F                                        (B0 = 0: B carries the change)
    dW_norm       ‖ΔW_t‖_F, from the factored SVD (never forming ΔW)
    stable_rank   ‖ΔW_t‖²_F / ‖ΔW_t‖²_2;  energy_rank: smallest j with Σ_{i≤j} σ_i² ≥ 90 % (0 for ΔW_t = 0)
    phi_in_11     φ(1, 1) = (v_1(t)ᵀ v_1(T))²: squared cosine between the top right (input-space)
                  singular vectors of ΔW_t and ΔW_T
    phi_in_kk     φ(k, k) = ‖V_t[:, :k]ᵀ V_T[:, :k]‖²_F / k: the share of ΔW_T's top-k input subspace
                  that ΔW_t's top-k input subspace already spans
    phi_out_11, phi_out_kk   the same on the left (output-space) singular vectors U
    phi_A_A0      φ(r, r) between the right singular bases of A_t and A0, ‖V_Aᵀ V_A0‖²_F / r: the share
                  of A's row space that is still its random initial one (1 for a frozen A)
    dW_dA_ratio   ‖s · B_t (A_t − A0)‖_F / ‖ΔW_t‖_F: since ΔW_t = s B_t A0 + s B_t (A_t − A0), the size
                  of the part of ΔW_t that exists because A moved, relative to ΔW_t (0 for a frozen A)

k = min(k asked, r, numerical rank of ΔW_T), one k per module (column "k"). φ is left NaN where the
singular vectors it needs are arbitrary: φ(1, 1) when ΔW_t = 0 (step 0, B0 = 0) or ΔW_T = 0, φ(k, k)
also when ΔW_t has fewer than k non-zero singular values. A near tie σ_1 ≈ σ_2 of ΔW_T also makes
its top direction ill-defined; φ(1, 1) is then low for reasons training did not cause.
At k = r with B_t of full rank, ΔW_t's top-r input subspace is the whole row space of A_t, so
phi_in_kk then measures how far A's row space is from its final one (it starts high: A_t ≈ A0 ≈ A_T
early on); φ(1, 1), or k < r, says where ΔW concentrates. The same holds for phi_out_kk and B's columns.
Other NaNs, never a division by zero: dA_*, phi_A_A0 and dW_dA_ratio without A0 (no adapter_init),
dA_rel when ‖A0‖_F = 0, dW_dA_ratio when ΔW_t = 0. For ΔW_t = 0 the ranks are 0 (`spectrum_metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lorascope.analysis.linalg import as_float64, factor_basis, numerical_rank
from lorascope.analysis.similarity import phi_grid
from lorascope.analysis.spectrum import spectrum_metrics
from lorascope.errors import LorascopeError
from lorascope.names import layer_index, module_kind

log = logging.getLogger(__name__)

QUANTITIES = [
    "dA_norm", "dA_rel", "B_norm", "dW_norm", "stable_rank", "energy_rank",
    "phi_in_11", "phi_in_kk", "phi_out_11", "phi_out_kk", "phi_A_A0", "dW_dA_ratio",
]  # fmt: skip
COLUMNS = ["module", "kind", "layer", "step", "rank", "k", "in_features", "out_features", *QUANTITIES]
NAN = float("nan")


@dataclass(frozen=True)
class Reference:
    """What every step of one module is compared against: A0 and the top-k singular bases of ΔW_T.

    A0 (r, in) and V_A0 (in, r) are None without an adapter_init; U_T (out, k), V_T (in, k)."""

    A0: torch.Tensor | None
    V_A0: torch.Tensor | None
    U_T: torch.Tensor
    V_T: torch.Tensor

    @property
    def k(self) -> int:
        return self.V_T.shape[1]

    @classmethod
    def of(cls, final, init=None, k: int = 8, label: str = "") -> Reference:
        """From the final ΔW and the initial one (of the protocol, `lorascope.delta`; init may be None;
        A0 is `init.factors.A`)."""
        U, S, V = final.svd()
        k = min(k, numerical_rank(S))
        if k == 0:
            log.warning(
                "%s: the final ΔW is 0, so no step has a direction to compare with", label or "module"
            )
        A0 = as_float64(init.factors.A, "A0") if init is not None and init.factors is not None else None
        if A0 is not None and A0.shape != (final.rank, final.in_features):
            raise LorascopeError(
                f"{label}: A0 is {tuple(A0.shape)} but A is {(final.rank, final.in_features)}"
            )
        V_A0 = factor_basis(A0, "right") if A0 is not None else None
        return cls(A0, V_A0, U[:, :k], V[:, :k])


def step_metrics(delta, ref: Reference, energy: float = 0.9) -> dict:
    """The quantities of the module docstring for one step's ΔW (of the protocol, `lorascope.delta`):
    its `svd()` for the spectrum and φ columns, its `factors` A (r, in), B (out, r), s for the
    A / B columns (NaN without factors)."""
    U, S, V = delta.svd()
    spec = spectrum_metrics(S.numpy(), energy)
    dW_norm = spec["fro_norm"]
    k = ref.k
    phi = {"phi_in_11": NAN, "phi_in_kk": NAN, "phi_out_11": NAN, "phi_out_kk": NAN}
    if dW_norm > 0 and k > 0:
        full_k = numerical_rank(S) >= k  # else ΔW_t's k-th direction is arbitrary
        for side, basis, ref_basis in (("in", V, ref.V_T), ("out", U, ref.U_T)):
            grid = phi_grid(basis[:, :k], ref_basis)  # (k, k)
            phi[f"phi_{side}_11"] = float(grid[0, 0])
            phi[f"phi_{side}_kk"] = float(grid[k - 1, k - 1]) if full_k else NAN
    dA_norm = dA_rel = phi_A = ratio = B_norm = NAN
    f = delta.factors
    if f is not None:
        A, B, scaling = as_float64(f.A, "A"), as_float64(f.B, "B"), f.scaling
        B_norm = float(torch.linalg.matrix_norm(B))
    if f is not None and ref.A0 is not None:
        D = A - ref.A0  # (r, in)
        dA_norm = float(torch.linalg.matrix_norm(D))
        A0_norm = float(torch.linalg.matrix_norm(ref.A0))
        dA_rel = dA_norm / A0_norm if A0_norm > 0 else NAN
        phi_A = float(phi_grid(factor_basis(A, "right"), ref.V_A0)[-1, -1])
        if dW_norm > 0:
            # ‖B D‖_F = ‖R_B D‖_F with B = Q_B R_B (Q_B orthonormal): an r × in product, not (out, in).
            R_B = torch.linalg.qr(B)[1]
            ratio = abs(float(scaling)) * float(torch.linalg.matrix_norm(R_B @ D)) / dW_norm
    return {
        "dA_norm": dA_norm,
        "dA_rel": dA_rel,
        "B_norm": B_norm,
        "dW_norm": dW_norm,
        "stable_rank": spec["stable_rank"],
        "energy_rank": spec["energy_rank"],
        **phi,
        "phi_A_A0": phi_A,
        "dW_dA_ratio": ratio,
    }


def trajectory_frame(
    states: Iterable[tuple[int, Mapping[str, object]]],
    final: Mapping[str, object],
    init: Mapping[str, object] | None = None,
    *,
    k: int = 8,
    energy: float = 0.9,
) -> pd.DataFrame:
    """The trajectory of every module of `final`: one row per (module, step), columns COLUMNS.

    states: (step, {module: ΔW}) in increasing step order, each ΔW of the protocol (`lorascope.delta`,
    with factors for the A / B columns); consumed one at a time, so a lazy iterable keeps memory flat
    in the number of steps.
    final: the adapters at step T (the reference of the φ columns); init: A0/B0 (None: the A0 columns
    are NaN). Rows are ordered by module (as in `final`), then step.
    """
    if k < 1:
        raise LorascopeError(f"k must be at least 1, got {k}")
    names = list(final)
    if not names:
        raise LorascopeError("no module to trace")
    refs = {m: Reference.of(final[m], init.get(m) if init is not None else None, k, m) for m in names}
    rows: dict[str, list[dict]] = {m: [] for m in names}
    last = None
    for step, adapters in states:
        if last is not None and step <= last:
            raise LorascopeError(f"steps must increase: step {step} after step {last}")
        last = step
        for m in names:
            if m not in adapters:
                raise LorascopeError(f"step {step} has no module {m}")
            ad, ref = adapters[m], final[m]
            if tuple(ad.shape) != tuple(ref.shape) or ad.rank != ref.rank:
                raise LorascopeError(
                    f"module {m}: A {(ad.rank, ad.in_features)}, B {(ad.out_features, ad.rank)} at step "
                    f"{step} but A {(ref.rank, ref.in_features)}, B {(ref.out_features, ref.rank)} at the end"
                )
            head = {
                "module": m,
                "kind": module_kind(m),
                "layer": layer_index(m),
                "step": int(step),
                "rank": ref.rank,
                "k": refs[m].k,
                "in_features": ref.in_features,
                "out_features": ref.out_features,
            }
            rows[m].append({**head, **step_metrics(ad, refs[m], energy)})
    frame = pd.DataFrame([row for m in names for row in rows[m]], columns=COLUMNS)
    frame["layer"] = frame["layer"].astype("Int64")  # None for a module without a layer index
    return frame


def _check_frame(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in ("module", "kind", "step", *columns) if c not in frame.columns]
    if missing:
        raise LorascopeError(f"not a trajectory frame: no column {', '.join(missing)}")
    if frame.empty:
        raise LorascopeError("the trajectory frame is empty")


def first_step_reached(
    frame: pd.DataFrame,
    threshold: float = 0.9,
    columns: Sequence[str] = ("phi_in_11", "phi_out_11"),
    stay: bool = True,
) -> pd.DataFrame:
    """Per module, the first step at which every `columns` value is ≥ threshold.

    Default: the step at which ΔW_t's top direction is already the final one, on both sides
    (φ(1, 1) to ΔW_T of the input and of the output singular vector). stay=True (default): the first
    step from which it stays ≥ threshold at every later step (a settled direction, not a passing
    one); stay=False: the first step it is reached at all. NaN (step 0, ΔW_t = 0) is "not reached".
    Columns module, kind, layer, step (NaN if never), final_step, fraction = step / final_step.
    """
    if not 0 < threshold <= 1:
        raise LorascopeError(f"threshold must be in (0, 1], got {threshold}")
    columns = list(columns)
    _check_frame(frame, columns)
    rows = []
    for module, g in frame.groupby("module", sort=False):
        g = g.sort_values("step", kind="stable")
        ok = (g[columns] >= threshold).all(axis=1).to_numpy()  # NaN compares False
        if stay:  # true where this step and every later one reach the threshold
            ok = np.logical_and.accumulate(ok[::-1])[::-1]
        steps = g["step"].to_numpy()
        step = float(steps[ok][0]) if ok.any() else NAN
        final = int(steps[-1])
        rows.append(
            {
                "module": module,
                "kind": g["kind"].iloc[0],
                "layer": g["layer"].iloc[0] if "layer" in g else None,
                "step": step,
                "final_step": final,
                "fraction": step / final if final > 0 else NAN,
            }
        )
    out = pd.DataFrame(rows)
    out["layer"] = out["layer"].astype("Int64")
    return out


def first_step_by_kind(reached: pd.DataFrame) -> pd.DataFrame:
    """`first_step_reached` summarised per module kind (index kind): modules, reached (how many
    modules reach it), step_median / step_min / step_max over those that do, fraction_median."""
    _check_frame(reached, ("final_step", "fraction"))
    g = reached.groupby("kind", sort=False)
    return pd.DataFrame(
        {
            "modules": g.size(),
            "reached": g["step"].count(),
            "step_median": g["step"].median(),
            "step_min": g["step"].min(),
            "step_max": g["step"].max(),
            "fraction_median": g["fraction"].median(),
            "final_step": g["final_step"].max(),
        }
    )


def kind_summary(frame: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Per module kind (index kind), the mean over modules of every quantity at `step` (default:
    each module's last step), plus modules (how many) and phi_A_A0_floor = mean r / in, the
    expected φ(r, r) of two independent random r-dim subspaces of R^in."""
    _check_frame(frame, QUANTITIES)
    if step is None:
        at = frame[frame["step"] == frame.groupby("module")["step"].transform("max")]
    else:
        at = frame[frame["step"] == step]
        if at.empty:
            raise LorascopeError(f"no row at step {step}; steps are {sorted(frame['step'].unique())}")
    g = at.groupby("kind", sort=False)
    out = g[QUANTITIES].mean()
    out.insert(0, "modules", g.size())
    out.insert(1, "step", g["step"].max())
    out["phi_A_A0_floor"] = (at["rank"] / at["in_features"]).groupby(at["kind"], sort=False).mean()
    return out
