"""Zhu et al. 2024's own test of LoRA's asymmetry: freeze A at its random start, train B alone.

Their claim: training B alone (A frozen at A0, `lora.train_A=false`) matches training both factors.
On a sweep that holds frozen-A runs (`Sweep.frozen_A`, folders r{rank}-s{seed}-frozenA) beside
trained-A runs of the same rank and seed (same A0, same batches: only whether A learns differs):

gap        the held-out metric of each seed's frozen-A run minus its trained-A run (accuracy, else
           loss), mean over seeds with a bootstrap interval (`stats.seed_interval`). "Matches" when
           the interval clears the tolerance: gap > −TOLERANCE (accuracy) or gap < +TOLERANCE (loss).
agreement  what B learned in each: φ between the two runs' ΔW top directions on the output side
           (ΔW = s·B A spans B's columns there), φ(1, 1) and the mean of φ(t, t) over t ≤ r, per seed
           and layer, against the Gaussian null (pairs of random (n, r) matrices' left bases) and the
           analytic floors 1/n and (r + 1)/(2n). The input side is not tested: with one seed both runs
           start from the same A0, which trained A barely leaves, so φ there is high by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lorascope.analysis.nulls import gaussian_phi_draws
from lorascope.analysis.similarity import diag_mean_floor
from lorascope.analysis.stats import N_NULL, Interval, NullSummary, null_summary, seed_interval
from lorascope.compare.pairs import run_similarity
from lorascope.names import layer_index, module_kind
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import decide

# summary.json key -> (higher is better, tolerance): how much worse frozen A may be and still "match"
METRICS = {"val_accuracy": (True, 0.01), "val_loss": (False, 0.02)}
SIDE = "dW-left"  # ΔW's output side: the column space of B
COMMAND = "python sweep.py rank=8 seed=0,1,2 lora.train_A=false"


@dataclass(frozen=True)
class MetricGap:
    """Frozen-A minus trained-A held-out metric, paired by seed."""

    metric: str
    higher_is_better: bool
    tolerance: float
    frozen: Interval
    trained: Interval
    gap: Interval

    @property
    def verdict(self) -> str:
        """Holds when the gap's whole interval lies on the good side of −tolerance (accuracy) or
        +tolerance (loss): frozen A is at most `tolerance` worse, whatever the seeds."""
        if self.higher_is_better:
            return decide(self.gap, -self.tolerance)
        return decide(self.gap, self.tolerance, above=False)


@dataclass(frozen=True)
class KindAgreement:
    """φ between the frozen-A and trained-A runs' ΔW output-side top directions for one module kind."""

    kind: str
    n: int
    phi_11: Interval
    diag: Interval  # mean φ(t, t), t ≤ r
    null_11: NullSummary  # observed: phi_11.mean
    null_diag: NullSummary

    @property
    def floor_11(self) -> float:
        return 1.0 / self.n

    def floor_diag(self, rank: int) -> float:
        return diag_mean_floor(rank, self.n)

    @property
    def verdict(self) -> str:
        """The two runs' B learned the same top direction beyond chance: φ(1, 1) above the null's q95."""
        return decide(self.phi_11, self.null_11.q95)


@dataclass(frozen=True)
class FrozenA:
    rank: int
    seeds: list[int]  # seeds trained both ways at this rank
    gap: MetricGap | None  # None: the runs' summaries share no held-out metric
    kinds: list[KindAgreement]


def twin_seeds(sweep: Sweep) -> dict[int, list[int]]:
    """rank -> the seeds with both a frozen-A and a trained-A run, for ranks that have any."""
    out: dict[int, list[int]] = {}
    for rank, seed in sweep.frozen_A:
        if (rank, seed) in sweep.runs:
            out.setdefault(rank, []).append(seed)
    return {r: sorted(s) for r, s in sorted(out.items())}


def metric_gap(sweep: Sweep, rank: int, seeds: list[int]) -> MetricGap | None:
    pairs = [(sweep.frozen_A[(rank, s)].summary, sweep.runs[(rank, s)].summary) for s in seeds]
    for metric, (higher, tol) in METRICS.items():
        if all(
            isinstance(a.get(metric), int | float) and isinstance(b.get(metric), int | float)
            for a, b in pairs
        ):
            frozen = np.array([float(a[metric]) for a, _ in pairs])
            trained = np.array([float(b[metric]) for _, b in pairs])
            return MetricGap(
                metric,
                higher,
                tol,
                seed_interval(frozen),
                seed_interval(trained),
                seed_interval(frozen - trained),
            )
    return None


def _per_seed_layer(sweep: Sweep, rank: int, seeds: list[int]) -> dict[str, np.ndarray]:
    """kind -> (n_seeds, n_layers, 2): φ(1, 1) and mean φ(t, t), t ≤ r, between each seed's runs."""
    out: dict[str, list] = {}
    for s in seeds:
        sim = run_similarity(sweep.frozen_A[(rank, s)], sweep.runs[(rank, s)], factor=SIDE)
        per: dict[str, list] = {}
        for m, g in sorted(sim.grids.items(), key=lambda kv: layer_index(kv[0]) or 0):
            if m in sweep.modules:
                v = g.to_numpy()
                per.setdefault(module_kind(m), []).append((v[0, 0], float(np.diag(v).mean())))
        for kind, rows in per.items():
            out.setdefault(kind, []).append(rows)
    return {kind: np.asarray(v) for kind, v in out.items()}


def frozen_a(sweep: Sweep, rank: int, seeds: list[int], n_draws: int = N_NULL) -> FrozenA:
    kinds = []
    for kind, x in _per_seed_layer(sweep, rank, seeds).items():
        adapter = sweep.runs[(rank, seeds[0])].adapters[
            next(m for m in sweep.modules if module_kind(m) == kind)
        ]
        n = adapter.out_features
        draws = gaussian_phi_draws((n, rank), n_draws, side="left")  # (n_draws, r, r)
        phi_11, diag = seed_interval(x[..., 0]), seed_interval(x[..., 1])
        diag_draws = np.diagonal(draws, axis1=1, axis2=2).mean(axis=1)
        kinds.append(
            KindAgreement(
                kind,
                n,
                phi_11,
                diag,
                null_summary(phi_11.mean, draws[:, 0, 0]),
                null_summary(diag.mean, diag_draws),
            )
        )
    return FrozenA(rank, seeds, metric_gap(sweep, rank, seeds), kinds)
