"""How ΔW relates to W (Section 7.3): Figure 8 and Table 7 of the paper, on a sweep.

Fig. 8    φ between W's top-i and ΔW's top-j singular vectors, on both sides (the paper does not
          say which side its figure shows; showing both is lorascope's choice), per rank, beside a
          random rank-r matrix in place of ΔW; cells at or below the floor max(i, j)/n hatched
Table 7   ‖UᵀWV‖_F for U, V from ΔW (mean over seeds with a 95 % interval) / from W / random, where
          "random" is the null distribution of N_NULL Haar draws of (U, V) (its mean, sd and ΔW's
          percentile in it, not one draw), ‖W‖_F, ‖ΔW‖_F and amplification = ‖ΔW‖_F / ‖UᵀWV‖_F

The finding: ΔW's ‖UᵀWV‖_F lies above the null's 95th percentile and below W's own, and the
amplification is larger at the smallest rank than at the largest (their intervals apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from lorascope.analysis.nulls import random_projection_draws
from lorascope.analysis.plots import FLOOR_NOTE, plot_phi
from lorascope.analysis.similarity import grid_frame, long_grid, random_phi_baseline
from lorascope.analysis.stats import N_NULL, Interval, NullSummary, null_summary, seed_interval
from lorascope.base_model import iter_base_weights
from lorascope.compare.w_and_delta import amplification_table, w_delta_frame
from lorascope.models import QUANTIZED_NOTE, is_quantized
from lorascope.names import kind_label
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.sweep import Sweep
from lorascope.paper.verdicts import (
    ABOVE_TEXT,
    FAILS,
    HOLDS,
    ONE_SEED,
    UNDECIDED,
    decide,
    fmt,
    interval,
    verdict,
)
from lorascope.run_format import Adapter, Run

TABLE7_COLUMNS = {
    "proj_dw": "‖UᵀWV‖_F ΔW",
    "proj_dw_lo": "ΔW 95 % lo",
    "proj_dw_hi": "ΔW 95 % hi",
    "proj_w": "‖UᵀWV‖_F W",
    "proj_random": "‖UᵀWV‖_F random (null mean)",
    "proj_random_sd": "random sd",
    "dw_percentile": "ΔW's percentile in random",
    "w_norm": "‖W‖_F",
    "dw_norm": "‖ΔW‖_F",
    "amplification": "amplification",
    "seeds": "seeds",
}


def quantized(sweep: Sweep) -> bool:
    return any(is_quantized(r.base_model) for r in sweep.runs.values())


# W's top directions Fig. 8 shows (the paper's Fig. 8 stops well short of W's full width): a truncated
# SVD of W, cached, instead of a dense one per module.
FIG8_TOP_W = 64


def _random_run(sweep: Sweep, modules: list[str], rank: int, seed: int = 0) -> Run:
    """A rank-`rank` random Gaussian ΔW in place of an adapter: Fig. 8's control panel."""
    g = torch.Generator().manual_seed(seed)
    adapters = {}
    for m in modules:
        a = next(iter(sweep.runs.values())).adapters[m]
        adapters[m] = Adapter(
            torch.randn(rank, a.in_features, generator=g), torch.randn(a.out_features, rank, generator=g), 1.0
        )
    return Run(path=sweep.path / f"random-r{rank}", adapters=adapters)


def _by_rank(sweep: Sweep) -> dict[str, Run]:
    return {f"r={rank}": sweep.run(rank) for rank in sweep.ranks}


FIG8_SIDES = ("left", "right")  # both: the paper does not say which side its Fig. 8 shows


