"""How ΔW relates to W (Section 7.3): Figure 8 and Table 7 of the paper, on a sweep.

Fig. 8    φ between W's top-i and ΔW's top-j singular vectors (same side), per rank, beside
          a random rank-r matrix in place of ΔW
Table 7   ‖UᵀWV‖_F for U, V from ΔW / from W / random, ‖W‖_F, ‖ΔW‖_F and
          amplification = ‖ΔW‖_F / ‖UᵀWV‖_F (U, V from ΔW), per rank
"""

from __future__ import annotations

import pandas as pd
import torch

from lorascope.analysis.amplification import FIG8_SIDE
from lorascope.analysis.plots import plot_phi
from lorascope.analysis.similarity import grid_frame, long_grid
from lorascope.compare.w_and_delta import amplification_table, w_delta_frame
from lorascope.models import QUANTIZED_NOTE, is_quantized
from lorascope.names import kind_label, module_kind
from lorascope.paper.artifact import Artifact
from lorascope.paper.sweep import Sweep
from lorascope.run_format import Adapter, Run

TABLE7_COLUMNS = {
    "proj_dw": "‖UᵀWV‖_F ΔW",
    "proj_w": "‖UᵀWV‖_F W",
    "proj_random": "‖UᵀWV‖_F random",
    "w_norm": "‖W‖_F",
    "dw_norm": "‖ΔW‖_F",
    "amplification": "amplification",
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


def fig8(sweep: Sweep, layer=None, device: str = "auto") -> Artifact:
    """One row of panels per module kind: W's top-i (vertical) against ΔW's top-j (horizontal), on the
    paper's side (FIG8_SIDE), per rank and for a random ΔW; the CSV says which side in its `side` column."""
    side = FIG8_SIDE
    layer = sweep.middle_layer if layer is None else layer
    modules = [sweep.module(layer, kind) for kind in sweep.kinds]
    rank = sweep.ranks[-1]
    runs = {**_by_rank(sweep), f"random r={rank}": _random_run(sweep, modules, rank)}
    widths = [min(a.out_features, a.in_features) for a in (sweep.run(rank).adapters[m] for m in modules)]
    top_w = min(max(FIG8_TOP_W, rank), *widths)
    frame = w_delta_frame(
        runs, side=side, top_w=top_w, modules="|".join(f"^{m}$" for m in modules), device=device
    )
    panels, rows = {}, []
    for kind, m in zip(sweep.kinds, modules, strict=True):
        for label in runs:
            d = frame[(frame.module == m) & (frame.run == label)]
            g = grid_frame(d.pivot(index="i", columns="j", values="phi").to_numpy())
            panels[
                f"{kind_label(kind)}: {'ΔW, ' if label.startswith('r=') else ''}{label.replace('r=', 'r = ')}"
            ] = g
            rows.append(long_grid(g, layer=layer, module=kind, side=side, delta=label))
    note = f"\n{QUANTIZED_NOTE}" if quantized(sweep) else ""
    fig, _ = plot_phi(
        panels,
        ncols=len(runs),
        row_label=f"i (top singular vectors of W, {side} side)",
        col_label=f"j (top singular vectors of ΔW, {side} side)",
        suptitle=f"{sweep.name}, layer {layer}: " + r"$\phi(W, \Delta W, i, j)$" + note,
    )
    return Artifact("fig8_w_vs_delta", pd.concat(rows, ignore_index=True), fig=fig)


def amplification_frame(sweep: Sweep, device: str = "auto") -> pd.DataFrame:
    """Table 7 numbers (k = r) for every module and rank (seed-0 runs): one row per (module, r)."""
    table = amplification_table(_by_rank(sweep), device=device)
    table.insert(1, "r", table.pop("run").str.removeprefix("r=").astype(int))
    return table.drop(columns=["rank", "k"])


def table7(sweep: Sweep, layer=None, device: str = "auto") -> tuple[Artifact, Artifact]:
    """The paper's Table 7 at one layer (CSV/Markdown/LaTeX), and the same numbers for every layer (CSV)."""
    layer = sweep.middle_layer if layer is None else layer
    every = amplification_frame(sweep, device)
    at_layer = every[every["module"].isin([sweep.module(layer, k) for k in sweep.kinds])].copy()
    at_layer["module"] = at_layer["module"].map(lambda m: kind_label(module_kind(m)))
    table = at_layer.set_index(["module", "r"])[list(TABLE7_COLUMNS)].rename(columns=TABLE7_COLUMNS)
    caption = (
        f"{sweep.name}, layer {layer}: ‖UᵀWV‖_F with U, V the top-r singular vectors of ΔW, "
        "of W, or random; amplification = ‖ΔW‖_F / ‖UᵀWV‖_F (ΔW)."
        + (f" {QUANTIZED_NOTE}" if quantized(sweep) else "")
    )
    facts = {"layer": layer, "rows": at_layer.to_dict("records")}
    return (
        Artifact("table7_amplification", at_layer, table=table, caption=caption, facts=facts),
        Artifact("table7_amplification_all_layers", every, table=every.set_index(["module", "r"])),
    )
