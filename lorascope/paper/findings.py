"""findings.md: does each of the paper's Section 7 findings hold on this sweep? Statistics with their
interval over seeds, the null they are tested against, and the set-up's distance from the paper's.

Each finding's figure and verdict live in one module (`rank_overlap` Fig. 3, `seed_overlap` Fig. 4,
`w_and_delta` Table 7, `findings_beyond` the rest, `cross_task`, `many_adapters`); this module puts
the document together: the runs, how far A moved, the set-up, the initialisation control.
"""

from __future__ import annotations

import numpy as np
import torch

from lorascope.names import kind_label
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.rank_overlap import fig3_section
from lorascope.paper.seed_overlap import fig4_section
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import SetUp, fmt
from lorascope.paper.w_and_delta import table7_section

ABOVE_FLOOR = 10  # the A0 control flags φ(1, 1) ≥ 10 × the random floor 1/n


def learned_fraction(sweep: Sweep) -> list[str]:
    """‖A − A0‖_F / ‖A0‖_F per run: how far A moved from its initialisation."""
    lines = []
    for (rank, seed), run in sweep.runs.items():
        if run.init is None:
            continue
        ratios = [
            float(torch.linalg.norm(a.A - run.init[m].A) / torch.linalg.norm(run.init[m].A))
            for m, a in run.adapters.items()
            if m in run.init and float(torch.linalg.norm(run.init[m].A)) > 0
        ]
        if ratios:
            lines.append(f"| {rank} | {seed} | {fmt(np.mean(ratios))} | {fmt(np.max(ratios))} |")
    return lines


def set_up(sweep: Sweep) -> SetUp:
    """Steps, width, layers and an upper bound on the tokens seen (steps × batch × sequence length)."""
    run = next(iter(sweep.runs.values()))
    steps = run.summary.get("steps")
    train = run.config.get("train") or {}
    tokens = steps * train["batch_size"] * train["seq_len"] if steps and "batch_size" in train else None
    width = next(iter(run.adapters.values())).in_features if run.adapters else None
    return SetUp(steps, width, len(sweep.layers), tokens)


def alpha_note(sweep: Sweep) -> list[str]:
    """Why rank and step size are confounded at a fixed α, and the sweep that separates them."""
    run = next(iter(sweep.runs.values()))
    alpha, rslora = run.config.get("alpha"), (run.config.get("lora") or {}).get("rslora")
    if alpha is None:
        return []
    scale = "α/√r" if rslora else "α/r"
    values = ", ".join(f"r = {r}: {alpha / (r**0.5 if rslora else r):.3g}" for r in sweep.ranks)
    return [
        f"Scaling: s = {scale} with α = {alpha:g} fixed across ranks ({values}), so a rank comparison "
        "also compares step sizes. `python sweep.py experiment=paper_ranks lora=rslora` (s = α/√r) or "
        "`experiment=paper_ranks_alpha` (α ∝ r, s constant) separates rank from step size.",
        "",
    ]


def init_section(fig3s: dict, fig4s: dict) -> list[str]:
    """The control of every comparison findings.md reads: φ(1, 1) between the two runs' initial A0."""
    out = [
        "## Initialisation control",
        "",
        "lorascope draws each module's A0 from its own generator seeded by (seed, rank, module name), so two "
        "runs start independently. The control: φ(1, 1) between the two runs' A0 for every module used "
        f"below, against the random floor 1/n; 'above' marks φ(1, 1) ≥ {ABOVE_FLOOR} × the floor, where "
        "φ of A would show an overlap that training did not cause.",
        "",
        "| comparison | module | φ(1,1) of A0 | floor 1/n | above the floor |",
        "|---|---|---|---|---|",
    ]
    rows, compared = 0, False
    for label, arts in (("Fig. 3", fig3s), ("Fig. 4", fig4s)):
        art = next((a for a in arts.values() if isinstance(a, Artifact)), None)
        if art is None:
            continue
        compared = True
        r = art.result
        what = (
            f"r = {r.small} vs {r.large}, layer {r.layer}"
            if label == "Fig. 3"
            else f"seeds {r.seeds[0]} vs {r.seeds[1]}, r = {r.rank}, layer {r.layer}"
        )
        for kind, c in r.init.items():
            above = c["phi_11"] >= ABOVE_FLOOR / c["n"]
            rows += 1
            out.append(
                f"| {label}: {what} | {kind_label(kind)} | {fmt(c['phi_11'])} | "
                f"{fmt(1 / c['n'])} | {'**yes**' if above else 'no'} |"
            )
    if not compared:
        return out[:2] + [
            "Not testable: Fig. 3 and Fig. 4, the comparisons it controls, were not made (below).",
            "",
        ]
    if not rows:
        return out[:2] + ["Not available: the runs have no adapter_init.safetensors.", ""]
    return out + [""]


def findings_markdown(
    sweep: Sweep, fig3s: dict, fig4s: dict, table7: Artifact | Skipped, beyond: list[str] = ()
) -> str:
    """findings.md: the Section 7 findings, then the `beyond` lines (LoRA against full fine-tuning, ...)."""
    seeds = {r: len(sweep.seeds(r)) for r in sweep.ranks}
    lines = [
        f"# Findings on `{sweep.path}`",
        "",
        f"Runs: {', '.join([*(f'r={r} s={s}' for r, s in sweep.runs), *(f'full s={s}' for s in sweep.full)])}"
        ". X stands for the factor analysed: A (the paper's), A − A0 (its learned part) or ΔW's input side.",
        "",
        "Every statistic is a mean over seeds with a 95 % bootstrap interval over seeds (layers as "
        "strata where a finding pools them), tested against a null distribution of random draws or an "
        "analytic floor. A verdict is read only from an interval: 'one seed: no interval' where the sweep "
        f"has one seed (seeds per rank here: {', '.join(f'r={r}: {n}' for r, n in seeds.items())}; "
        "`python sweep.py experiment=paper_ranks` trains three), 'undecided' where the interval "
        "straddles the threshold.",
        "",
        set_up(sweep).line(),
        "",
        *alpha_note(sweep),
    ]
    moved = learned_fraction(sweep)
    if moved:
        lines += [
            "How far A moved from its initialisation (‖A − A0‖_F / ‖A0‖_F over modules); where this "
            "is small, φ on A mostly measures the random initialisation, and the A − A0 and ΔW rows "
            "are the ones to read:",
            "",
            "| r | seed | mean | max |",
            "|---|---|---|---|",
            *moved,
            "",
        ]
    lines += init_section(fig3s, fig4s)
    lines += fig3_section(fig3s) + fig4_section(fig4s) + table7_section(table7, sweep)
    return "\n".join([*lines, *beyond])
