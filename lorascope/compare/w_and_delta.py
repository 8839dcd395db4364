"""ΔW against the pre-trained W, for runs: amplification (Table 7), Fig. 8 and intruder dimensions.

    amplification_table(run)                  one row per module: ‖UᵀWV‖_F (ΔW / W / random), norms, ratio
    intruder_tables(run, k=10, eps=0.5)       (one row per module with the count, the ε curve long-format)
    w_delta_frame(run, top_w=64)              Fig. 8: φ(W's top-i, ΔW's top-j), long-format

Each takes one run or several runs of one base model ({label: run}, e.g. a sweep's ranks): every
W is read once from the base checkpoint (`lorascope.base_model.iter_base_weights`, one tensor at
a time, checked against every run's fingerprint), its decompositions come from the on-disk cache
(`lorascope.wspectra`: computed once per base, truncated where the top-k suffice), and the
analysis runs once per run on it. A module's ΔW is the run's module, of the ΔW protocol
(`lorascope.delta`): LoRA factors, or a dense ΔW for a full fine-tuning run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd

from lorascope.analysis.amplification import (
    ENERGY_COLUMNS,
    FIG8_SIDE,
    amplifications,
    energy_share,
    svd_from_basis,
    w_delta_similarity,
)
from lorascope.analysis.intruders import EPS_GRID, intruder_curve, intruder_dimensions
from lorascope.analysis.truncated import full_svd, resolve_device
from lorascope.base_identity import check_weight
from lorascope.base_model import Checkpoint, iter_base_weights, open_base
from lorascope.delta import directions
from lorascope.errors import LorascopeError
from lorascope.module_pool import side_by_side
from lorascope.names import select_modules, shared_modules
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
    common = shared_modules(r.adapters for r in runs.values())
    if not common:
        raise LorascopeError(f"the runs {', '.join(runs)} adapt no module in common")
    return select_modules(common, modules, layers)


def _rank(delta) -> int | None:
    """r of the trained LoRA factors (also of DoRA and of shifted inits, whose ΔW has another rank);
    None for a dense ΔW."""
    return delta.factors.rank if delta.factors is not None else None


def _cache(cache) -> SpectraCache | None:
    if cache is False or cache is None:
        return None
    return cache if isinstance(cache, SpectraCache) else SpectraCache()


def _weights(
    runs: dict, modules: list[str], progress: bool, what: str, store, check: bool = True, base=None
) -> Iterator[tuple]:
    """(module, W, key) one at a time: W (out, in) as stored (bf16 for most checkpoints: the analyses
    convert it to float64 where, and only as far as, they need it), read from the first run's base and
    checked against every run's fingerprint (check=False: the caller checks, with a ‖W‖_F it computes
    anyway); key: the W-spectra cache key of the tensor as stored (None without a cache), found by
    the file's identity when it was hashed before. base: a checkpoint folder read instead of the
    run's base (an unquantized copy of a quantized base), checked against the fingerprints alike."""
    from tqdm.auto import tqdm

    first, *rest = runs.values()
    checkpoint = Checkpoint(base) if base is not None else open_base(first)
    if checkpoint.quantization:
        log.warning("%s: W is dequantized from %s (%s)", what, checkpoint.quantization, checkpoint.folder)
    log.info("%s: reading W of %d module(s) from %s", what, len(modules), checkpoint.folder)
    fan_in_fan_out = first.meta.get("fan_in_fan_out")
    pairs = iter_base_weights(first, modules, checkpoint=checkpoint, also=rest, dtype=None, check=check)
    for m, W in tqdm(pairs, total=len(modules), desc=what, unit="module", disable=not progress):
        key = None
        if store is not None:
            identity = checkpoint.identity(m, fan_in_fan_out)
            key = store.key(identity, W, still=lambda m=m: checkpoint.identity(m, fan_in_fan_out))
        yield m, W, key


