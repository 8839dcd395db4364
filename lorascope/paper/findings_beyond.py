"""findings.md beyond Section 7: LoRA against full fine-tuning, and how the adapters formed.

spectrum      Biderman et al. 2024: full fine-tuning's ΔW needs a rank 10–100× a typical LoRA rank to
              hold 90 % of its energy. Holds when full's median 90 %-energy rank ≥ 10 × the LoRA rank
              taken as typical (8 when the sweep has it).
lora_vs_full  does a low-rank adapter find full fine-tuning's top directions? φ(1, 1) between the top
              directions of the two ΔW, and φ(r, r) between LoRA's top-r and full's top-r, against
              the random floors 1/n and r/n; a top direction counts as found when φ(1, 1) > 0.5.
              Tested against a Gaussian control (a same-shape N(0, 1) matrix: 196 of 384 for 384 × 384)
              and stated as rank / n, since the 10× rule was set on models far wider than the demo's.
asymmetry     Zhu et al. 2024 from their own across-seed test: B's learned subspace agrees across seeds
              more than A's (A stays near its random start). Statistic: mean φ(t, t), t ≤ r, of B between
              seeds minus the same of A, with its interval over seeds.
frozen A      Zhu et al. 2024's other test: B alone (A frozen at A0, `lora.train_A=false`) matches training
              both. Frozen-A minus trained-A held-out metric per seed, its interval against a stated
              tolerance, and φ between the two runs' ΔW output-side directions against its null
              (`lorascope.paper.frozen_a`).
trajectory    lorascope's own quantities (not a published test): when the final top direction appeared
              (φ(1, 1) to the final ΔW ≥ 0.9 from then on), ‖A_T − A0‖/‖A0‖, φ(A_T, A0) and the part
              of ΔW_T due to A moving, ‖s·B(A − A0)‖/‖ΔW‖.
"""

from __future__ import annotations

import itertools

import numpy as np

from lorascope.analysis.nulls import gaussian_energy_rank
from lorascope.analysis.stats import pair_interval
from lorascope.compare.pairs import run_similarity
from lorascope.names import kind_label, module_kind
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.frozen_a import COMMAND, METRICS, frozen_a, twin_seeds
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import ABOVE_TEXT, ONE_SEED, decide, interval, null, verdict
from lorascope.paper.verdicts import fmt as _fmt

TYPICAL_RANK = 8  # "a typical LoRA rank" (the paper's r = 8), when the sweep has it
FOUND = 0.5  # φ(1, 1) above this: LoRA's top direction lies mostly in full fine-tuning's top direction
REACHED = 0.9
A_STAYS = 0.9  # φ(A_T, A0) at or above this: A's row space is still mostly its random start
A_SHARE = 0.3  # ‖s·B(A − A0)‖ / ‖ΔW‖ at or below this: B carries the change


def _verdict(ok: bool) -> str:
    return verdict([bool(ok)])


