"""How findings.md states a number and a verdict: one `fmt`, one `verdict`, intervals and nulls as text.

A verdict is read from an interval over seeds and a null distribution, never from one seed or one
random draw: `decide` says "holds" only when the whole interval clears the threshold, "does not
hold" when it lies on the wrong side, "undecided" when it straddles it, and "one seed: no interval"
when the sweep has a single seed (`experiment=paper_ranks` trains three).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lorascope.analysis.stats import ABOVE, Interval, NullSummary

HOLDS, FAILS, UNDECIDED, ONE_SEED = "holds", "does not hold", "undecided", "one seed: no interval"
ONE_PAIR = "one pair of seeds: no interval"  # a statistic between two seeds needs three for an interval

# The paper's set-up (Hu et al. 2021, GPT-3 175B): what the demo's distance from it is measured against.
PAPER_WIDTH = 12288
PAPER_LAYERS = 96


def fmt(x) -> str:
    """A number for a table: 3 significant digits, scientific below 1e-3; '–' for nan."""
    x = float(x)
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def interval(ci: Interval) -> str:
    """'mean [lo, hi]', or 'mean (one seed: no interval)'."""
    if not ci.has_interval:
        return f"{fmt(ci.mean)} ({ONE_SEED if ci.n_seeds < 2 else ONE_PAIR})"
    return f"{fmt(ci.mean)} [{fmt(ci.lo)}, {fmt(ci.hi)}]"


def null(s: NullSummary) -> str:
    """'null 0.063 ± 0.050 (200 draws), observed at the 70th percentile'."""
    return f"null {fmt(s.mean)} ± {fmt(s.sd)} ({s.n_draws} draws), at the {s.percentile:.0f}th percentile"


def decide(ci: Interval, threshold: float, *, above: bool = True) -> str:
    """The verdict of 'the statistic exceeds threshold' (above=False: 'stays below it') from its interval."""
    if not ci.has_interval:
        return ONE_SEED if ci.n_seeds < 2 else ONE_PAIR
    lo, hi = (ci.lo, ci.hi) if above else (-ci.hi, -ci.lo)
    t = threshold if above else -threshold
    if lo > t:
        return HOLDS
    return FAILS if hi <= t else UNDECIDED


def decide_null(ci: Interval, draws_q95: float) -> str:
    """'Above the 95th percentile of random': the interval's lower end above the null's 95th percentile."""
    return decide(ci, draws_q95)


def verdict(parts) -> str:
    """One verdict from several (each HOLDS, FAILS, UNDECIDED or ONE_SEED; bools read as holds / fails)."""
    parts = [HOLDS if p is True else FAILS if p is False else p for p in parts]
    if not parts:
        return "**not testable**"
    for same in (HOLDS, FAILS, UNDECIDED, ONE_SEED, ONE_PAIR):
        if all(p == same for p in parts):
            return f"**{same}**"
    if HOLDS in parts and FAILS not in parts and UNDECIDED not in parts:
        return (
            f"**holds where testable** ({sum(p == HOLDS for p in parts)} of {len(parts)}; the rest: one seed)"
        )
    kinds = (HOLDS, FAILS, UNDECIDED, ONE_SEED, ONE_PAIR)
    counts = ", ".join(f"{sum(p == v for p in parts)} {v}" for v in kinds if v in parts)
    return f"**mixed** ({counts})"


@dataclass(frozen=True)
class SetUp:
    """How far a sweep's set-up is from the paper's: training steps, model width, layers, tokens seen."""

    steps: int | None
    width: int | None
    layers: int
    tokens: int | None

    def line(self) -> str:
        parts = [f"steps {self.steps}" if self.steps else "steps unknown"]
        if self.width:
            parts.append(f"width n = {self.width} ({self.width / PAPER_WIDTH:.3g}× GPT-3's {PAPER_WIDTH})")
        parts.append(f"{self.layers} adapted layers (GPT-3: {PAPER_LAYERS})")
        if self.tokens:
            parts.append(f"{self.tokens:,} training tokens")
        return "Set-up against the paper's (GPT-3 175B, thousands of steps): " + ", ".join(parts) + "."


ABOVE_TEXT = f"above the {ABOVE:.0f}th percentile of random"