def fig8(sweep: Sweep, layer=None, device: str = "auto") -> Artifact:
    """One row of panels per (side, module kind): W's top-i (vertical) against ΔW's top-j (horizontal)
    per rank and for a random ΔW; cells where φ ≤ max(i, j)/n hatched. The CSV's `side` column says
    which side each row is (left: output space U, right: input space V)."""
    layer = sweep.middle_layer if layer is None else layer
    modules = [sweep.module(layer, kind) for kind in sweep.kinds]
    rank = sweep.ranks[-1]
    runs = {**_by_rank(sweep), f"random r={rank}": _random_run(sweep, modules, rank)}
    adapters = [sweep.run(rank).adapters[m] for m in modules]
    top_w = min(max(FIG8_TOP_W, rank), *(min(a.out_features, a.in_features) for a in adapters))
    panels, floors, rows = {}, {}, []
    for side in FIG8_SIDES:
        frame = w_delta_frame(
            runs, side=side, top_w=top_w, modules="|".join(f"^{m}$" for m in modules), device=device
        )
        for kind, m, a in zip(sweep.kinds, modules, adapters, strict=True):
            n = a.out_features if side == "left" else a.in_features
            for label in runs:
                d = frame[(frame.module == m) & (frame.run == label)]
                g = grid_frame(d.pivot(index="i", columns="j", values="phi").to_numpy())
                what = f"{'ΔW, ' if label.startswith('r=') else ''}{label.replace('r=', 'r = ')}"
                title = f"{kind_label(kind)} ({side}): {what}"
                panels[title], floors[title] = g, random_phi_baseline(*g.shape, n)
                rows.append(long_grid(g, layer=layer, module=kind, side=side, delta=label))
    note = f"\n{QUANTIZED_NOTE}" if quantized(sweep) else ""
    fig, _ = plot_phi(
        panels,
        ncols=len(runs),
        floors=floors,
        row_label="i (top singular vectors of W; left: output side U, right: input side V)",
        col_label="j (top singular vectors of ΔW, the same side)",
        suptitle=f"{sweep.name}, layer {layer}: "
        + r"$\phi(W, \Delta W, i, j)$"
        + f", both sides (lorascope's choice: the paper does not say); {FLOOR_NOTE} max(i, j)/n"
        + note,
    )
    return Artifact("fig8_w_vs_delta", pd.concat(rows, ignore_index=True), fig=fig)


def amplification_frame(sweep: Sweep, device: str = "auto") -> pd.DataFrame:
    """Table 7 numbers (k = r) for every module and run: one row per (module, r, seed)."""
    runs = {f"{r}/{s}": run for (r, s), run in sweep.runs.items()}
    table = amplification_table(runs, device=device)
    rs = table.pop("run").str.split("/", expand=True).astype(int)
    table.insert(1, "r", rs[0])
    table.insert(2, "seed", rs[1])
    return table.drop(columns=["rank", "k"])


def random_nulls(sweep: Sweep, modules: list[str], ranks: list[int], n_draws: int = N_NULL) -> dict:
    """(module, k) -> the N_NULL draws of ‖U_rᵀ W V_r‖_F over Haar (U_r, V_r), k each rank."""
    out = {}
    run = next(iter(sweep.runs.values()))
    for m, W in iter_base_weights(run, modules, also=list(sweep.runs.values())[1:]):
        for k in ranks:
            if k <= min(W.shape):
                out[(m, k)] = random_projection_draws(W, k, n_draws, seed=k)
    return out


@dataclass(frozen=True)
class Table7Row:
    kind: str
    r: int
    proj_dw: Interval
    proj_w: float
    random: NullSummary  # observed: proj_dw.mean
    amplification: Interval
    w_norm: float
    dw_norm: float

    @property
    def parts(self) -> list[str]:
        """ΔW above the null's 95th percentile; ΔW below W's own projection."""
        return [decide(self.proj_dw, self.random.q95), decide(self.proj_dw, self.proj_w, above=False)]

    @property
    def verdict(self) -> str:
        return verdict(self.parts)


@dataclass(frozen=True)
class Table7:
    layer: int
    rows: list[Table7Row]
    n_draws: int


def _table7_rows(every: pd.DataFrame, layer_modules: dict[str, str], nulls: dict) -> list[Table7Row]:
    rows = []
    for (m, r), d in every[every.module.isin(layer_modules)].groupby(["module", "r"], sort=False):
        proj = seed_interval(d.proj_dw.to_numpy())
        rows.append(
            Table7Row(
                kind=layer_modules[m],
                r=int(r),
                proj_dw=proj,
                proj_w=float(d.proj_w.iloc[0]),
                random=null_summary(proj.mean, nulls[(m, int(r))]),
                amplification=seed_interval(d.amplification.to_numpy()),
                w_norm=float(d.w_norm.iloc[0]),
                dw_norm=float(d.dw_norm.mean()),
            )
        )
    return rows


