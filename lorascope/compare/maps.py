"""Adapter maps of many runs: which of N adapters on one base are alike (issue #13).

Scores per module, then averaged over modules:
  φ score (default)  mean φ(t, t), t ≤ k, of the chosen bases: ΔW's (dW-right / dW-left) are invariant
                     to B → B R, A → R⁻¹ A, as is everything computed from ΔW; the bases of A and of B
                     ("A", "B") are not (A → R⁻¹A changes A's row space only when R is not orthogonal
                     and scaled, but its σ order and so its top-k do change).
  normalize=True     each module's score as (score − floor) / (1 − floor), its floor (k + 1)/(2n) taken
                     from its own n, before averaging: modules of different widths then compare (0: chance,
                     1: identical subspaces).
  weight="energy"    modules weighted by ‖ΔW_a‖ ‖ΔW_b‖ over the top-k σ (of the chosen factor) instead of
                     uniformly: the modules that moved most count most.
  signed=True        the cosine of ΔW_a and ΔW_b, s_a s_b tr((B_aᵀ B_b)(A_b A_aᵀ)) / (‖ΔW_a‖ ‖ΔW_b‖),
                     from the factors (`analysis.delta_cosine`): sign- and σ-aware (ΔW against −ΔW: −1),
                     invariant to B → B R, A → R⁻¹ A; floor 0. Keeps every adapter's factors in memory.

    from lorascope.compare.maps import adapter_map
    amap = adapter_map(["runs/minilm-bbc"], factor="dW-right", k=8)   # a sweep, or run / PEFT folders
    amap.similarity          # N × N DataFrame, run names as index and columns
    amap.by_kind             # long: run_a, run_b, kind ("all" and each module kind), similarity, ...
    amap.linkage()           # average-linkage tree on 1 − similarity

Runs are loaded one at a time (`map_bases`: the next ones prepared on other threads meanwhile); only
each module's top-k basis (float32, (n, k)) is kept, so memory grows linearly in N and the factors
never pile up. The numbers come from `lorascope.analysis.adapter_map` (one Gram product per module,
above its diagonal, no loop over pairs; the modules side by side on threads).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lorascope.analysis.adapter_map import (
    MAP_FACTORS,
    gram_scores,
    leaf_order,
    map_linkage,
    random_floor,
)
from lorascope.analysis.delta_cosine import cosine_matrix
from lorascope.analysis.linalg import one_thread
from lorascope.compare.inputs import SameBase, resolve_sources, unique_names
from lorascope.compare.map_bases import collect_bases
from lorascope.errors import LorascopeError
from lorascope.module_pool import module_map
from lorascope.names import module_kind
from lorascope.run_format import Run

log = logging.getLogger(__name__)

ALL = "all"  # the kind label of the rows averaged over every shared module


@dataclass
class AdapterMap:
    """Subspace similarity between N adapters: per shared module the mean of φ(t, t), t ≤ k_ab,
    averaged over modules. `floor` is the same average of the random floor (k_ab + 1) / (2 n)."""

    factor: str
    k: int
    names: list[str]
    paths: list[Path]
    similarity: pd.DataFrame  # (N, N), index and columns = names
    floor: pd.DataFrame  # (N, N)
    by_kind: pd.DataFrame  # run_a, run_b, kind, similarity, random_floor, k, modules
    modules: list[str]  # the modules all N adapters share, averaged over
    skipped: list[str] = field(default_factory=list)  # modules some adapters lack
    left_out: dict[str, str] = field(default_factory=dict)  # runs of a sweep not compared, and why
    other_bases: list[str] = field(default_factory=list)  # with allow_other_base: the runs on another base
    dims: dict[str, int] = field(default_factory=dict)  # n of each module's bases
    score: str = "phi"  # "phi" (mean φ(t, t)) or "cosine" (signed, σ-weighted)
    normalized: bool = False  # per-module (score − floor) / (1 − floor) before averaging
    weight: str = "uniform"  # how modules are weighted in the average: "uniform" or "energy"

    def floor_range(self) -> tuple[float, float]:
        """(min, max) random floor over pairs a ≠ b; one value when every pair has the same k."""
        F = self.floor.to_numpy()
        off = F[~np.eye(len(F), dtype=bool)]
        return float(off.min()), float(off.max())

    def linkage(self) -> np.ndarray:
        """Average-linkage tree on 1 − similarity (scipy linkage matrix, (N − 1, 4))."""
        return map_linkage(self.similarity.to_numpy())

    def order(self) -> list[str]:
        """Names in dendrogram order."""
        return [self.names[i] for i in leaf_order(self.linkage())]

    def nearest(self) -> pd.DataFrame:
        """Per adapter: its most similar other adapter, that similarity, the mean to all others
        and the random floor (mean over its pairs): a table that stays readable for N = 500."""
        S = self.similarity.to_numpy().copy()
        np.fill_diagonal(S, -np.inf)
        best = S.argmax(axis=1)
        np.fill_diagonal(S, np.nan)
        F = self.floor.to_numpy().copy()
        np.fill_diagonal(F, np.nan)
        return pd.DataFrame(
            {
                "nearest": [self.names[j] for j in best],
                "similarity": S[np.arange(len(S)), best],
                "mean_to_others": np.nanmean(S, axis=1),
                "random_floor": np.nanmean(F, axis=1),
            },
            index=pd.Index(self.names, name="run"),
        )


def adapter_map(
    sources: Sequence,
    factor: str = "dW-right",
    k: int = 8,
    *,
    modules: str | None = None,
    layers=None,
    check_base: bool = True,
    progress: bool = False,
    allow_other_base: bool = False,
    normalize: bool = False,
    weight: str = "uniform",
    signed: bool = False,
) -> AdapterMap:
    """The N × N adapter map of run folders, PEFT folders or `Run`s (or of one sweep folder).

    factor: "dW-right" (ΔW's input-side singular vectors, default), "dW-left", "A", "B".
    k: top directions per module (capped per pair by the adapters' ranks). modules / layers:
    the filters of `select_modules`. check_base: refuse adapters of different base models
    (`SameBase`, by the base weights' fingerprints); allow_other_base: compare them anyway, each
    listed in `.other_bases`. Module names that transformers ≥ 5 renamed are matched (`aligned`).
    Modules not shared by all adapters are skipped (logged in one line, listed in
    `.skipped`); LorascopeError if none is shared, for fewer than 2 adapters, or k < 1.
    normalize, weight, signed: see the module docstring.
    """
    if weight not in WEIGHTS:
        raise LorascopeError(f"unknown weight {weight!r}: choose one of {', '.join(WEIGHTS)}")
    if factor not in MAP_FACTORS:
        raise LorascopeError(f"unknown factor {factor!r}: choose one of {', '.join(MAP_FACTORS)}")
    if int(k) < 1:
        raise LorascopeError(f"k must be at least 1, got {k}")
    k = int(k)
    sources, left_out = resolve_sources(sources)
    paths = [s.path if isinstance(s, Run) else s for s in sources]
    names = unique_names(paths)
    t0 = time.perf_counter()
    workers = torch.get_num_threads()  # adapters prepared side by side, each op on one thread
    with one_thread():
        same_base = SameBase(allow_other=allow_other_base) if check_base else None
        kept, skipped, bases, loaded, extra = collect_bases(
            sources, names, factor, k, modules, layers, same_base, progress, left_out, signed, workers
        )
    t1 = time.perf_counter()
    names, paths = [names[i] for i in loaded], [paths[i] for i in loaded]
    amap = _assemble(factor, k, names, paths, kept, skipped, bases, extra, normalize, weight, signed)
    amap.left_out = left_out or {}
    amap.other_bases = list(same_base.others) if same_base is not None else []
    log.info(
        "adapter map of %d adapters, %d modules, %s, k=%d: loading and bases %.1f s, scores %.1f s",
        len(names), len(kept), factor, k, t1 - t0, time.perf_counter() - t1,
    )  # fmt: skip
    return amap


WEIGHTS = ("uniform", "energy")


def _assemble(
    factor, k, names, paths, kept, skipped, bases, extra, normalize=False, weight="uniform", signed=False
) -> AdapterMap:
    """Per module scores and floors, (normalised,) weighted and averaged per kind and over all modules."""
    N = len(names)
    sums: dict[str, list] = {}  # kind -> [Σ score, Σ floor, min k_pair, count]
    dims = {}

    def scores(m: str):
        Z, widths = bases[m]
        return gram_scores(Z, widths, Z.shape[1] // N)  # k, or n where k > n

    # Modules side by side, each product on one torch thread: a module's Gram is formed in chunks
    # too small for OpenMP's barriers, which a shared CPU turns into waits.
    per_module = dict(zip(kept, module_map(scores, kept), strict=True))
    for m in kept:
        Z, _ = bases.pop(m)
        dims[m] = int(Z.shape[0])
        del Z
        score, k_pair = per_module.pop(m)
        floor = random_floor(k_pair, dims[m])
        energies, pieces = extra.pop(m)
        if signed:  # the cosine of ΔW_a and ΔW_b; independent random updates average 0
            score, floor = cosine_matrix(pieces), np.zeros((N, N))
        if normalize:
            score, floor = (score - floor) / (1 - floor), np.zeros((N, N))
        e = np.sqrt(np.asarray(energies))
        w = np.outer(e, e) if weight == "energy" else np.ones((N, N))
        for kind in (ALL, module_kind(m)):
            acc = sums.setdefault(
                kind, [np.zeros((N, N)), np.zeros((N, N)), k_pair.copy(), 0, np.zeros((N, N))]
            )
            acc[0] += w * score
            acc[1] += w * floor
            acc[2] = np.minimum(acc[2], k_pair)
            acc[3] += 1
            acc[4] += w
    a_idx, b_idx = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    rows = []
    for kind, (s, f, kp, count, wsum) in sums.items():
        rows.append(
            pd.DataFrame(
                {
                    "run_a": np.asarray(names)[a_idx.ravel()],
                    "run_b": np.asarray(names)[b_idx.ravel()],
                    "kind": kind,
                    "similarity": (s / wsum).ravel(),
                    "random_floor": (f / wsum).ravel(),
                    "k": kp.ravel(),
                    "modules": count,
                }
            )
        )
    s, f = sums[ALL][0] / sums[ALL][4], sums[ALL][1] / sums[ALL][4]
    index = pd.Index(names, name="run")
    return AdapterMap(
        factor=factor,
        k=k,
        names=list(names),
        paths=list(paths),
        similarity=pd.DataFrame(s, index=index, columns=pd.Index(names, name="run_b")),
        floor=pd.DataFrame(f, index=index, columns=pd.Index(names, name="run_b")),
        by_kind=pd.concat(rows, ignore_index=True),
        modules=list(kept),
        skipped=skipped,
        dims=dims,
        score="cosine" if signed else "phi",
        normalized=normalize,
        weight=weight,
    )
