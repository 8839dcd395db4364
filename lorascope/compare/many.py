"""Many adapters of one base at once: the subspace they share, and what merging them keeps (issue #22).

    from lorascope.compare import run_subspace, run_merge, project_adapter
    rep = run_subspace(["runs/minilm-bbc"], side="right")   # a sweep, or run and PEFT folders mixed
    rep.table()          # per module: energy share of the top-m shared directions, its floor, knee, ...
    rep.curve()          # E(m) for every m with the Monte Carlo floor band, long format
    rep.coverage()       # per adapter: its coverage by the top-m shared directions; outliers flagged
    rep.save_basis(path) # the shared basis as safetensors, for project_adapter(new, path)

    mrg = run_merge(sources, method="ties", density=0.2)     # PEFT's merge utilities, per module
    mrg.retention()      # per adapter: retention, φ with the merged top-k, cosine, sign election
    mrg.modules          # per module: sign conflict, interference, their floors
    mrg.save_adapter(out)  # the merged ΔW as a PEFT adapter folder

The mathematics is `lorascope.analysis.shared_subspace` and `lorascope.analysis.merging`. Adapters
are checked to share one base (`SameBase`: the recorded ‖W‖_F per module, else the base model's
name); only the modules every adapter adapts are used (the others are listed in `.skipped`).
`run_subspace` loads the adapters one at a time and keeps each module's top-k basis (n, k) in
float32, so memory grows linearly in N and no out × in matrix is ever formed; `run_merge` forms the
dense ΔW_i of one module at a time (PEFT's utilities take dense tensors).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from lorascope.analysis import merging as mg
from lorascope.analysis import shared_subspace as ss
from lorascope.analysis.factors import get_factor, is_factored
from lorascope.analysis.linalg import delta_svd, dense_top_svd, numerical_rank, one_thread
from lorascope.analysis.modules import layer_index, module_kind, parse_layers, select_modules
from lorascope.compare.inputs import SameBase, resolve_sources, unique_names
from lorascope.errors import LorascopeError
from lorascope.runs import Run, load_run

log = logging.getLogger(__name__)

SIDES = ("right", "left")
DENSE_TOP_K = 64  # directions of a dense ΔW (full fine-tuning) unless k is given, as `similarity` takes
BASIS_FORMAT = "lorascope-shared-subspace"


# ----------------------------------------------------------------------------- inputs


def _sources(sources: Sequence, what: str) -> tuple[list, list[Path], list[str]]:
    sources = resolve_sources(sources, what)
    paths = [s.path if isinstance(s, Run) else Path(s) for s in sources]
    return sources, paths, unique_names(paths)


def _select(run: Run, modules: str | None, layers) -> list[str]:
    chosen = layers
    if isinstance(layers, str):  # "0,2-5", cut to the layers this run has
        chosen = parse_layers(
            layers, available={j for n in run.adapters if (j := layer_index(n)) is not None}
        )
    return select_modules(run.adapters, modules, chosen) if modules or layers else list(run.adapters)


class _Shared:
    """The modules every adapter so far adapts (the first adapter's order), narrowed one adapter at a time."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.every: dict[str, None] = {}

    def narrow(self, i: int, names: list[str], mine: list[str]) -> list[str]:
        self.every.update(dict.fromkeys(mine))
        shared = mine if i == 0 else [m for m in self.kept if m in set(mine)]
        if not shared:
            before = names[0] if i == 1 else f"the {i} adapters before it"
            raise LorascopeError(
                f"{names[i]} shares no module with {before} ({mine[0] if mine else '-'} vs {self.kept[0]}): "
                "give adapters of the same base model and targets"
            )
        self.kept = shared
        return shared

    def skipped(self, n: int) -> list[str]:
        skipped = [m for m in self.every if m not in set(self.kept)]
        if skipped:
            shown = ", ".join(skipped[:4]) + (", ..." if len(skipped) > 4 else "")
            log.warning("%d module(s) not shared by all %d adapters, skipped: %s", len(skipped), n, shown)
        return skipped


def _base_meta(run: Run) -> dict:
    return {
        "base_model": run.meta.get("base_model"),
        "base_fingerprint": dict(run.meta.get("base_fingerprint") or {}),
        "fan_in_fan_out": bool(run.meta.get("fan_in_fan_out", False)),
        "task_type": run.meta.get("task_type"),
    }


def _merge_fingerprints(meta: dict, run: Run) -> None:
    for m, v in (run.meta.get("base_fingerprint") or {}).items():
        meta["base_fingerprint"].setdefault(m, float(v))
    if meta.get("base_model") is None:
        meta["base_model"] = run.meta.get("base_model")


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise LorascopeError(f"--side must be left or right, got {side!r}")
    return side


def _check_k(k: int | None, name: str = "--k") -> int | None:
    if k is not None and int(k) < 1:
        raise LorascopeError(f"{name} must be at least 1, got {k}")
    return None if k is None else int(k)


def _basis(adapter, side: str, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW's top-k basis on `side` and its σ, cut to ΔW's numerical rank: factored for LoRA (all r
    directions when k is None), a truncated SVD for a dense ΔW (DENSE_TOP_K unless k is given)."""
    spec = get_factor("dW-right" if side == "right" else "dW-left")
    top = k if k is not None or is_factored(adapter) else DENSE_TOP_K
    U, S = spec.basis(adapter, k=top)
    keep = numerical_rank(S)
    return U[:, :keep], S[:keep]


# ----------------------------------------------------------------------------- subspace


@dataclass
class SubspaceReport:
    """The shared subspace of N adapters, per module (see `lorascope.analysis.shared_subspace`)."""

    side: str
    weighted: bool
    k: int | None  # the directions asked of each adapter (None: all of its rank)
    names: list[str]
    paths: list[Path]
    results: dict[str, ss.SharedSubspace]
    floors: dict[str, ss.SubspaceFloor]  # modules of one shape share one floor object
    m: dict[str, int]  # the m each module's numbers are read at (the largest k_i unless asked)
    skipped: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # base model, fingerprints, trials, seed

    @property
    def modules(self) -> list[str]:
        return list(self.results)

    def table(self) -> pd.DataFrame:
        """One row per module: n, adapters, directions K, m, the energy share E(m) of the top-m shared
        directions beside the floor's mean and band top, knee, shared_dims, λ_1 and the floor's λ_1."""
        rows = []
        for mod, r in self.results.items():
            f, m = self.floors[mod], self.m[mod]
            mean, _, hi = f.at(m)
            rows.append(
                {
                    "module": mod,
                    "kind": module_kind(mod),
                    "layer": layer_index(mod),
                    "n": r.n,
                    "adapters": r.adapters,
                    "directions": int(sum(r.widths)),
                    "m": m,
                    "energy": r.energy_at(m),
                    "floor": mean,
                    "floor_hi": hi,
                    "knee": ss.knee(r, f),
                    "shared_dims": ss.shared_dims(r, f),
                    "lambda_1": float(r.eigenvalues[0]),
                    "floor_lambda_1": float(f.eig_mean[0]),
                }
            )
        return pd.DataFrame(rows).set_index("module")

    def kind_summary(self) -> pd.DataFrame:
        """The table's numbers per module kind, median over layers."""
        t = self.table()
        cols = ["n", "m", "energy", "floor", "floor_hi", "knee", "shared_dims", "lambda_1", "floor_lambda_1"]
        out = t.groupby("kind", sort=False)[cols].median()
        out.insert(0, "modules", t.groupby("kind", sort=False).size())
        return out

    def curve(self) -> pd.DataFrame:
        """Long format, m = 1 … min(n, K) per module: module, m, energy, floor_mean, floor_lo, floor_hi."""
        parts = []
        for mod, r in self.results.items():
            f = self.floors[mod]
            e = r.energy
            L = min(len(e), len(f.energy_mean))
            parts.append(
                pd.DataFrame(
                    {
                        "module": mod,
                        "m": np.arange(1, L + 1),
                        "energy": e[:L],
                        "floor_mean": f.energy_mean[:L],
                        "floor_lo": f.energy_lo[:L],
                        "floor_hi": f.energy_hi[:L],
                    }
                )
            )
        return pd.concat(parts, ignore_index=True)

    def coverage_long(self) -> pd.DataFrame:
        """module, adapter, m, coverage c_i(m) for m = 1 … keep."""
        parts = []
        for mod, r in self.results.items():
            N, keep = r.coverage.shape
            parts.append(
                pd.DataFrame(
                    {
                        "module": mod,
                        "adapter": np.repeat(self.names, keep),
                        "m": np.tile(np.arange(1, keep + 1), N),
                        "coverage": r.coverage.ravel(),
                    }
                )
            )
        return pd.concat(parts, ignore_index=True)

    def coverage(self) -> pd.DataFrame:
        """Per adapter, mean over modules: its coverage c_i(m) by the top-m shared directions (m of each
        module, `table`), the floor (the random adapters' mean coverage, F̄(m)), its lowest module, and
        `outlier`: coverage closer to the floor than to the adapters' median, c_i − F̄ < (median − F̄)/2,
        flagged only where the median stands above the floor's band."""
        cov, floor, hi = [], [], []
        for mod, r in self.results.items():
            m = min(self.m[mod], r.coverage.shape[1])
            cov.append(r.coverage[:, m - 1])
            mean, _, top = self.floors[mod].at(m)
            floor.append(mean)
            hi.append(top)
        C = np.stack(cov, axis=1)  # (N, modules)
        c, f, h = C.mean(1), float(np.mean(floor)), float(np.mean(hi))
        median = float(np.median(c))
        outlier = (c - f < (median - f) / 2) if median > h else np.zeros(len(c), dtype=bool)
        lowest = [self.modules[j] for j in C.argmin(axis=1)]
        return pd.DataFrame(
            {"coverage": c, "floor": f, "lowest_module": lowest, "lowest": C.min(1), "outlier": outlier},
            index=pd.Index(self.names, name="adapter"),
        )

    def save_basis(self, path: str | Path) -> Path:
        """The shared basis as safetensors: "<module>.basis" (n, keep) float32 and "<module>.eigenvalues";
        the header says the side, weighting, k, the adapters and the base (read by `load_shared_basis`)."""
        from lorascope.run_format import save_tensors

        path = Path(path)
        tensors = {}
        for mod, r in self.results.items():
            tensors[f"{mod}.basis"] = r.basis.to(torch.float32).contiguous()
            tensors[f"{mod}.eigenvalues"] = torch.from_numpy(np.ascontiguousarray(r.eigenvalues))
        meta = {
            "format": BASIS_FORMAT,
            "version": 1,
            "side": self.side,
            "weighted": self.weighted,
            "k": self.k,
            "m": self.m,
            "adapters": self.names,
            **{key: self.meta.get(key) for key in ("base_model", "base_fingerprint")},
        }
        save_tensors(path, tensors, meta)
        return path


def run_subspace(
    sources: Sequence,
    *,
    side: str = "right",
    k: int | None = None,
    weighted: bool = False,
    m: int | None = None,
    keep: int | None = None,
    trials: int = ss.TRIALS,
    seed: int = 0,
    modules: str | None = None,
    layers=None,
    check_base: bool = True,
    progress: bool = False,
) -> SubspaceReport:
    """The shared subspace of run folders, PEFT folders or `Run`s (or one sweep folder), per module.

    side: "right" (ΔW's input space) or "left" (output space); k: directions per adapter (default: all
    of its rank; a dense ΔW its top DENSE_TOP_K); weighted: σ² weights instead of equal ones; m: the
    number of shared directions the table reads (default: the largest k_i of the module); keep: shared
    directions kept in the basis and coverage (default 4 × the largest k_i, capped by M's rank); trials,
    seed: the Monte Carlo floor. Modules of one shape share one floor; with σ-weighting it uses each
    adapter's weight profile averaged over those modules.
    """
    from tqdm.auto import tqdm

    side = _check_side(side)
    k, m, keep = _check_k(k), _check_k(m, "--m"), _check_k(keep, "--keep")
    sources, paths, names = _sources(sources, "a shared subspace needs")
    N = len(names)
    same_base, shared = SameBase(), _Shared()
    store: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    meta: dict = {}
    with one_thread():
        for i, source in enumerate(tqdm(sources, desc=f"bases {side}", unit="adapter", disable=not progress)):
            run = source if isinstance(source, Run) else load_run(source)
            if check_base:
                same_base.add(run, names[i])
            if i == 0:
                meta = _base_meta(run)
            else:
                _merge_fingerprints(meta, run)
            kept = shared.narrow(i, names, _select(run, modules, layers))
            for mod in [mod for mod in store if mod not in set(kept)]:
                del store[mod]
            for mod in kept:
                U, S = _basis(run.adapters[mod], side, k)
                if U.shape[1] == 0:
                    raise LorascopeError(f"{names[i]}: module {mod}: ΔW is zero (an untrained adapter?)")
                if i and U.shape[0] != store[mod][0][0].shape[0]:
                    raise LorascopeError(
                        f"module {mod}: n = {U.shape[0]} in {names[i]} but {store[mod][0][0].shape[0]} in "
                        f"{names[0]} (different base models?)"
                    )
                store.setdefault(mod, []).append((U.to(torch.float32), S.to(torch.float64)))
            del run  # only the (n, k) bases stay
    skipped = shared.skipped(N)
    results, weights = {}, {}
    for mod in tqdm(shared.kept, desc="shared subspace", unit="module", disable=not progress):
        items = store.pop(mod)
        weights[mod] = [ss.adapter_weights(S, weighted) for _, S in items]
        results[mod] = ss.shared_subspace([U for U, _ in items], weights[mod], keep)
        del items
    floors = _floors(results, weights, weighted, trials, seed, progress)
    ms = {mod: m or max(r.widths) for mod, r in results.items()}
    meta.update(trials=trials, seed=seed)
    return SubspaceReport(side, weighted, k, names, paths, results, floors, ms, skipped, meta)


def _floors(results, weights, weighted, trials, seed, progress) -> dict[str, ss.SubspaceFloor]:
    """One Monte Carlo floor per (n, widths): with σ-weighting, the mean weight profile of those modules."""
    groups: dict[tuple, list[str]] = {}
    for mod, r in results.items():
        groups.setdefault((r.n, tuple(r.widths)), []).append(mod)
    floors = {}
    from tqdm.auto import tqdm

    for (n, _), mods in tqdm(groups.items(), desc="floor", unit="shape", disable=not progress):
        if weighted:
            profile = [torch.stack(ws).mean(0) for ws in zip(*(weights[mod] for mod in mods), strict=True)]
        else:
            profile = weights[mods[0]]
        floor = ss.random_floor(n, profile, trials=trials, seed=seed)
        floors.update(dict.fromkeys(mods, floor))
    return floors


def load_shared_basis(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], dict]:
    """({module: basis (n, keep) float64}, {module: eigenvalues}, header) of a `save_basis` file."""
    from lorascope.run_format import read_tensors

    path = Path(path)
    tensors, meta = read_tensors(path)
    if meta.get("format") != BASIS_FORMAT:
        raise LorascopeError(
            f"{path}: not a shared basis written by `lorascope subspace` (no {BASIS_FORMAT} header)"
        )
    bases = {
        k.removesuffix(".basis"): v.to(torch.float64) for k, v in tensors.items() if k.endswith(".basis")
    }
    eigs = {
        k.removesuffix(".eigenvalues"): v.numpy() for k, v in tensors.items() if k.endswith(".eigenvalues")
    }
    return bases, eigs, meta


def project_adapter(
    source,
    basis: SubspaceReport | str | Path,
    *,
    k: int | None = None,
    modules: str | None = None,
    layers=None,
    check_base: bool = True,
) -> pd.DataFrame:
    """How much of a new adapter lies inside a shared basis (a report, or a `save_basis` file), per
    module: coverage c(m) at the basis's m and at its last direction `keep`, beside the exact floor
    m / n of an adapter independent of the basis. The side and the weighting are the basis's."""
    k = _check_k(k)
    if isinstance(basis, SubspaceReport):
        bases = {mod: r.basis for mod, r in basis.results.items()}
        header = {"side": basis.side, "weighted": basis.weighted, "m": basis.m, **basis.meta}
    else:
        bases, _, header = load_shared_basis(basis)
    run = source if isinstance(source, Run) else load_run(source)
    if check_base:
        same = SameBase()
        same.add(SimpleNamespace(meta=header), "the shared basis")
        same.add(run, run.name)
    mine = set(_select(run, modules, layers))
    common = [mod for mod in bases if mod in mine]
    if not common:
        raise LorascopeError(
            f"{run.path} shares no module with the shared basis ({next(iter(bases), '-')} vs "
            f"{next(iter(run.adapters), '-')})"
        )
    side, weighted, ms = header["side"], bool(header["weighted"]), header.get("m") or {}
    rows = []
    for mod in common:
        Q = bases[mod]
        U, S = _basis(run.adapters[mod], side, k)
        if U.shape[0] != Q.shape[0]:
            raise LorascopeError(
                f"module {mod}: the basis lives in R^{Q.shape[0]}, {run.name}'s in R^{U.shape[0]}"
            )
        c = ss.project(Q, U, ss.adapter_weights(S, weighted))
        keep = len(c)
        at = min(int(ms.get(mod, U.shape[1])), keep)
        rows.append(
            {
                "module": mod,
                "n": int(Q.shape[0]),
                "k": int(U.shape[1]),
                "m": at,
                "coverage": float(c[at - 1]),
                "floor": at / Q.shape[0],
                "keep": keep,
                "coverage_keep": float(c[-1]),
                "floor_keep": keep / Q.shape[0],
            }
        )
    return pd.DataFrame(rows).set_index("module")


# ----------------------------------------------------------------------------- merge


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


def _delta_dense(adapter) -> torch.Tensor:
    """ΔW_i (out, in) float32 as PEFT's get_delta_weight forms it: (B @ A) · s."""
    if is_factored(adapter):
        return (adapter.B.to(torch.float32) @ adapter.A.to(torch.float32)) * float(adapter.scaling)
    return adapter.delta_weight().to(torch.float32)


def _rank(adapter) -> int:
    return int(adapter.A.shape[0]) if is_factored(adapter) else DENSE_TOP_K


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
    save_ranks = set()
    for mod in tqdm(kept, desc=f"merge {method}", unit="module", disable=not progress):
        ads = [r[mod] for r in runs]
        out = _merge_module(mod, ads, names, weights, method, density, rank, k, majority_sign_method,
                            seed, keep_factors)  # fmt: skip
        rows += out["rows"]
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
    meta.update(peft_combination=mg.PEFT_COMBINATION[method])
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
    merged = mg.merge(deltas, weights, method, density=density, majority_sign_method=sign_method,
                      seed=seed, module=mod)  # fmt: skip
    need = max(k_m, r_save) if method != "svd" else r_save
    with one_thread() if out_dim * in_dim < 2**20 else nullcontext():
        if method in ("task_arithmetic", "svd") and all(is_factored(a) for a in ads):
            # Σ w_i s_i B_i A_i = [w_1 s_1 B_1 | …] [A_1; …]: its SVD from the factors, exactly.
            A_cat = torch.cat([a.A.to(torch.float64) for a in ads], 0)
            B_cat = torch.cat(
                [w * float(a.scaling) * a.B.to(torch.float64) for w, a in zip(weights, ads, strict=True)], 1
            )
            U, S, V = delta_svd(A_cat, B_cat, 1.0)
            exact_spectrum = True
        else:
            from lorascope.analysis.truncated import top_svd

            U, S, V = top_svd(merged.delta, min(need, cap), device="cpu")
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
    for i, (name, a) in enumerate(zip(names, ads, strict=True)):
        if is_factored(a):
            Ui, Si, Vi = delta_svd(a.A, a.B, a.scaling)
            delta = (a.A, a.B, float(a.scaling))
        else:
            Ui, Si = dense_top_svd(deltas[i], DENSE_TOP_K, "left")
            Vi, _ = dense_top_svd(deltas[i], DENSE_TOP_K, "right")
            delta = deltas[i]
        keep = max(1, numerical_rank(Si))
        Ui, Vi = Ui[:, :keep], Vi[:, :keep]
        bases_l.append(Ui)
        bases_r.append(Vi)
        both, left, right = mg.retention(Uk, Vk, delta)
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
            "cosine": mg.cosine(delta, delta_m),
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
