"""ΔW against the pre-trained W, for runs: amplification (Table 7), Fig. 8 and intruder dimensions.

    amplification_table(run)                  one row per module: ‖UᵀWV‖_F (ΔW / W / random), norms, ratio
    intruder_tables(run, k=10, eps=0.5)       (one row per module with the count, the ε curve long-format)
    w_delta_frame(run, top_w=64)              Fig. 8: φ(W's top-i, ΔW's top-j), long-format

Each takes one run or several runs of one base model ({label: run}, e.g. a sweep's ranks): every
W is read once from the base checkpoint (`lorascope.weights`, one tensor at a time, checked
against every run's fingerprint), its decompositions come from the on-disk cache
(`lorascope.wspectra`: computed once per base, truncated where the top-k suffice), and the
analysis runs once per run on it. A module's ΔW is the run's factors (A, B, s), or a dense
(out, in) tensor for a full fine-tuning run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
import torch

from lorascope.analysis.amplification import FIG8_SIDE, amplification, w_delta_similarity
from lorascope.analysis.intruders import EPS_GRID, intruder_curve, intruder_dimensions
from lorascope.analysis.modules import select_modules
from lorascope.analysis.truncated import resolve_device
from lorascope.checkpoint import check_fingerprint, run_weights
from lorascope.errors import LorascopeError
from lorascope.run_format import base_fingerprint
from lorascope.weights import open_base
from lorascope.wspectra import SpectraCache

log = logging.getLogger(__name__)

AMPLIFICATION_COLUMNS = [
    *("rank", "k", "w_norm", "dw_norm"),
    *("proj_dw", "proj_w", "proj_random", "amplification"),
]


def _labelled(runs) -> dict[str, object]:
    """{label: run} from one run (labelled by its folder name) or a mapping of runs."""
    if isinstance(runs, Mapping):
        if not runs:
            raise LorascopeError("no runs given")
        return {str(label): run for label, run in runs.items()}
    return {runs.name: runs}


def _modules(runs: dict, modules: str | None, layers) -> list[str]:
    """Modules every run adapts (the first run's order), filtered by regex and layers."""
    first, *rest = runs.values()
    common = [m for m in first.adapters if all(m in r.adapters for r in rest)]
    if not common:
        raise LorascopeError(f"the runs {', '.join(runs)} adapt no module in common")
    return select_modules(common, modules, layers)


def _delta(adapter):
    """ΔW of one module as the analysis takes it: the factors object (.A, .B, .scaling) or a dense tensor."""
    if hasattr(adapter, "A") and hasattr(adapter, "B"):
        return adapter
    if isinstance(adapter, torch.Tensor):
        return adapter
    if hasattr(adapter, "delta_weight"):
        return adapter.delta_weight()
    raise LorascopeError(f"cannot take ΔW from a {type(adapter).__name__}")


def _rank(adapter) -> int | None:
    return int(adapter.A.shape[0]) if hasattr(adapter, "A") else None


def _cache(cache) -> SpectraCache | None:
    if cache is False or cache is None:
        return None
    return cache if isinstance(cache, SpectraCache) else SpectraCache()


def _weights(
    runs: dict, modules: list[str], progress: bool, what: str, store, check: bool = True
) -> Iterator[tuple]:
    """(module, W, key) one at a time: W (out, in) as stored (bf16 for most checkpoints: the analyses
    convert it to float64 where, and only as far as, they need it), read from the first run's base and
    checked against every run's fingerprint (check=False: the caller checks, with a ‖W‖_F it computes
    anyway); key: the W-spectra cache key of the tensor as stored (None without a cache), found by
    the file's identity when it was hashed before."""
    from tqdm.auto import tqdm

    first, *rest = runs.values()
    checkpoint = open_base(first)
    log.info("%s: reading W of %d module(s) from %s", what, len(modules), checkpoint.folder)
    fan_in_fan_out = first.meta.get("fan_in_fan_out")
    pairs = run_weights(checkpoint, first, modules, dtype=None)
    for m, W in tqdm(pairs, total=len(modules), desc=what, unit="module", disable=not progress):
        if check:
            _check_fingerprints(runs, m, base_fingerprint(W))
        key = None
        if store is not None:
            identity = checkpoint.identity(m, fan_in_fan_out)
            key = store.key(identity, W, still=lambda m=m: checkpoint.identity(m, fan_in_fan_out))
        yield m, W, key


def _check_fingerprints(runs: dict, module: str, w_norm: float) -> None:
    for run in runs.values():
        check_fingerprint(run, {module: w_norm})


def amplification_table(
    runs,
    *,
    k: int | None = None,
    modules: str | None = None,
    layers=None,
    seed: int = 0,
    device: str = "auto",
    cache: SpectraCache | bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Paper Table 7 for every module of one run or of {label: run} sharing a base.

    One row per (run, module): run, module, rank, k (the rank unless given), w_norm, dw_norm,
    proj_dw, proj_w, proj_random, amplification (see `analysis.amplification`). W's top-k come
    from the cache (truncated SVD on a miss). `modules`: a regex; `layers`: layer indices.
    """
    runs = _labelled(runs)
    names = _modules(runs, modules, layers)
    dev = resolve_device(device)
    store = _cache(cache)
    rows = []
    for m, W, key in _weights(runs, names, progress, "amplification", store, check=False):
        adapters = {label: run.adapters[m] for label, run in runs.items()}
        # One top-k of W serves every run: the largest k any of them needs.
        k_w = max(int(k) if k is not None else (_rank(a) or 1) for a in adapters.values())
        entry = store.entry(W, key) if store else None
        k_top = min(k_w, min(W.shape))
        ks = {int(k) if k is not None else _rank(a) for a in adapters.values()} - {None}
        if entry is None or not entry.has("top", k_top) or any(not entry.has("random", q, seed) for q in ks):
            # Cold: W converted to float64 once, shared by the top-k, the random floor and the numbers.
            W = W.to(device=dev, dtype=torch.float64)
            entry = entry.converted(W) if entry else None
        w_top = entry.top(k_top, device=dev) if entry else None
        for label, a in adapters.items():
            d = _delta(a)
            k_a = int(k) if k is not None else _rank(a)
            cached = {"w_top": w_top, "device": dev, "seed": seed, "k": k}
            if entry and k_a and k_a <= min(W.shape):
                cached["proj_random"] = entry.random_projection(k_a, seed, device=dev)
            if hasattr(d, "A"):
                numbers = amplification(W, d.A, d.B, d.scaling, **cached)
            else:
                numbers = amplification(W, delta=d, **cached)
            if not rows or rows[-1]["module"] != m:  # ‖W‖_F from amplification's pass over W
                _check_fingerprints(runs, m, numbers["w_norm"])
            rows.append({"run": label, "module": m, "rank": _rank(a), **numbers})
    return pd.DataFrame(rows, columns=["run", "module", *AMPLIFICATION_COLUMNS])


def intruder_tables(
    runs,
    *,
    k: int = 10,
    eps: float = 0.5,
    eps_grid=EPS_GRID,
    modules: str | None = None,
    layers=None,
    device: str = "auto",
    cache: SpectraCache | bool = True,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Intruder dimensions (Shuttleworth et al. 2024) for every module of one run or of {label: run}.

    Returns (table, curve):
      table  one row per (run, module): run, module, rank, k, eps, count (intruders among the top-k
             left singular vectors of W + ΔW at ε = eps), intruders (their 0-based indices, as
             "0 3"), min_max_cos (the smallest max |cos|: how new the newest direction is)
      curve  long format, one row per (run, module, ε in eps_grid): run, module, eps, count
    W's whole decomposition comes from the cache (computed once per base weight); the top-k of
    W + s·BA from it with no product with W (`analysis.w_plus_delta`), of a dense W + ΔW from the
    matrix-free truncated SVD.
    """
    runs = _labelled(runs)
    names = _modules(runs, modules, layers)
    dev = resolve_device(device)
    store = _cache(cache)
    rows, curve = [], []
    for m, W, key in _weights(runs, names, progress, "intruders", store):
        basis = store.entry(W, key).basis(device=dev) if store else None  # W = U Σ Vᵀ whole
        for label, run in runs.items():
            a = run.adapters[m]
            d = _delta(a)
            cached = {"U_w": basis[0], "w_basis": basis} if basis else {}
            res = intruder_dimensions(W, d, k=k, eps=eps, device=dev, **cached)
            rows.append(
                {
                    "run": label,
                    "module": m,
                    "rank": _rank(a),
                    "k": k,
                    "eps": eps,
                    "count": res["count"],
                    "intruders": " ".join(map(str, res["indices"])),
                    "min_max_cos": float(np.min(res["max_cos"])),
                }
            )
            grid, counts = intruder_curve(res["max_cos"], eps_grid)
            curve += [
                {"run": label, "module": m, "eps": float(e), "count": int(c)}
                for e, c in zip(grid, counts, strict=True)
            ]
    return pd.DataFrame(rows), pd.DataFrame(curve, columns=["run", "module", "eps", "count"])


def w_delta_frame(
    runs,
    *,
    side: str = FIG8_SIDE,
    top_w: int | None = None,
    modules: str | None = None,
    layers=None,
    device: str = "auto",
    cache: SpectraCache | bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Paper Fig. 8 for every module of one run or of {label: run}: φ between W's top-i (i ≤ top_w)
    and ΔW's top-j singular vectors on `side`, long format: run, module, i, j, phi.

    top_w defaults to the largest rank among the runs (W's top-`top_w` from the cache, truncated);
    pass top_w=0 for every direction of W (a dense SVD per module, not cached)."""
    runs = _labelled(runs)
    names = _modules(runs, modules, layers)
    dev = resolve_device(device)
    store = _cache(cache)
    parts = []
    for m, W, key in _weights(runs, names, progress, "W vs dW", store):
        adapters = {label: run.adapters[m] for label, run in runs.items()}
        n_w = top_w if top_w is not None else max(_rank(a) or 1 for a in adapters.values())
        n_w = min(n_w, min(W.shape)) if n_w else None
        w_top = store.entry(W, key).top(n_w, device=dev) if store and n_w else None
        for label, a in adapters.items():
            d = _delta(a)
            factors = (d.A, d.B, d.scaling) if hasattr(d, "A") else (None, None, 1.0)
            phi = w_delta_similarity(
                W, *factors, side=side, top_w=n_w, delta=None if hasattr(d, "A") else d,
                k=None if hasattr(d, "A") else n_w, w_top=w_top, device=dev,
            )  # fmt: skip
            i, j = np.meshgrid(np.arange(1, phi.shape[0] + 1), np.arange(1, phi.shape[1] + 1), indexing="ij")
            parts.append(
                pd.DataFrame({"run": label, "module": m, "i": i.ravel(), "j": j.ravel(), "phi": phi.ravel()})
            )
    return pd.concat(parts, ignore_index=True)