def spectrum_section(arts: list, sweep: Sweep | None = None) -> list[str]:
    out = ["## LoRA versus full fine-tuning: how low-rank is ΔW?", ""]
    art = arts[0]
    if isinstance(art, Skipped):
        return out + art.lines()
    energy = art.facts["energy"]
    out += [
        "Biderman et al. (2024) find that full fine-tuning's ΔW needs a rank 10–100× typical LoRA ranks to "
        "hold 90 % of its energy Σσ². Median over layers:",
        "",
        "| method | module | 90 %-energy rank | stable rank | effective rank |",
        "|---|---|---|---|---|",
        *(
            f"| {r.method} | {r.kind} | {_fmt(r.energy_rank)} | {_fmt(r.stable_rank)} "
            f"| {_fmt(r.effective_rank)} |"
            for r in energy.itertuples()
        ),
        "",
    ]
    ranks = [int(m.removeprefix("r=")) for m in dict.fromkeys(energy.method) if m != "full"]
    typical = TYPICAL_RANK if TYPICAL_RANK in ranks else ranks[len(ranks) // 2]
    shapes = art.facts.get("shapes", {})
    n_full = len(sweep.full) if sweep is not None else 1
    for kind in dict.fromkeys(energy.kind):
        full = float(energy[(energy.method == "full") & (energy.kind == kind)].energy_rank.iloc[0])
        ratio = full / typical
        shape = shapes.get(kind)
        control = ""
        if shape:
            n = min(shape)
            gauss = gaussian_energy_rank(shape)
            control = (
                f"; as rank / n: {_fmt(full / n)} against a same-shape Gaussian's {_fmt(gauss)} / {n} = "
                f"{_fmt(gauss / n)} (a dense update with no structure), so full fine-tuning's ΔW is "
                f"{_fmt(gauss / full)}× more concentrated than noise"
            )
        word = _verdict(ratio >= 10) if n_full >= 2 else f"**{ONE_SEED}** (one full fine-tuning run)"
        out.append(
            f"- {kind}: full fine-tuning's 90 %-energy rank is {_fmt(full)}, {_fmt(ratio)}× the LoRA rank "
            f"{typical} (the paper's rule: ≥ 10×, set on models of width 4096 trained for thousands of "
            f"steps){control}: {word}."
        )
    return out + [""]


ZHU_FACTORS = ("A", "B")


def asymmetry_section(sweep: Sweep) -> list[str]:
    """Zhu et al. 2024 from the factors across seeds: does B agree across seeds more than A?"""
    out = ["## LoRA's asymmetry: B learns, A stays random (Zhu et al. 2024)", ""]
    rank = next((r for r in reversed(sweep.ranks) if len(sweep.seeds(r)) >= 2), None)
    if rank is None:
        return out + [
            "Not testable: needs two seeds at one rank: run `python sweep.py rank=8 seed=0,1,2`.",
            "",
        ]
    seeds = sweep.seeds(rank)
    S = len(seeds)
    diag = {f: {} for f in ZHU_FACTORS}  # factor -> kind -> (S, S, layers)
    for (ia, a), (ib, b) in itertools.combinations(enumerate(seeds), 2):
        for f in ZHU_FACTORS:
            sim = run_similarity(sweep.run(rank, a), sweep.run(rank, b), factor=f)
            per: dict[str, list] = {}
            for m in sweep.modules:
                per.setdefault(module_kind(m), []).append(float(np.diag(sim.grids[m].to_numpy()).mean()))
            for kind, v in per.items():
                diag[f].setdefault(kind, np.full((S, S, len(v)), np.nan))[ia, ib] = v
    out += [
        f"Their across-seed test at r = {rank}, seeds {', '.join(map(str, seeds))}: mean φ(t, t), t ≤ r, "
        "between seeds for B (output side) and for A (input side), over every pair of seeds and layer, with "
        "a bootstrap interval over seeds (3 seeds for one). It holds when B − A lies above 0. Their other "
        "test, A frozen against trained A, is the next section.",
        "",
        "| module | φ of B across seeds | φ of A across seeds | B − A | verdict |",
        "|---|---|---|---|---|",
    ]
    for kind in diag["A"]:
        B, A = diag["B"][kind], diag["A"][kind]
        d = pair_interval(B - A)
        out.append(
            f"| {kind.rsplit('.', 1)[-1]} | {interval(pair_interval(B))} | {interval(pair_interval(A))} | "
            f"{interval(d)} | {decide(d, 0.0)} |"
        )
    return out + [""]


def frozen_a_section(sweep: Sweep) -> list[str]:
    """Zhu et al. 2024's own test: B alone (A frozen at its random start) against both factors trained."""
    out = [
        "## LoRA's asymmetry, their own test: training B alone matches training both (Zhu et al. 2024)",
        "",
    ]
    ranks = twin_seeds(sweep)
    if not ranks:
        have = ", ".join(r.name for r in sweep.frozen_A.values())
        return out + [
            "Not testable: the sweep holds no run with A frozen (`lora.train_A=false`) beside a trained-A "
            f"run of the same rank and seed{f' (frozen-A runs without a twin: {have})' if have else ''}. Run "
            f"`{COMMAND}` in this sweep (its runs go to r8-s<seed>-frozenA, beside r8-s<seed>), and "
            "`python sweep.py rank=8 seed=0,1,2` for the trained-A twins it does not hold yet.",
            "",
        ]
    results = [frozen_a(sweep, rank, seeds) for rank, seeds in ranks.items()]
    out += [
        "Each seed's run with A frozen at its start A0 (only B learns) against its twin with A trained: "
        "same rank, seed, A0 and batches. The effect is the held-out metric of frozen minus trained, mean "
        "over seeds with a 95 % bootstrap interval; B alone matches when the whole interval lies above "
        f"−{_fmt(METRICS['val_accuracy'][1])} for accuracy or below +{_fmt(METRICS['val_loss'][1])} for "
        "the held-out loss (nats), and fails when it lies wholly beyond.",
        "",
        "| r | seeds | metric | frozen A | trained A | frozen − trained | tolerance | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in results:
        g = f.gap
        if g is None:
            out.append(
                f"| {f.rank} | {len(f.seeds)} | – | – | – | – | – | not testable (no held-out metric) |"
            )
            continue
        bad = "−" if g.higher_is_better else "+"
        out.append(
            f"| {f.rank} | {', '.join(map(str, f.seeds))} | {g.metric} | {interval(g.frozen)} | "
            f"{interval(g.trained)} | {interval(g.gap)} | {bad}{_fmt(g.tolerance)} | {g.verdict} |"
        )
    out += [
        "",
        "What B learned in each: φ between the two runs' ΔW top directions on the output side (B's column "
        "space), per seed and layer, against pairs of random Gaussian (n, r) matrices (the null) and the "
        f"analytic floors 1/n and (r + 1)/(2n). The same directions when φ(1, 1) lies {ABOVE_TEXT}. (The "
        "input side is not tested: both runs start from the one A0 of their seed.)",
        "",
        "| r | module | φ(1,1) | null φ(1,1) | floor 1/n | mean φ(t,t), t ≤ r | null | floor | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in results:
        for k in f.kinds:
            out.append(
                f"| {f.rank} | {kind_label(k.kind)} | {interval(k.phi_11)} | {null(k.null_11)} | "
                f"{_fmt(k.floor_11)} | {interval(k.diag)} | {null(k.null_diag)} | "
                f"{_fmt(k.floor_diag(f.rank))} | {k.verdict} |"
            )
    gaps = [f.gap.verdict for f in results if f.gap is not None]
    same = [k.verdict for f in results for k in f.kinds]
    return out + [
        "",
        f"- B alone matches training both (held-out metric within the tolerance): {verdict(gaps)}.",
        f"- B learns the same top output direction with A frozen as with A trained: {verdict(same)}.",
        "",
    ]


def lora_vs_full_section(art) -> list[str]:
    out = [
        "## LoRA versus full fine-tuning: does a low-rank adapter find the full update's top directions?",
        "",
    ]
    if isinstance(art, Skipped):
        return out + art.lines()
    data = art.facts["data"]
    out += [
        f"Layer {art.facts['layer']}: φ(1, 1) between the top direction of each LoRA rank's ΔW and of full "
        "fine-tuning's ΔW, and φ(r, r) between LoRA's top-r and full's top-r directions; the random floors "
        f"are 1/n and r/n. A top direction counts as found when φ(1, 1) > {FOUND}.",
        "",
        "| module | side | r | φ(1,1) | floor 1/n | φ(r,r) | floor r/n |",
        "|---|---|---|---|---|---|---|",
    ]
    found, total = 0, 0
    for (kind, side, rank), d in data.groupby(["kind", "side", "rank"], sort=False):
        top = float(d[(d.i == 1) & (d.j == 1)].phi.iloc[0])
        rr = d[(d.i == rank) & (d.j == rank)]
        n = int(d.n.iloc[0])
        found, total = found + (top > FOUND), total + 1
        rr_text = (_fmt(rr.phi.iloc[0]), _fmt(rank / n)) if len(rr) else ("–", "–")
        out.append(
            f"| {kind} | {side} | {rank} | {_fmt(top)} | {_fmt(1 / n)} | {rr_text[0]} | {rr_text[1]} |"
        )
    return out + [
        "",
        f"LoRA's top direction is full fine-tuning's in {found} of {total} cases (seed 0 of each: "
        f"{ONE_SEED}; the normalised curves are in fig_lora_vs_full).",
        "",
    ]


def intruders_section(arts: list) -> list[str]:
    out = ["## LoRA versus full fine-tuning: intruder dimensions", ""]
    if isinstance(arts[0], Skipped):
        return out + arts[0].lines()
    facts = arts[0].facts
    table = facts["table"]
    means = table.groupby(["run", "kind"], sort=False)["count"].mean()
    out += [
        f"Shuttleworth et al. (2024) find intruder dimensions in LoRA's W + ΔW (among its top-{facts['k']} "
        f"left singular vectors, those whose |cos| with every singular vector of W stays below ε = "
        f"{facts['eps']}) and not in full fine-tuning's. Intruders per module, mean over layers:",
        "",
        "| method | module | intruders per module | modules with any |",
        "|---|---|---|---|",
    ]
    for (run, kind), mean in means.items():
        rows = table[(table.run == run) & (table.kind == kind)]
        out.append(f"| {run} | {kind} | {_fmt(mean)} | {int((rows['count'] > 0).sum())} of {len(rows)} |")
    per_run = table.groupby("run", sort=False)["count"].mean()
    if "full" in per_run:
        lora = per_run.drop("full")
        ok = bool((per_run["full"] < lora).all())
        out += [
            "",
            f"Full fine-tuning has {_fmt(per_run['full'])} intruders per module, LoRA "
            f"{', '.join(f'{r}: {_fmt(v)}' for r, v in lora.items())}: fewer than every LoRA rank: "
            f"{'yes' if ok else 'no'}, on one run per method and ε = {facts['eps']} only: "
            f"**{ONE_SEED}** (counts this small move by one intruder between seeds and reverse with ε).",
        ]
    else:
        out += ["", "No full fine-tuning run in this sweep to compare with (`python sweep.py method=full`)."]
    return out + [""]


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
