"""findings.md: does each of the paper's Section 7 findings hold on this sweep? Numbers, with the
random floor beside them.

The tests are deliberately simple and stated in the text, so a reader can disagree with a verdict
while trusting the numbers:
  Fig. 3   φ(1, 1) > 0.5 between the small and the large rank, and φ(k, k) < φ(1, 1) at k = small rank
  Fig. 4   two seeds: φ(1, 1) ≥ 10 × the random floor 1/n; two random Gaussian matrices: no i
           with φ(i, i) > 0.5;
           W_q shares more than W_v: mean φ over the top-left 8 × 8 block is larger for q than for v
  Table 7  random < ‖UᵀWV‖(ΔW) < ‖UᵀWV‖(W), and amplification larger at the small rank than the large
"""

from __future__ import annotations

import numpy as np
import torch

from lorascope.analysis.factors import get_factor
from lorascope.models import QUANTIZED_NOTE
from lorascope.names import kind_label
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.sweep import Sweep
from lorascope.paper.w_and_delta import quantized

SHARED = 0.5  # φ(i, i) above this: more than half of the top-i directions are shared
ABOVE_FLOOR = 10  # a top direction is shared between seeds when φ(1, 1) ≥ 10 × the random floor 1/n


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def _verdict(flags: list[bool]) -> str:
    if flags and all(flags):
        return "**holds**"
    return "**partly holds**" if any(flags) else "**does not hold**"


def _is_q(kind: str) -> bool:
    return kind_label(kind) in ("query", "q_proj", "q")


def _is_v(kind: str) -> bool:
    return kind_label(kind) in ("value", "v_proj", "v")


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
            lines.append(
                f"| {rank} | {seed} | {_fmt(float(np.mean(ratios)))} | {_fmt(float(np.max(ratios)))} |"
            )
    return lines


def _text(factor: str) -> str:
    return get_factor(factor).text


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
    describe = {
        "Fig. 3": lambda f: f"r = {f['small']} vs {f['large']}, layer {f['layer']}",
        "Fig. 4": lambda f: "seeds {} vs {}, r = {}, layer {}".format(*f["seeds"], f["rank"], f["layer"]),
    }
    for label, arts in (("Fig. 3", fig3s), ("Fig. 4", fig4s)):
        art = next((a for a in arts.values() if isinstance(a, Artifact)), None)
        if art is None:
            continue
        compared = True
        for kind, c in art.facts["init"].items():
            above = c["phi_11"] >= ABOVE_FLOOR / c["n"]
            rows += 1
            out.append(
                f"| {label}: {describe[label](art.facts)} | {kind_label(kind)} | {_fmt(c['phi_11'])} | "
                f"{_fmt(1 / c['n'])} | {'**yes**' if above else 'no'} |"
            )
    if not compared:
        return out[:2] + [
            "Not testable: Fig. 3 and Fig. 4, the comparisons it controls, were not made (below).",
            "",
        ]
    if not rows:
        return out[:2] + ["Not available: the runs have no adapter_init.safetensors.", ""]
    return out + [""]


