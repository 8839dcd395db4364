"""Statistics a referee asks for: intervals over seeds and null distributions instead of one draw.

    ci = seed_interval(values)             # values (n_seeds,) or (n_seeds, n_strata): mean [lo, hi]
    null = null_summary(observed, draws)   # mean, sd of the null draws; observed's percentile in them

`seed_interval` is rliable's stratified bootstrap (Agarwal et al. 2021): the statistic is the mean
over strata (layers, modules) of the mean over seeds; each bootstrap replicate resamples the seeds
with replacement within every stratum independently, and the interval is the percentile interval of
the replicates. With one seed there is no interval (lo = hi = nan): a verdict must not be read from it.

`null_summary` places an observed value in draws of the null (random subspaces, random U, V):
the percentile is the mid-rank 100 · (#{draws < x} + ½ #{draws = x}) / n_draws, so a single draw
can no longer decide a verdict: "above the 95th percentile of random" needs most of the null below.
Arrays in, dataclasses out; nothing here reads runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lorascope.errors import LorascopeError

LEVEL = 0.95  # confidence of every interval
N_BOOT = 2000  # bootstrap replicates
N_NULL = 200  # draws of every null distribution (the default: ≥ 200)
ABOVE = 95.0  # a statistic "exceeds the null" above this percentile of its draws


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its bootstrap `level` interval [lo, hi]; lo = hi = nan for one seed."""

    mean: float
    lo: float
    hi: float
    n_seeds: int
    level: float = LEVEL

    @property
    def has_interval(self) -> bool:
        return self.n_seeds >= 2 and math.isfinite(self.lo) and math.isfinite(self.hi)

    def above(self, threshold: float) -> bool | None:
        """True when the whole interval lies above `threshold`, False when it lies at or below it,
        None when it straddles it or there is no interval (one seed): the data do not decide."""
        if not self.has_interval:
            return None
        if self.lo > threshold:
            return True
        return False if self.hi <= threshold else None


def seed_interval(values, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Interval:
    """Mean and stratified-bootstrap interval of `values` (n_seeds,) or (n_seeds, n_strata).

    statistic = mean_s mean_u values[u, s]; replicate b draws, for every stratum s, n_seeds indices
    with replacement and takes the same statistic (rliable's `StratifiedBootstrap`). NaN entries
    (a seed missing in a stratum) are left out of their stratum's mean."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise LorascopeError(f"seed_interval needs values of shape (n_seeds, n_strata), got {x.shape}")
    if not 0 < level < 1:
        raise LorascopeError(f"level must be in (0, 1), got {level}")
    mean = float(np.nanmean(np.nanmean(x, axis=0)))
    n = x.shape[0]
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n, x.shape[1]))  # per replicate, per stratum
    reps = np.take_along_axis(np.broadcast_to(x, (n_boot, *x.shape)), idx, axis=1)
    stat = np.nanmean(np.nanmean(reps, axis=1), axis=1)
    lo, hi = np.nanquantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return Interval(mean, float(lo), float(hi), n, level)


@dataclass(frozen=True)
class NullSummary:
    """Where an observed statistic sits in `n_draws` draws of its null distribution."""

    observed: float
    mean: float
    sd: float
    q95: float  # the null's 95th percentile
    percentile: float  # observed's mid-rank percentile among the draws, 0..100
    n_draws: int

    @property
    def z(self) -> float:
        """(observed − null mean) / null sd: the effect size against the null."""
        if self.sd > 0:
            return (self.observed - self.mean) / self.sd
        return 0.0 if self.observed == self.mean else math.copysign(math.inf, self.observed - self.mean)

    def exceeds(self, percentile: float = ABOVE) -> bool:
        return self.percentile > percentile


def null_summary(observed: float, draws) -> NullSummary:
    """Summarise the null `draws` (n_draws,) and place `observed` in them (mid-rank percentile)."""
    d = np.asarray(draws, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size < 2:
        raise LorascopeError(f"a null distribution needs at least 2 finite draws, got {d.size}")
    x = float(observed)
    pct = 100.0 * (np.sum(d < x) + 0.5 * np.sum(d == x)) / d.size
    return NullSummary(
        observed=x,
        mean=float(d.mean()),
        sd=float(d.std(ddof=1)),
        q95=float(np.quantile(d, 0.95)),
        percentile=float(pct),
        n_draws=int(d.size),
    )


def pair_interval(values, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Interval:
    """Mean over seed pairs a < b of values[a, b] (S, S) or (S, S, n_strata), with a bootstrap over
    seeds: each replicate draws S seeds with replacement (per stratum) and averages values over the
    pairs of draws that are distinct seeds. A pair statistic (φ between two seeds) needs 3 seeds
    for an interval: with 2, every replicate holds the one pair or none (n_seeds is reported as S)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    S = x.shape[0]
    if x.ndim != 3 or x.shape[1] != S or S < 2:
        raise LorascopeError(f"pair_interval needs values of shape (S, S[, n_strata]), S ≥ 2, got {x.shape}")
    upper = np.triu(np.ones((S, S), dtype=bool), 1)
    mean = float(np.nanmean(np.nanmean(x[upper], axis=0)))
    if S < 3:
        return Interval(mean, math.nan, math.nan, S, level)
    rng = np.random.default_rng(seed)
    sym = np.where(np.isnan(x), np.transpose(x, (1, 0, 2)), x)  # values[a, b] = values[b, a]
    stat = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, S, size=(S, x.shape[2]))  # (draws, strata)
        per = []
        for u in range(x.shape[2]):
            i, j = np.meshgrid(idx[:, u], idx[:, u], indexing="ij")
            keep = upper & (i != j)
            if keep.any():
                per.append(np.nanmean(sym[i[keep], j[keep], u]))
        stat[b] = np.mean(per) if per else np.nan
    lo, hi = np.nanquantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return Interval(mean, float(lo), float(hi), S, level)
