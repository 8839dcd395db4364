"""The directions N adapters of one base share, runs in and DataFrames out.

    from lorascope.compare import run_subspace, project_adapter
    rep = run_subspace(["runs/minilm-bbc"], side="right")   # a sweep, or run and PEFT folders mixed
    rep.table()          # per module: energy share of the top-m shared directions, its floor, knee, ...
    rep.curve()          # E(m) for every m with the Monte Carlo floor band, long format
    rep.coverage()       # per adapter: its coverage by the top-m shared directions; outliers flagged
    rep.save_basis(path) # the shared basis as safetensors, for project_adapter(new, path)

The mathematics is `lorascope.analysis.shared_subspace`. The adapters are loaded one at a time, each file
read once; the bases of all its LoRA modules of one shape come from one batched factored SVD
(`factored_bases`), and only each module's weighted top-k basis U_i diag(√w_i) (n, k) is kept, in float32:
memory grows linearly in N (16 MiB per 7B adapter of 64 modules at r = 16), and no out × in matrix is ever
formed. Each module's Z = [U_1 diag(√w_1) | …] is joined once, when its turn comes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lorascope.analysis import shared_subspace as ss
from lorascope.analysis import subspace_floor as sf
from lorascope.analysis.linalg import numerical_rank, one_thread
from lorascope.compare.inputs import SameBase
from lorascope.compare.many import (
    _base_meta,
    _basis,
    _check_k,
    _check_side,
    _merge_fingerprints,
    _select,
    _Shared,
    _sources,
)
from lorascope.errors import LorascopeError
from lorascope.module_pool import module_map, prefetched
from lorascope.names import layer_index, module_kind
from lorascope.run_format import Run
from lorascope.runs import load_run

log = logging.getLogger(__name__)

BASIS_FORMAT = "lorascope-shared-subspace"


@dataclass
class SubspaceReport:
    """The shared subspace of N adapters, per module (see `lorascope.analysis.shared_subspace`)."""

    side: str
    weighted: bool
    k: int | None  # the directions asked of each adapter (None: all of its rank)
    names: list[str]
    paths: list[Path]
    results: dict[str, ss.SharedSubspace]
    floors: dict[str, sf.SubspaceFloor]  # modules of one shape share one floor object
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
                    "knee": sf.knee(r, f),
                    "shared_dims": sf.shared_dims(r, f),
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
    trials: int = sf.TRIALS,
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
    # per module: the weighted columns U_i diag(√w_i) of every adapter so far (float32), and S_i
    store: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    meta: dict = {}

    def bases(source) -> tuple[Run, dict | LorascopeError]:
        run = source if isinstance(source, Run) else load_run(source)
        try:  # raised below, after the base check, as one adapter at a time would
            return run, _bases_of(run, _select(run, modules, layers), side, k)
        except LorascopeError as e:
            return run, e

    cores = torch.get_num_threads()
    with one_thread():
        loaded = prefetched(bases, sources, ahead=cores)  # adapters read and decomposed ahead, one per core
        for i, future in enumerate(
            tqdm(loaded, total=N, desc=f"bases {side}", unit="adapter", disable=not progress)
        ):
            run, found = future.result()
            if check_base:
                same_base.add(run, names[i])
            if i == 0:
                meta = _base_meta(run)
            else:
                _merge_fingerprints(meta, run)
            kept = shared.narrow(i, names, _select(run, modules, layers))
            for mod in [mod for mod in store if mod not in set(kept)]:
                del store[mod]
            if isinstance(found, LorascopeError):
                raise found
            for mod, (U, S) in ((mod, found[mod]) for mod in kept):
                if U.shape[1] == 0:
                    raise LorascopeError(f"{names[i]}: module {mod}: ΔW is zero (an untrained adapter?)")
                if i and U.shape[0] != store[mod][0][0].shape[0]:
                    raise LorascopeError(
                        f"module {mod}: n = {U.shape[0]} in {names[i]} but {store[mod][0][0].shape[0]} in "
                        f"{names[0]} (different base models?)"
                    )
                w = ss.adapter_weights(S, weighted)
                store.setdefault(mod, []).append(((U * w.sqrt()[None, :]).to(torch.float32), S))
            del run, found  # only the (n, k) weighted bases stay
    skipped = shared.skipped(N)
    weights = {mod: [ss.adapter_weights(S, weighted) for _, S in store[mod]] for mod in shared.kept}
    bar = tqdm(total=len(shared.kept), desc="shared subspace", unit="module", disable=not progress)

    def one(mod: str) -> ss.SharedSubspace:
        items = store.pop(mod)  # this module's bases leave memory once its Z is built
        Z = torch.cat([U for U, _ in items], dim=1)
        widths = [int(U.shape[1]) for U, _ in items]
        del items
        result = ss.shared_subspace_of(Z, widths, keep)
        bar.update()
        return result

    # modules are independent, and their eigendecompositions run on one thread each: one per core
    results = dict(zip(shared.kept, module_map(one, shared.kept), strict=True))
    bar.close()
    floors = _floors(results, weights, weighted, trials, seed, progress)
    ms = {mod: m or max(r.widths) for mod, r in results.items()}
    meta.update(trials=trials, seed=seed)
    return SubspaceReport(side, weighted, k, names, paths, results, floors, ms, skipped, meta)


def _bases_of(run: Run, kept: list[str], side: str, k: int | None) -> dict:
    """{module: (U (n, k_i) float64, S (k_i,))}: ΔW's top-k basis on `side`, cut to its numerical rank,
    for the kept modules of one run. LoRA modules of one shape in one batch (`factored_bases`: a few
    batched QRs instead of one factored SVD per module); a dense ΔW by `_basis`."""
    out, groups = {}, {}
    for mod in kept:
        f = run.adapters[mod].factored_form  # ΔW = s·B A whatever its kind; None: dense
        if f is not None:
            groups.setdefault((tuple(f.A.shape), tuple(f.B.shape)), []).append(mod)
        else:
            out[mod] = _basis(run.adapters[mod], side, k)
    for mods in groups.values():
        ads = [run.adapters[mod].factored_form for mod in mods]
        U, S = ss.factored_bases(
            torch.stack([a.A.to(torch.float64) for a in ads]),  # each converted: dtypes may differ
            torch.stack([a.B.to(torch.float64) for a in ads]),
            torch.tensor([float(a.scaling) for a in ads], dtype=torch.float64),
            side,
        )
        for j, mod in enumerate(mods):
            top = S.shape[1] if k is None else min(k, S.shape[1])
            rank = numerical_rank(S[j, :top])
            out[mod] = (U[j, :, :rank], S[j, :rank])
    return {mod: out[mod] for mod in kept}


def _floors(results, weights, weighted, trials, seed, progress) -> dict[str, sf.SubspaceFloor]:
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
        floor = sf.random_floor(n, profile, trials=trials, seed=seed)
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
        same.add(Run(path=Path("shared basis"), adapters={}, meta=header), "the shared basis")
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