def table7(
    sweep: Sweep, layer=None, device: str = "auto", n_draws: int = N_NULL
) -> tuple[Artifact, Artifact]:
    """The paper's Table 7 at one layer (CSV/Markdown/LaTeX), over seeds and against the random null;
    the per-run numbers for every layer (CSV)."""
    layer = sweep.middle_layer if layer is None else layer
    every = amplification_frame(sweep, device)
    layer_modules = {sweep.module(layer, k): kind_label(k) for k in sweep.kinds}
    nulls = random_nulls(sweep, list(layer_modules), sweep.ranks, n_draws)
    result = Table7(layer, _table7_rows(every, layer_modules, nulls), n_draws)
    frame = pd.DataFrame(
        [
            {
                "module": t.kind, "r": t.r, "proj_dw": t.proj_dw.mean, "proj_dw_lo": t.proj_dw.lo,
                "proj_dw_hi": t.proj_dw.hi, "proj_w": t.proj_w, "proj_random": t.random.mean,
                "proj_random_sd": t.random.sd, "proj_random_q95": t.random.q95,
                "dw_percentile": t.random.percentile, "w_norm": t.w_norm, "dw_norm": t.dw_norm,
                "amplification": t.amplification.mean, "amplification_lo": t.amplification.lo,
                "amplification_hi": t.amplification.hi, "seeds": t.proj_dw.n_seeds, "null_draws": n_draws,
            }
            for t in result.rows
        ]
    )  # fmt: skip
    table = frame.set_index(["module", "r"])[[c for c in TABLE7_COLUMNS if c not in ("module", "r")]]
    caption = (
        f"{sweep.name}, layer {layer}: ‖UᵀWV‖_F with U, V the top-r singular vectors of ΔW (mean over "
        f"seeds, 95 % bootstrap interval), of W, or random (the null of {n_draws} Haar draws: mean, sd, "
        "and ΔW's percentile in it); amplification = ‖ΔW‖_F / ‖UᵀWV‖_F (ΔW)."
        + (f" {QUANTIZED_NOTE}" if quantized(sweep) else "")
    )
    return (
        Artifact(
            "table7_amplification", frame, table=table.rename(columns=TABLE7_COLUMNS), caption=caption,
            result=result,
        ),
        Artifact("table7_amplification_all_layers", every, table=every.set_index(["module", "r", "seed"])),
    )  # fmt: skip


def _by_rank_verdict(rows: dict[int, Table7Row], small: int, large: int) -> str:
    """Amplification larger at the smallest rank than at the largest, from their intervals."""
    if small == large or small not in rows or large not in rows:
        return (
            "amplification at a smaller rank than another: not testable (one rank in the sweep: run "
            "`python sweep.py rank=4,64`)"
        )
    a, b = rows[small].amplification, rows[large].amplification
    if not (a.has_interval and b.has_interval):
        word = ONE_SEED
    else:
        word = HOLDS if a.lo > b.hi else FAILS if a.hi < b.lo else UNDECIDED
    return f"amplification at r = {small} ({interval(a)}) larger than at r = {large} ({interval(b)}): {word}"


def table7_section(art: Artifact | Skipped, sweep: Sweep) -> list[str]:
    out = ["## Table 7: ΔW amplifies directions that W does not emphasise", ""]
    if isinstance(art, Skipped):
        return out + art.lines()
    t7: Table7 = art.result
    out += [
        f"Layer {t7.layer}, U, V the top-r singular vectors; ΔW's value is the mean over seeds with its 95 % "
        f"interval; 'random' is the null of {t7.n_draws} Haar draws of (U, V) on the same W (mean ± sd, and "
        f"the percentile of ΔW's mean among them). Tested: ΔW's interval {ABOVE_TEXT} and below W's. "
        "The paper (GPT-3, W_q, layer 48): r = 4: 0.32 (ΔW), 21.67 (W), 0.02 (random), amplification "
        "≈ 21.5; r = 64: 1.90, 37.71, 0.33, ≈ 1.9.",
        "",
        "| module | r | ‖UᵀWV‖ ΔW | ‖UᵀWV‖ W | random: mean ± sd | ΔW's percentile | amplification "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines = []
    for kind in dict.fromkeys(r.kind for r in t7.rows):
        rows = {r.r: r for r in t7.rows if r.kind == kind}
        for r in rows.values():
            out.append(
                f"| {kind} | {r.r} | {interval(r.proj_dw)} | {fmt(r.proj_w)} | {fmt(r.random.mean)} ± "
                f"{fmt(r.random.sd)} | {r.random.percentile:.0f} | {interval(r.amplification)} "
                f"| {r.verdict} |"
            )
        lines.append(
            f"- {kind}: random < ΔW < W: {verdict([p for r in rows.values() for p in r.parts])}; "
            f"{_by_rank_verdict(rows, sweep.ranks[0], sweep.ranks[-1])}."
        )
    note = [f"_{QUANTIZED_NOTE}_", ""] if quantized(sweep) else []
    return out + ["", *lines, "", *note]
