"""Which full fine-tuning run a LoRA run is compared with: the same seed when the sweep has it.

A comparison of LoRA with full fine-tuning pairs LoRA seed s with full seed s, else with the lowest
full seed; `pairing_note` says which pairs were not same-seed, since then the interval over LoRA
seeds holds no seed noise of full fine-tuning's.
"""

from __future__ import annotations

from lorascope.paper.sweep import Sweep

NO_FULL = "needs a full fine-tuning run in the sweep: run `python sweep.py method=full`"


def full_seed(sweep: Sweep, seed: int) -> int:
    """The full fine-tuning seed LoRA seed `seed` is compared with: itself if trained, else the lowest."""
    return seed if seed in sweep.full else min(sweep.full)


def seed_pairs(sweep: Sweep, rank: int) -> list[tuple[int, int]]:
    """(LoRA seed, full seed) for every seed of `rank`."""
    return [(s, full_seed(sweep, s)) for s in sweep.seeds(rank)]


def pairing_note(sweep: Sweep) -> str:
    """One sentence on how LoRA seeds were paired with full fine-tuning's ('' when all same-seed)."""
    other = sorted({s for r in sweep.ranks for s, f in seed_pairs(sweep, r) if s != f})
    if not other:
        return ""
    seeds = ", ".join(map(str, other))
    return (
        f"LoRA seed{'s' if len(other) > 1 else ''} {seeds} paired with full fine-tuning's seed "
        f"{min(sweep.full)} (no full run of that seed; full's seed noise is not in the interval)"
    )


def seeds_text(sweep: Sweep) -> str:
    """'r=1: 1 seed, r=64: 2 seeds, full: 1 seed'."""
    counts = {f"r={r}": len(sweep.seeds(r)) for r in sweep.ranks} | {"full": len(sweep.full)}
    return ", ".join(f"{k}: {n} seed{'s' if n != 1 else ''}" for k, n in counts.items())
