"""findings.md beyond Section 7: LoRA against full fine-tuning, and how the adapters formed (LoRA's
asymmetry: `findings_asymmetry`).

spectrum      Biderman et al. 2024: full fine-tuning's ΔW needs a rank 10–100× a typical LoRA rank to
              hold 90 % of its energy. Holds when the interval over full seeds of full's 90 %-energy rank
              (mean over layers) / the typical LoRA rank (8 when the sweep has it) lies above 10; tested
              against a Gaussian control (a same-shape N(0, 1) matrix: 196 of 384 for 384 × 384) and
              stated as rank / n, since the 10× rule was set on models far wider than the demo's.
lora_vs_full  does a low-rank adapter find full fine-tuning's top directions? φ(1, 1) between the top
              directions of the two ΔW, and φ(r, r), over LoRA seeds (paired with full seeds) and
              layers, against the null of random subspaces (floors 1/n and r/n); found when φ(1, 1)'s
              interval lies above 0.5.
intruders     Shuttleworth et al. 2024: full fine-tuning has fewer intruder dimensions than LoRA, from
              the interval of the paired difference full − LoRA at several ε, and where its sign changes.
trajectory    lorascope's own quantities (not a published test): when the final top direction appeared
              (φ(1, 1) to the final ΔW ≥ 0.9 from then on), ‖A_T − A0‖/‖A0‖, φ(A_T, A0) and the part
              of ΔW_T due to A moving, ‖s·B(A − A0)‖/‖ΔW‖.
"""

from __future__ import annotations

import numpy as np

from lorascope.analysis.stats import N_NULL, Interval
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.intruder_figs import REPORT_EPS
from lorascope.paper.lora_vs_full import FOUND
from lorascope.paper.spectrum_figs import BIDERMAN
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import HOLDS, ONE_SEED, decide, interval, null, verdict
from lorascope.paper.verdicts import fmt as _fmt

REACHED = 0.9
A_STAYS = 0.9  # φ(A_T, A0) at or above this: A's row space is still mostly its random start
A_SHARE = 0.3  # ‖s·B(A − A0)‖ / ‖ΔW‖ at or below this: B carries the change


def spectrum_section(arts: list, sweep: Sweep | None = None) -> list[str]:
    out = ["## LoRA versus full fine-tuning: how low-rank is ΔW?", ""]
    art = arts[0]
    if isinstance(art, Skipped):
        return out + art.lines()
    res = art.result
    out += [
        "Biderman et al. (2024) find that full fine-tuning's ΔW needs a rank 10–100× typical LoRA ranks to "
        "hold 90 % of its energy Σσ². Mean over seeds and layers, with a 95 % stratified bootstrap interval "
        "over seeds (layers as strata):",
        "",
        "| method | module | seeds | 90 %-energy rank | stable rank | effective rank |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r.method} | {r.kind} | {r.energy_rank.n_seeds} | {interval(r.energy_rank)} "
            f"| {interval(r.stable_rank)} | {interval(r.effective_rank)} |"
            for r in res.rows
        ),
        "",
        f"Tested: full fine-tuning's rank / {res.typical} (the LoRA rank taken as typical) with its interval "
        f"over full seeds ≥ {BIDERMAN:g} (the paper's rule, set on models of width 4096 trained for "
        "thousands of steps), and full's rank below a same-shape Gaussian's (the control: a dense update "
        "with no structure), stated as rank / n.",
        "",
    ]
    for kind, shape in res.shapes.items():
        full, ratio, n, gauss = res.full(kind).energy_rank, res.ratio(kind), min(shape), res.gaussian[kind]
        rule, control = decide(ratio, BIDERMAN), decide(full, gauss, above=False)
        scale = Interval(full.mean / n, full.lo / n, full.hi / n, full.n_seeds)
        out.append(
            f"- {kind}: full fine-tuning's 90 %-energy rank {interval(full)} is {interval(ratio)}× the LoRA "
            f"rank {res.typical}: **{rule}**{' (one full fine-tuning run)' if rule == ONE_SEED else ''}; as "
            f"rank / n: {interval(scale)} against the Gaussian control's {_fmt(gauss)} / {n} = "
            f"{_fmt(gauss / n)}: below the control (ΔW has low-rank structure): **{control}**."
        )
    return out + [""]


