"""N adapters of one base merged with PEFT's own utilities, and what the merge keeps of each.

    from lorascope.compare import run_merge
    mrg = run_merge(sources, method="ties", density=0.2)     # PEFT's merge utilities, per module
    mrg.retention()      # per adapter: retention, φ with the merged top-k, cosine, sign election
    mrg.modules          # per module: sign conflict, interference, their floors
    mrg.save_adapter(out)  # the merged ΔW as a PEFT adapter folder

The mathematics is `lorascope.analysis.merging`. The adapters' factors are held; the dense ΔW_i of one
module at a time are formed (PEFT's utilities take dense tensors) and dropped after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lorascope.analysis import merging as mg
from lorascope.analysis.linalg import numerical_rank, one_thread
from lorascope.compare.inputs import SameBase
from lorascope.compare.many import DENSE_TOP_K, _base_meta, _check_k, _select, _Shared, _sources
from lorascope.delta import directions, factored_svd, truncated_svd
from lorascope.errors import LorascopeError
from lorascope.names import layer_index, module_kind
from lorascope.run_format import Run
from lorascope.runs import load_run

log = logging.getLogger(__name__)


@dataclass
class MergeReport:
    """A merge of N adapters per module, and what it keeps (see `lorascope.analysis.merging`)."""

    method: str
    weights: list[float]
    density: float | None
    rank: int | None  # the rank the merged adapter is re-factorised at (when factors were kept)
    majority_sign_method: str
    seed: int
    names: list[str]
    paths: list[Path]
    adapters: pd.DataFrame  # long: module, adapter, weight, retention ..., one row per (module, adapter)
    modules: pd.DataFrame  # one row per module
    interference: dict[str, np.ndarray]  # side -> (N, N), mean over modules
    interference_floor: dict[str, np.ndarray]
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # module -> (A, B)
    skipped: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    RETENTION_COLUMNS = (
        "weight", "retention", "retention_floor", "retention_left", "retention_right",
        "phi_left", "phi_left_floor", "phi_right", "phi_right_floor", "cosine",
        "kept", "against_sign", "against_energy",
    )  # fmt: skip

    def retention(self) -> pd.DataFrame:
        """Per adapter, mean over modules, in the adapters' order."""
        cols = [c for c in self.RETENTION_COLUMNS if c in self.adapters]
        out = self.adapters.groupby("adapter", sort=False)[cols].mean()
        return out.loc[self.names].rename_axis("adapter")

    def interference_frame(self, side: str) -> pd.DataFrame:
        idx = pd.Index(self.names, name="adapter")
        return pd.DataFrame(
            self.interference[side], index=idx, columns=pd.Index(self.names, name="adapter_b")
        )

    def interference_long(self) -> pd.DataFrame:
        """side, adapter, adapter_b, interference, floor: both sides, every pair (the heatmap's CSV)."""
        parts = []
        for side in ("left", "right"):
            frame = self.interference_frame(side).stack().rename("interference").reset_index()
            frame.insert(0, "side", side)
            frame["floor"] = self.interference_floor[side].ravel()
            parts.append(frame)
        return pd.concat(parts, ignore_index=True)

    def off_diagonal(self, side: str) -> tuple[float, float]:
        """(mean interference, mean floor) over the pairs i ≠ j."""
        N = len(self.names)
        mask = ~np.eye(N, dtype=bool)
        return float(self.interference[side][mask].mean()), float(self.interference_floor[side][mask].mean())

    def save_adapter(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """The merged ΔW as a PEFT LoRA folder (B = U_r S_r, A = V_rᵀ, lora_alpha = r), loadable by
        `PeftModel.from_pretrained`. Needs the factors (`run_merge(..., keep_factors=True)`)."""
        from lorascope.peft_format import export_peft
        from lorascope.run_format import Adapter

        if not self.factors:
            raise LorascopeError("no merged factors were kept: run the merge with keep_factors=True")
        out_dir = Path(out_dir)
        if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
            raise LorascopeError(
                f"{out_dir}: folder is not empty; pass --overwrite to replace the adapter in it"
            )
        adapters = {
            mod: Adapter(A.to(torch.float32), B.to(torch.float32), 1.0)
            for mod, (A, B) in self.factors.items()
        }
        meta = {
            "method": "lora",
            "rank": self.rank,
            "base_model": self.meta.get("base_model"),
            "rslora": False,
            "fan_in_fan_out": self.meta.get("fan_in_fan_out", False),
            "task_type": self.meta.get("task_type"),
        }
        run = Run(path=Path(out_dir), adapters=adapters, meta=meta, summary={"status": "complete"})
        return export_peft(run, out_dir, overwrite=overwrite)


LOWRANK_MIN = 2**22  # a dense merged ΔW of at least this many entries (2048²): its top-k by a randomized
LOWRANK_ITERS = 4  # SVD in float32 with this many power iterations (torch.svd_lowrank), not block Krylov
# to 1e-13 in float64: TIES/DARE's sums have flat spectra, where the exact top-k costs 10-20 s a module


def _lowrank_svd(D: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U (out, k), S (k,), V (in, k)) float64, σ descending: the top-k of a dense (out, in) ΔW by
    torch.svd_lowrank (q = k + 16, LOWRANK_ITERS power iterations), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        U, S, V = torch.svd_lowrank(D.to(torch.float32), q=min(k + 16, *D.shape), niter=LOWRANK_ITERS)
    return U[:, :k].to(torch.float64), S[:k].to(torch.float64), V[:, :k].to(torch.float64)


def _delta_dense(adapter) -> torch.Tensor:
    """ΔW_i (out, in) float32 as PEFT's get_delta_weight forms it from LoRA factors: (B @ A) · s."""
    f = adapter.factored_form
    if f is not None:
        return (f.B.to(torch.float32) @ f.A.to(torch.float32)) * float(f.scaling)
    return adapter.delta_weight().to(torch.float32)


def _rank(adapter) -> int:
    return directions(adapter, DENSE_TOP_K)


def run_merge(
    sources: Sequence,
    method: str,
    *,
    weights: Sequence[float] | None = None,
    density: float | None = None,
    rank: int | None = None,
    k: int | None = None,
    majority_sign_method: str = "total",
    seed: int = 0,
    modules: str | None = None,
    layers=None,
    keep_factors: bool = False,
    check_base: bool = True,
    progress: bool = False,
) -> MergeReport:
    """Merge run folders, PEFT folders or `Run`s (or one sweep folder) module by module with PEFT's
    merge utilities (`lorascope.analysis.merging`), and measure what the merge keeps.

    weights: one per adapter (1.0 each); density: the fraction of entries the pruning methods keep
    (DEFAULT_DENSITY); rank: the rank of the "svd" merge and of the re-factorised adapter (default:
    the largest adapter rank; for task_arithmetic Σ r_i, at which it is exact); k: the merged ΔW's top
    singular directions the measures use (default Σ r_i, capped by min(out, in) and by the merged
    ΔW's numerical rank); keep_factors: keep the rank-`rank` factors for `save_adapter`.
    """
    from tqdm.auto import tqdm

    mg.merge_utils()  # PEFT, before anything is loaded
    mg.check_method(method)
    density = mg.check_density(method, density)
    rank, k = _check_k(rank, "--rank"), _check_k(k)
    if majority_sign_method not in mg.SIGN_METHODS:
        raise LorascopeError(f"--majority-sign must be one of {', '.join(mg.SIGN_METHODS)}")
    sources, paths, names = _sources(sources, "a merge needs")
    weights = mg.check_weights(weights, len(names))
    same_base, shared = SameBase(), _Shared()
    runs, meta = [], {}
    with one_thread():  # reading and checking the factors: small operations, one thread
        for i, source in enumerate(tqdm(sources, desc="load", unit="adapter", disable=not progress)):
            run = source if isinstance(source, Run) else load_run(source)
            if check_base:
                same_base.add(run, names[i])
            meta = _base_meta(run) if i == 0 else meta
            kept = shared.narrow(i, names, _select(run, modules, layers))
            runs.append({mod: run.adapters[mod] for mod in kept})
            del run
    skipped = shared.skipped(len(names))
    rows, module_rows, factors = [], [], {}
    inter = {s: np.zeros((len(names),) * 2) for s in ("left", "right")}
    floors = {s: np.zeros((len(names),) * 2) for s in ("left", "right")}
    save_ranks, peft_seconds = set(), 0.0
    for mod in tqdm(kept, desc=f"merge {method}", unit="module", disable=not progress):
        ads = [r[mod] for r in runs]
        out = _merge_module(mod, ads, names, weights, method, density, rank, k, majority_sign_method,
                            seed, keep_factors)  # fmt: skip
        rows += out["rows"]
        peft_seconds += out["peft_seconds"]
        module_rows.append(out["module"])
        for s in inter:
            inter[s] += out["interference"][s]
            floors[s] += out["floor"][s]
        if keep_factors:
            factors[mod] = out["factors"]
            save_ranks.add(out["factors"][0].shape[0])
    for s in inter:
        inter[s] /= len(kept)
        floors[s] /= len(kept)
    meta.update(peft_combination=mg.PEFT_COMBINATION[method], peft_seconds=peft_seconds)
    saved_rank = max(save_ranks) if save_ranks else rank
    return MergeReport(
        method, weights, density, saved_rank, majority_sign_method, seed, names, paths,
        pd.DataFrame(rows), pd.DataFrame(module_rows).set_index("module"), inter, floors, factors,
        skipped, meta,
    )  # fmt: skip


def _merge_module(mod, ads, names, weights, method, density, rank, k, sign_method, seed, keep_factors):
    """The merge of one module and every measure of it; the dense ΔW_i live only inside this call."""
    out_dim, in_dim = _shape(ads[0])
    for name, a in zip(names, ads, strict=True):
        if _shape(a) != (out_dim, in_dim):
            raise LorascopeError(f"module {mod}: {name} has ΔW {_shape(a)}, {names[0]} {(out_dim, in_dim)}")
    ranks = [_rank(a) for a in ads]
    cap = min(out_dim, in_dim)
    r_default = sum(ranks) if method == "task_arithmetic" else max(ranks)
    r_save = min(rank or r_default, cap)
    k_m = min(k or sum(ranks), cap)
    deltas = [_delta_dense(a) for a in ads]
    clock = time.perf_counter()
    merged = mg.merge(deltas, weights, method, density=density, majority_sign_method=sign_method,
                      seed=seed, module=mod)  # fmt: skip
    peft_seconds = time.perf_counter() - clock  # PEFT's own utilities: the floor of any merge
    need = max(k_m, r_save) if method != "svd" else r_save
    factored = method in ("task_arithmetic", "svd") and all(a.factored_form is not None for a in ads)
    with one_thread() if out_dim * in_dim < 2**20 else nullcontext():
        fs = [a.factored_form for a in ads]
        if factored:
            # Σ w_i s_i B_i A_i = [w_1 s_1 B_1 | …] [A_1; …]: its SVD from the factors, exactly.
            A_cat = torch.cat([f.A.to(torch.float64) for f in fs], 0)
            B_cat = torch.cat(
                [w * float(f.scaling) * f.B.to(torch.float64) for w, f in zip(weights, fs, strict=True)], 1
            )
            U, S, V = factored_svd(A_cat, B_cat, 1.0)
            exact_spectrum = True
        elif out_dim * in_dim >= LOWRANK_MIN and min(need, cap) < cap:
            U, S, V = _lowrank_svd(merged.delta, min(need, cap), seed)
            exact_spectrum = False
        else:
            U, S, V = truncated_svd(merged.delta, min(need, cap), "krylov", device="cpu")
            exact_spectrum = min(need, cap) == cap
    delta_m = merged.delta
    sum_norm = float(torch.linalg.vector_norm(merged.delta))
    S_all = S
    if method == "svd":  # PEFT's SVD merge: the best rank-r_save approximation of the sum
        U, S, V = U[:, :r_save], S[:r_save], V[:, :r_save]
        delta_m = ((U * S[None, :]) @ V.T).to(torch.float32)
    total = float(torch.linalg.vector_norm(delta_m))
    rank_m = numerical_rank(S)
    k_eff = max(1, min(k_m, rank_m))
    Uk, Vk = U[:, :k_eff], V[:, :k_eff]
    sign = mg.sign_conflict(merged.pruned, sign_method) if merged.pruned is not None else None
    bases_l, bases_r, rows = [], [], []
    floor_both, floor_l, floor_r = mg.retention_floor(k_eff, out_dim, in_dim)
    with one_thread():  # the measures: (n, r) products per adapter
        for i, (name, a) in enumerate(zip(names, ads, strict=True)):
            Ui, Si, Vi = a.svd(_rank(a))  # from the factors for LoRA, truncated for a dense ΔW
            keep = max(1, numerical_rank(Si))
            Ui, Vi = Ui[:, :keep], Vi[:, :keep]
            bases_l.append(Ui)
            bases_r.append(Vi)
            both, left, right = mg.retention(Uk, Vk, a)
            phi_l, phi_l_floor = mg.phi_top(Ui, Uk)
            phi_r, phi_r_floor = mg.phi_top(Vi, Vk)
            row = {
                "module": mod,
                "adapter": name,
                "weight": weights[i],
                "retention": both,
                "retention_floor": floor_both,
                "retention_left": left,
                "retention_right": right,
                "phi_left": phi_l,
                "phi_left_floor": phi_l_floor,
                "phi_right": phi_r,
                "phi_right_floor": phi_r_floor,
                # task arithmetic / svd: ΔW_M = U S Vᵀ exactly, the cosine from the factors
                "cosine": mg.cosine_factored(a, U, S, V) if factored else mg.cosine(a, delta_m),
            }
            if sign is not None:
                row.update(kept=float(sign.kept[i]), against_sign=float(sign.against[i]),
                           against_energy=float(sign.against_energy[i]))  # fmt: skip
            rows.append(row)
    del deltas, merged
    I_l, F_l = mg.interference(bases_l)
    I_r, F_r = mg.interference(bases_r)
    N = len(names)
    off = ~np.eye(N, dtype=bool)
    # What the rank-r_save factors miss, ‖ΔW − B A‖_F / ‖ΔW‖_F (for svd: of the sum, what it truncates):
    # from every singular value where the factored SVD has them all, else from ‖ΔW‖²_F − Σ_{t ≤ r} σ_t².
    whole = sum_norm if method == "svd" else total
    if exact_spectrum:
        tail = float(S_all[r_save:].square().sum())
    else:
        tail = max(whole**2 - float(S_all[:r_save].square().sum()), 0.0)
    refactor_error = tail**0.5 / whole if whole > 0 else 0.0
    module_row = {
        "module": mod,
        "kind": module_kind(mod),
        "layer": layer_index(mod),
        "out": out_dim,
        "in": in_dim,
        "k": k_eff,
        "merged_norm": total,
        "merged_rank": rank_m,
        "interference_left": float(I_l[off].mean()),
        "interference_left_floor": float(F_l[off].mean()),
        "interference_right": float(I_r[off].mean()),
        "interference_right_floor": float(F_r[off].mean()),
    }
    if sign is not None:
        module_row.update(sign_conflict=sign.fraction, sign_conflict_floor=sign.floor,
                          shared_entries=sign.shared_entries)  # fmt: skip
    result = {"rows": rows, "module": module_row, "interference": {"left": I_l, "right": I_r},
              "floor": {"left": F_l, "right": F_r}}  # fmt: skip
    if keep_factors:
        A, B = mg.refactor(U, S, V, r_save)
        module_row["rank"] = r_save
        module_row["refactor_error"] = refactor_error
        result["factors"] = (A.to(torch.float32), B.to(torch.float32))
    result["peft_seconds"] = peft_seconds
    return result


def _shape(adapter) -> tuple[int, int]:
    return (int(adapter.out_features), int(adapter.in_features))


def merge_summary(report: MergeReport) -> dict:
    """The headline numbers of a merge, for a one-line print and findings: means over modules/adapters."""
    ret = report.retention()
    out = {
        "retention": float(ret["retention"].mean()),
        "retention_floor": float(ret["retention_floor"].mean()),
    }
    for side in ("left", "right"):
        out[f"interference_{side}"], out[f"interference_{side}_floor"] = report.off_diagonal(side)
    if "sign_conflict" in report.modules:
        out["sign_conflict"] = float(report.modules["sign_conflict"].mean())
        out["sign_conflict_floor"] = float(report.modules["sign_conflict_floor"].mean())
    return out
