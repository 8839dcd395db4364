"""Two runs compared module by module: φ grids, their summary against the random floor, heatmap pages.

pair = run_similarity(load_run(a), load_run(b), factor="dW-right")
pair.summary()          # per module: φ(1,1), mean φ(k,k), the random floor from that module's n
pair.long()             # every φ value: module, i, j, phi
heatmap_pages(pair)     # panels per page, each page with the Gaussian floor of its modules' spaces
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lorascope.analysis.delta_phi import delta_phi
from lorascope.analysis.factors import get_factor
from lorascope.analysis.similarity import (
    diag_mean_floor,
    factor_phi,
    gaussian_phi_baseline,
    grid_frame,
    long_grid,
    phi_grid,
)
from lorascope.delta import directions
from lorascope.errors import LorascopeError
from lorascope.module_pool import module_map
from lorascope.names import match_modules, select_modules, short_name

log = logging.getLogger(__name__)


@dataclass
class PairSimilarity:
    """φ grids of two runs, per common module. grids[m] is a DataFrame indexed by i (rows), j (columns)."""

    factor: str
    name_a: str
    name_b: str
    grids: dict[str, pd.DataFrame]
    dims: dict[str, int]  # n, the dimension of the space each module's bases live in
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """Per module: ranks, φ(1, 1), the mean of φ(k, k) for k ≤ min(r_a, r_b), and the same mean of
        the random floor max(k, k)/n = k/n with n that module's own dimension, so the two compare like
        for like."""
        rows = []
        for m, g in self.grids.items():
            phi = g.to_numpy()
            r_a, r_b = phi.shape
            rows.append(
                (m, r_a, r_b, self.dims[m], float(phi[0, 0]), float(np.diag(phi).mean()),
                 diag_mean_floor(min(r_a, r_b), self.dims[m]))
            )  # fmt: skip
        columns = ["module", "r_a", "r_b", "n", "phi_11", "phi_diag_mean", "random_floor"]
        return pd.DataFrame(rows, columns=columns).set_index("module")

    def long(self) -> pd.DataFrame:
        """Every φ value: columns module, i, j, phi (i, j from 1)."""
        return pd.concat([long_grid(g, module=m) for m, g in self.grids.items()], ignore_index=True)


# How many of a dense ΔW's (full fine-tuning's) singular directions a φ grid shows unless asked:
# min(out, in) of them would dwarf any LoRA rank, and a truncated SVD gives the top ones cheaply.
DENSE_TOP_K = 64


def run_similarity(
    run_a,
    run_b,
    factor: str = "A",
    modules: str | None = None,
    layers=None,
    progress: bool = False,
    k: int | None = None,
) -> PairSimilarity:
    """φ grids between two runs (`lorascope.runs.Run`), module by module, matched by name.

    Modules in only one run are listed in `only_a` / `only_b` (and logged); a LorascopeError
    if the runs share none, or a common module has different shapes in the two runs. `k` caps the
    directions per run (default: all of a LoRA rank, the top DENSE_TOP_K of a full fine-tuning ΔW).
    Factors of A or B do not apply to a full fine-tuning run: a LorascopeError says so."""
    spec = get_factor(factor)
    for run in (run_a, run_b):
        if not all(spec.applies(a) for a in run.adapters.values()):
            raise LorascopeError(
                f"{run.path}: --factor {factor} ({spec.text}) does not apply to a full fine-tuning run, "
                "which has a dense ΔW and no factors: use --factor dW-right or dW-left"
            )
    common, only_a, only_b = match_modules(run_a.adapters, run_b.adapters)
    if not common:
        raise LorascopeError(
            f"{run_a.path} and {run_b.path} share no module "
            f"({next(iter(run_a.adapters), '-')} vs {next(iter(run_b.adapters), '-')}): "
            "compare runs of the same base model and targets"
        )
    for side, names in (("first", only_a), ("second", only_b)):
        if names:
            log.info("%d module(s) only in the %s run, skipped: %s", len(names), side, ", ".join(names))
    if spec.needs_init:
        for run in (run_a, run_b):
            if run.init is None:
                raise LorascopeError(f"{run.path}: no adapter_init.safetensors; --factor {factor} needs A0")
    common = select_modules(common, modules, layers)

    def grid(m: str) -> tuple[np.ndarray, int]:
        ads = [run.adapters[m] for run in (run_a, run_b)]
        inits = [run.init.get(m) if run.init is not None else None for run in (run_a, run_b)]
        n1, n2 = (spec.dim(a) for a in ads)
        if n1 != n2:
            raise LorascopeError(f"module {m}: the runs' factors have different shapes ({n1} vs {n2})")
        return _module_phi(spec, m, ads, inits, k, (run_a, run_b)), n1

    bar = (lambda it: tqdm(it, total=len(common), desc=f"phi {factor}", unit="module")) if progress else None
    results = module_map(grid, common, progress=bar)  # modules side by side, one torch thread each
    grids = {m: grid_frame(phi) for m, (phi, _) in zip(common, results, strict=True)}
    dims = {m: n for m, (_, n) in zip(common, results, strict=True)}
    return PairSimilarity(factor, run_a.name, run_b.name, grids, dims, only_a, only_b)


def _module_phi(spec, m: str, ads, inits, k: int | None, runs) -> np.ndarray:
    """φ grid of one module of two runs: from the two factors' Gram matrices (A, B, dA), from the
    factors of ΔW's Gram matrices (dW-right, dW-left), else (k given, a dense ΔW, ill-conditioned
    factors) from the two orthonormal bases."""
    factor = spec.name
    if spec.matrix is not None and k is None:  # φ straight from the two factors (the Gram route)
        X1, X2 = (spec.matrix(a, i) for a, i in zip(ads, inits, strict=True))
        return factor_phi(X1, X2, spec.side, label=f"{m} ({factor})")
    forms = [a.factored_form for a in ads]
    if spec.matrix is None and k is None and all(f is not None for f in forms):
        gram = delta_phi(*forms, spec.side)  # ΔW's bases from r × r Gram matrices; None: ill-conditioned
        if gram is not None:
            phi, S1, S2 = gram
            _warn_rank_deficient(((runs[0], S1), (runs[1], S2)), m, factor)
            return phi
    tops = [k or directions(a, DENSE_TOP_K) for a in ads]
    (U1, S1), (U2, S2) = (spec.basis(a, i, t) for a, i, t in zip(ads, inits, tops, strict=True))
    _warn_rank_deficient(((runs[0], S1), (runs[1], S2)), m, factor)
    return phi_grid(U1, U2)


def _warn_rank_deficient(runs_sigma, module: str, factor: str) -> None:
    for run, S in runs_sigma:
        if S.numel() and float(S[-1]) <= 1e-12 * max(float(S[0]), 1e-300):
            log.warning(
                "%s %s: %s is rank-deficient; its trailing directions are arbitrary", run.name, module, factor
            )


def gaussian_floor(pair: PairSimilarity, module: str, n_seeds: int = 5) -> tuple[str, pd.DataFrame]:
    """The empirical random floor of one module (the paper's Fig. 4, right): φ between the bases of two
    Gaussian matrices shaped like that module's factors, in its own space R^n. Returns (title, grid)."""
    spec = get_factor(pair.factor)
    n = pair.dims[module]
    r_a, r_b = pair.grids[module].shape
    shape = (lambda r: (r, n)) if spec.side == "right" else (lambda r: (n, r))
    grid = gaussian_phi_baseline(shape(r_a), shape(r_b), n_seeds=n_seeds, side=spec.side)
    return f"random Gaussian (n={n})", grid_frame(grid)


@dataclass
class HeatmapPage:
    """One figure's panels {title: φ grid} and the long-format numbers behind it (modules and floors)."""

    grids: dict[str, pd.DataFrame]
    data: pd.DataFrame


def heatmap_pages(pair: PairSimilarity, per_page: int = 12) -> list[HeatmapPage]:
    """The pair's modules split into pages of `per_page` panels, each page followed by the random
    Gaussian floor of every distinct space (n, r_a, r_b) among its modules: GQA's k/v projections
    (out 192) get their own floor beside q's (out 576)."""
    if per_page < 1:
        raise LorascopeError(f"--per-page must be at least 1, got {per_page}")
    names = list(pair.grids)
    pages = []
    for start in range(0, len(names), per_page):
        page = names[start : start + per_page]
        grids = {f"{short_name(m)}  ({g.shape[0]}×{g.shape[1]})": g for m in page for g in [pair.grids[m]]}
        floors: dict[tuple, tuple[str, pd.DataFrame]] = {}
        for m in page:
            key = (pair.dims[m], *pair.grids[m].shape)
            if key not in floors:
                floors[key] = gaussian_floor(pair, m)
        rows = [long_grid(pair.grids[m], module=m) for m in page]
        for title, grid in floors.values():
            title = title if len(floors) == 1 else f"{title[:-1]}, {grid.shape[0]}×{grid.shape[1]})"
            grids[title] = grid
            rows.append(long_grid(grid, module=title))
        pages.append(HeatmapPage(grids, pd.concat(rows, ignore_index=True)))
    return pages