def lora_vs_full_section(art) -> list[str]:
    out = [
        "## LoRA versus full fine-tuning: does a low-rank adapter find the full update's top directions?",
        "",
    ]
    if isinstance(art, Skipped):
        return out + art.lines()
    res = art.result
    paired = f" {res.note}." if res.note else " Every LoRA seed is paired with the full run of its seed."
    out += [
        "φ(1, 1) between the top direction of each LoRA rank's ΔW and of full fine-tuning's ΔW, and φ(r, r) "
        "between LoRA's top-r and full's top-r directions: mean over LoRA seeds (seed s against full seed s) "
        f"and all {len(res.layers)} layers, with a 95 % stratified bootstrap interval over seeds (layers as "
        f"strata).{paired} Null: {N_NULL} draws of the same mean over random subspaces (analytic floors 1/n "
        f"and r/n). Tested: LoRA's top direction is full's when φ(1, 1)'s interval lies above {FOUND}.",
        "",
        "| module | side | r | seeds | φ(1,1) | null φ(1,1) | φ(r,r) | floor r/n | effect φ(1,1)·n "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res.curves:
        rr = interval(c.phi_rr) if c.phi_rr is not None else "–"
        out.append(
            f"| {c.kind} | {c.side} | {c.rank} | {len(c.pairs)} | {interval(c.phi_11)} | {null(c.null_11)} "
            f"| {rr} | {_fmt(c.rank / c.n)} | {_fmt(c.phi_11.mean * c.n)}× | {c.verdict} |"
        )
    parts = [c.verdict for c in res.curves]
    return out + [
        "",
        f"LoRA's top direction is full fine-tuning's: {verdict(parts)} ({sum(p == HOLDS for p in parts)} of "
        f"{len(parts)} (module, side, rank) hold; the normalised curves φ(r, j) with their floor band are in "
        "fig_lora_vs_full).",
        "",
    ]


def intruders_section(arts: list) -> list[str]:
    out = ["## LoRA versus full fine-tuning: intruder dimensions", ""]
    if isinstance(arts[0], Skipped):
        return out + arts[0].lines()
    res = arts[0].result
    out += [
        f"Shuttleworth et al. (2024) find intruder dimensions in LoRA's W + ΔW (among its top-{res.k} left "
        "singular vectors, those whose |cos| with every singular vector of W stays below ε) and not in full "
        f"fine-tuning's. Intruders per module at ε = {res.eps}: mean over seeds and layers with a 95 % "
        "stratified bootstrap interval over seeds (layers as strata):",
        "",
        "| method | module | seeds | intruders per module | modules with any |",
        "|---|---|---|---|---|",
    ]
    for c in res.counts:
        e = int(np.argmin(np.abs(c.eps - res.eps)))
        anyone = int((c.counts[..., e] > 0).sum())
        out.append(
            f"| {c.method} | {c.kind} | {len(c.seeds)} | {interval(c.at(res.eps))} | {anyone} of "
            f"{c.counts[..., e].size} |"
        )
    if not res.diffs:
        no_full = "No full fine-tuning run in this sweep to compare with (`python sweep.py method=full`)."
        return out + ["", no_full, ""]
    paired = f" {res.note}." if res.note else ""
    out += [
        "",
        "Tested: full fine-tuning has fewer intruders than LoRA when the interval of the paired difference "
        f"full − LoRA (LoRA seed s against full seed s, layers as strata) lies below 0, at each ε.{paired}",
        "",
        "| LoRA r | module | "
        + " | ".join(f"full − LoRA, ε = {e}" for e in REPORT_EPS)
        + " | sign changes at ε |",
        "|---|---|" + "---|" * len(REPORT_EPS) + "---|",
    ]
    for d in res.diffs:
        cells = " | ".join(
            f"{interval(d.at(e))}: {d.verdict(e)}" if d.at(e).has_interval else interval(d.at(e))
            for e in REPORT_EPS
        )
        flips = ", ".join(map(str, d.reversals)) or "none"
        out.append(f"| {d.rank} | {d.kind} | {cells} | {flips} |")
    at = {e: verdict([d.verdict(e) for d in res.diffs]) for e in REPORT_EPS}
    flipped = [f"r = {d.rank} {d.kind} at ε = {d.reversals[0]}" for d in res.diffs if d.reversals]
    return out + [
        "",
        "Full fine-tuning has fewer intruders than every LoRA rank: "
        + "; ".join(f"ε = {e}: {v}" for e, v in at.items())
        + (f". The mean difference changes sign for {', '.join(flipped)}." if flipped else "."),
        "",
    ]


def trajectory_section(arts: list) -> list[str]:
    out = ["## How the adapters formed during training", ""]
    made = [a for a in arts if isinstance(a, Artifact)]
    if not made:
        return out + arts[0].lines()
    out += [
        f"lorascope's own trajectory quantities (not a published test; Zhu et al.'s is the section above): "
        f"from each run's snapshots, the step from which ΔW's top direction stays the final one (φ(1, 1) "
        f"to ΔW_T ≥ {REACHED} on the input and the output side), median over layers; and which factor "
        f"carried the change ('A barely moves': φ(A_T, A0) ≥ {A_STAYS} and the part of ΔW_T due to A "
        f"moving is ≤ {A_SHARE} of it).",
        "",
        "| run | module | final step reached at | of T | ‖A_T − A0‖/‖A0‖ | φ(A_T, A0) | floor r/n "
        "| ‖s·B(A−A0)‖/‖ΔW‖ | A barely moves |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for art in made:
        reached, summary = art.facts["by_kind"], art.facts["summary"]
        for kind, s in summary.iterrows():
            step = reached.loc[kind, "step_median"] if kind in reached.index else float("nan")
            holds = s.phi_A_A0 >= A_STAYS and s.dW_dA_ratio <= A_SHARE
            when = _fmt(step) if step == step else "never"  # NaN: no module settled
            out.append(
                f"| {art.facts['run']} | {kind.rsplit('.', 1)[-1]} | {when} | {int(s.step)} "
                f"| {_fmt(s.dA_rel)} | {_fmt(s.phi_A_A0)} | {_fmt(s.phi_A_A0_floor)} | {_fmt(s.dW_dA_ratio)} "
                f"| {'yes' if holds else 'no'} |"
            )
    return out + [""]