def fig3_section(arts: dict[str, Artifact | Skipped]) -> list[str]:
    out = ["## Fig. 3: the top directions of a small and a large rank overlap", ""]
    first = next((a for a in arts.values() if isinstance(a, Artifact)), None)
    if first is None:
        return out + next(iter(arts.values())).lines()
    f = first.facts
    small, large, layer = f["small"], f["large"], f["layer"]
    out += [
        f"φ(X_r={small}, X_r={large}, i, j) at layer {layer}. The paper (GPT-3, r = 8 vs 64): φ > 0.5 at "
        "i = j = 1, decaying for larger i. Random floor: E[φ(i, j)] = max(i, j)/n; 'at init': the "
        "same φ between the two runs' random initial A0, the control.",
        "",
        f"| factor | module | φ(1,1) | φ(1,1) at init | floor(1,1) | φ({small},{small}) "
        f"| floor({small},{small}) | holds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = {}
    for factor, art in arts.items():
        if not isinstance(art, Artifact):
            continue
        flags = []
        for kind, k in art.facts["kinds"].items():
            d, n = k["diag"], k["n"]
            ok = d[0] > SHARED and d[small - 1] < d[0]
            flags.append(ok)
            init = art.facts["init"].get(kind)
            out.append(
                f"| {_text(factor)} | {kind_label(kind)} | {_fmt(d[0])} | "
                f"{_fmt(init['phi_11']) if init else '–'} | {_fmt(1 / n)} | "
                f"{_fmt(d[small - 1])} | {_fmt(small / n)} | {'yes' if ok else 'no'} |"
            )
        verdicts[factor] = _verdict(flags)
    out += ["", "Verdict: " + "; ".join(f"{_text(f)}: {v}" for f, v in verdicts.items()) + ".", ""]
    return out


def fig4_section(arts: dict[str, Artifact | Skipped]) -> list[str]:
    out = ["## Fig. 4: two seeds share a few top directions; random matrices share none", ""]
    first = next((a for a in arts.values() if isinstance(a, Artifact)), None)
    if first is None:
        return out + next(iter(arts.values())).lines()
    f = first.facts
    rank, (s1, s2), layer = f["rank"], f["seeds"], f["layer"]
    out += [
        f"φ between seeds {s1} and {s2} at r = {rank}, layer {layer}; 'shared' counts the i ≤ {rank} with "
        f"φ(i, i) > {SHARED}; the top direction counts as shared when φ(1, 1) ≥ {ABOVE_FLOOR} × the "
        "random floor 1/n. The paper: the seeds share a few top directions, two random Gaussian "
        "matrices none, and ΔW_q shares more than ΔW_v.",
        "",
        "| factor | module | φ(1,1) | shared | mean φ, top 8×8 | floor(1,1) | floor(8,8) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines_v = []
    for factor, art in arts.items():
        if not isinstance(art, Artifact):
            continue
        means, flags, random_shared = {}, [], []
        for kind, k in art.facts["kinds"].items():
            d, n, phi = k["diag"], k["n"], k["phi"].to_numpy()
            b = min(8, phi.shape[0])
            means[kind] = float(phi[:b, :b].mean())
            shared = int(np.sum(np.asarray(d) > SHARED))
            gaussian = kind.startswith("_gaussian")
            label = f"random Gaussian (n={n})" if gaussian else kind_label(kind)
            out.append(
                f"| {_text(factor)} | {label} | {_fmt(d[0])} | {shared} | {_fmt(means[kind])} | "
                f"{_fmt(1 / n)} | {_fmt(b / n)} |"
            )
            if gaussian:
                random_shared.append(shared)
            else:
                flags.append(d[0] >= ABOVE_FLOOR / n)
        random_none = not any(random_shared)
        q = next((means[k] for k in means if _is_q(k)), None)
        v = next((means[k] for k in means if _is_v(k)), None)
        qv = (
            "not testable (no q and v modules)"
            if q is None or v is None
            else f"{'yes' if q > v else 'no'} ({_fmt(q)} vs {_fmt(v)})"
        )
        lines_v.append(
            f"- {_text(factor)}: the seeds share their top direction: {_verdict(flags)}; "
            f"the random matrices share none: {'yes' if random_none else 'no'}; "
            f"q shares more than v: {qv}."
        )
    return out + ["", *lines_v, ""]


def table7_section(art: Artifact | Skipped, sweep: Sweep) -> list[str]:
    out = ["## Table 7: ΔW amplifies directions that W does not emphasise", ""]
    if isinstance(art, Skipped):
        return out + art.lines()
    rows = art.facts["rows"]
    small, large = sweep.ranks[0], sweep.ranks[-1]
    out += [
        f"Layer {art.facts['layer']}, U, V the top-r singular vectors. The paper (GPT-3, W_q, layer 48): "
        "r = 4: 0.32 (ΔW), 21.67 (W), 0.02 (random), amplification ≈ 21.5; r = 64: 1.90, 37.71, 0.33, ≈ 1.9.",
        "",
        "| module | r | ‖UᵀWV‖ ΔW | ‖UᵀWV‖ W | ‖UᵀWV‖ random | ‖W‖_F | ‖ΔW‖_F | amplification |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdict = []
    for kind in dict.fromkeys(r["module"] for r in rows):
        by_rank = {r["r"]: r for r in rows if r["module"] == kind}
        for r in by_rank.values():
            out.append(
                f"| {kind} | {r['r']} | "
                + " | ".join(_fmt(r[k]) for k in ("proj_dw", "proj_w", "proj_random", "w_norm", "dw_norm"))
                + f" | {_fmt(r['amplification'])} |"
            )
        between = [r["proj_random"] < r["proj_dw"] < r["proj_w"] for r in by_rank.values()]
        verdict.append(
            f"- {kind}: random < ΔW < W for every rank: {_verdict(between)}; "
            f"{_by_rank(by_rank, small, large)}."
        )
    note = [f"_{QUANTIZED_NOTE}_", ""] if quantized(sweep) else []
    return out + ["", *verdict, "", *note]


def _by_rank(by_rank: dict, small: int, large: int) -> str:
    """The amplification test between the smallest and the largest rank, or why it cannot be made."""
    if small == large or small not in by_rank or large not in by_rank:
        return (
            "amplification at a smaller rank than another: not testable (one rank in the sweep: run "
            "`python sweep.py rank=4,64`)"
        )
    a, b = by_rank[small]["amplification"], by_rank[large]["amplification"]
    verdict = "yes" if a > b else "no"
    return f"amplification at r = {small} ({_fmt(a)}) larger than at r = {large} ({_fmt(b)}): {verdict}"


def findings_markdown(
    sweep: Sweep, fig3s: dict, fig4s: dict, table7: Artifact | Skipped, beyond: list[str] = ()
) -> str:
    """findings.md: the Section 7 findings, then the `beyond` lines (LoRA against full fine-tuning, ...)."""
    lines = [
        f"# Findings on `{sweep.path}`",
        "",
        f"Runs: {', '.join([*(f'r={r} s={s}' for r, s in sweep.runs), *(f'full s={s}' for s in sweep.full)])}"
        ". "
        "X stands for the factor analysed: A (the paper's), A − A0 (its learned part) or ΔW's input side.",
        "",
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