def _check_fingerprints(runs: dict, module: str, w_norm: float) -> None:
    for run in runs.values():
        check_weight(run, {module: w_norm})


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
    base=None,
    energy: bool = False,
) -> pd.DataFrame:
    """Paper Table 7 for every module of one run or of {label: run} sharing a base.

    One row per (run, module): run, module, rank, k (the rank unless given), w_norm, dw_norm,
    proj_dw, proj_w, proj_random, amplification (see `analysis.amplification`); with `energy`, also
    the shares of ΔW's energy in W's top-r / bottom-r singular subspaces, r = k or the rank
    (`energy_share`), which need W's whole left basis (cached, and shared with `intruder_tables`),
    where Table 7 needs only W's top-k. W's top-k come from the cache (truncated SVD on a miss).
    `modules`: a regex; `layers`: layer indices.
    """
    runs = _labelled(runs)
    names = _modules(runs, modules, layers)
    dev = resolve_device(device)
    store = _cache(cache)
    rows = []
    for m, W, key in _weights(runs, names, progress, "amplification", store, check=False, base=base):
        adapters = {label: run.adapters[m] for label, run in runs.items()}
        entry = store.entry(W, key) if store else None
        # Each run's k: as given, else its trained rank (a DoRA's or a shifted init's ΔW has another).
        k_runs = {label: int(k) if k is not None else _rank(a) for label, a in adapters.items()}
        # One top-k of W serves every run: the largest k any of them needs.
        k_top = min(max(q or 1 for q in k_runs.values()), min(W.shape))
        ks = {q for q in k_runs.values() if q is not None and q <= min(W.shape)}
        w_top = entry.stored_top(k_top) if entry else None
        random = {q: v for q in ks if entry and (v := entry.stored_random(q, seed)) is not None}
        # Every run's W V, the missing floors and (cold) the top-k's Rayleigh–Ritz: one pass over W.
        numbers, computed = amplifications(
            W, adapters, k=k_runs, seed=seed, w_top=w_top, random=random, top_k=k_top, device=dev
        )
        if entry is not None:
            if computed.top is not None:
                entry.put_top(*computed.top)
            for q, value in computed.random.items():
                entry.put_random(q, seed, value)
        _check_fingerprints(runs, m, next(iter(numbers.values())).w_norm)  # ‖W‖_F from that pass
        w_svd = _full_svd(W, entry, dev) if energy else None
        for label, a in adapters.items():
            row = {"run": label, "module": m, "rank": _rank(a), **numbers[label].asdict()}
            if energy:
                r = min(int(k) if k is not None else (_rank(a) or numbers[label].k), min(W.shape))
                row.update(energy_share(w_svd, a, r))
            rows.append(row)
    columns = [*AMPLIFICATION_COLUMNS, *(ENERGY_COLUMNS if energy else ())]
    return pd.DataFrame(rows, columns=["run", "module", *columns])


def _full_svd(W, entry, device):
    """W's thin SVD for the energy shares: from the cached whole decomposition (shared with
    `intruder_tables`, Wᵀ U included: no product with W), else a dense SVD."""
    if entry is not None:
        return svd_from_basis(*entry.basis(device=device))
    U, S, Vh = full_svd(W, device=device)
    return U, S, Vh.T


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
    base=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Intruder dimensions (Shuttleworth et al. 2024) for every module of one run or of {label: run}.

    Returns (table, curve):
      table  one row per (run, module): run, module, rank, k, eps, count (intruders among the top-k
             left singular vectors of W + ΔW at ε = eps), intruders (their 0-based indices, as
             "0 3"), min_max_cos (the smallest max |cos|: how new the newest direction is)
      curve  long format, one row per (run, module, ε in eps_grid): run, module, eps, count
    W's whole decomposition comes from the cache (computed once per base weight); the top-k of
    W + s·BA from it with no product with W (`analysis.w_plus_delta`), of a dense W + ΔW from the
    matrix-free truncated SVD. Warm CPU modules run two at a time on one torch thread each
    (`module_pool.side_by_side`): their n × r products and N × 2r Krylov leave a second core idle
    otherwise; a cold one (the eigh of W Wᵀ) runs alone on every thread.
    """
    runs = _labelled(runs)
    names = _modules(runs, modules, layers)
    dev = resolve_device(device)
    store = _cache(cache)

    def one_module(item) -> tuple[str, list]:
        m, W, key = item
        basis = store.entry(W, key).basis(device=dev) if store else None  # W = U Σ Vᵀ whole
        cached = {"U_w": basis[0], "w_basis": basis} if basis else {}
        found = []
        for label, run in runs.items():
            a = run.adapters[m]
            found.append((label, a, intruder_dimensions(W, a, k=k, eps=eps, device=dev, **cached)))
        return m, found

    def warm(item) -> bool:
        """W's decomposition stored, on the CPU: then modules run two at a time (`side_by_side`)."""
        m, W, key = item
        return dev.type == "cpu" and store is not None and store.entry(W, key).has("basis", min(W.shape))

    rows, curve = [], []
    weights = _weights(runs, names, progress, "intruders", store, base=base)
    for m, results in side_by_side(one_module, weights, warm):
        for label, a, res in results:
            rows.append(
                {
                    "run": label,
                    "module": m,
                    "rank": _rank(a),
                    "k": k,
                    "eps": eps,
                    "count": res.count,
                    "intruders": " ".join(map(str, res.indices)),
                    "min_max_cos": float(np.min(res.max_cos)),
                }
            )
            grid, counts = intruder_curve(res.max_cos, eps_grid)
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
            k_d = directions(a, n_w) if n_w else None  # all of a factored ΔW, the top n_w of a dense one
            phi = w_delta_similarity(W, a, side=side, top_w=n_w, k=k_d, w_top=w_top, device=dev)
            i, j = np.meshgrid(np.arange(1, phi.shape[0] + 1), np.arange(1, phi.shape[1] + 1), indexing="ij")
            parts.append(
                pd.DataFrame({"run": label, "module": m, "i": i.ravel(), "j": j.ravel(), "phi": phi.ravel()})
            )
    return pd.concat(parts, ignore_index=True)
