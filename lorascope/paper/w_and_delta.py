"""How ΔW relates to W (Section 7.3): Figure 8 and Table 7 of the paper, on a sweep.

Fig. 8    φ between W's top-i and ΔW's top-j singular vectors (same side), per rank, beside
          a random rank-r matrix in place of ΔW
Table 7   ‖UᵀWV‖_F for U, V from ΔW / from W / random, ‖W‖_F, ‖ΔW‖_F and
          amplification = ‖ΔW‖_F / ‖UᵀWV‖_F (U, V from ΔW), per rank
"""

from __future__ import annotations

import pandas as pd
import torch

from lorascope.analysis.amplification import FIG8_SIDE, amplification, w_delta_similarity
from lorascope.analysis.modules import kind_label, module_kind
from lorascope.analysis.plots import plot_phi
from lorascope.analysis.similarity import grid_frame, long_grid
from lorascope.models import QUANTIZED_NOTE, is_quantized
from lorascope.paper.artifact import Artifact
from lorascope.paper.sweep import Sweep

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


def _random_factors(rank: int, out: int, n_in: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, n_in, generator=g), torch.randn(out, rank, generator=g)


def fig8(sweep: Sweep, layer=None, top_w: int | None = None) -> Artifact:
    """One row of panels per module kind: W's top-i (vertical) against ΔW's top-j (horizontal), on the
    paper's side (FIG8_SIDE); the CSV says which side in its `side` column."""
    side = FIG8_SIDE
    layer = sweep.middle_layer if layer is None else layer
    modules = [sweep.module(layer, kind) for kind in sweep.kinds]
    weights = sweep.base_weights(modules)
    panels, rows = {}, []
    for kind, m in zip(sweep.kinds, modules, strict=True):
        W = weights[m]
        for rank in sweep.ranks:
            a = sweep.run(rank).adapters[m]
            g = grid_frame(
                w_delta_similarity(W, a.A, a.B, a.scaling, side=side, top_w=top_w, w_svd=sweep.w_svd(m))
            )
            panels[f"{kind_label(kind)}: ΔW, r = {rank}"] = g
            rows.append(long_grid(g, layer=layer, module=kind, side=side, delta=f"r={rank}"))
        rank = sweep.ranks[-1]
        A, B = _random_factors(rank, W.shape[0], W.shape[1])
        g = grid_frame(w_delta_similarity(W, A, B, 1.0, side=side, top_w=top_w, w_svd=sweep.w_svd(m)))
        panels[f"{kind_label(kind)}: random, r = {rank}"] = g
        rows.append(long_grid(g, layer=layer, module=kind, side=side, delta=f"random r={rank}"))
    note = f"\n{QUANTIZED_NOTE}" if quantized(sweep) else ""
    fig, _ = plot_phi(
        panels,
        ncols=len(sweep.ranks) + 1,
        row_label=f"i (top singular vectors of W, {side} side)",
        col_label=f"j (top singular vectors of ΔW, {side} side)",
        suptitle=f"{sweep.name}, layer {layer}: " + r"$\phi(W, \Delta W, i, j)$" + note,
    )
    return Artifact("fig8_w_vs_delta", pd.concat(rows, ignore_index=True), fig=fig)


def amplification_frame(sweep: Sweep, modules: list[str], ranks: list[int]) -> pd.DataFrame:
    """Table 7 numbers (k = r) for each module and rank: one row per (module, r), seed 0 runs."""
    weights = sweep.base_weights(modules)
    rows = []
    for m in modules:
        for rank in ranks:
            a = sweep.run(rank).adapters[m]
            numbers = amplification(weights[m], a.A, a.B, a.scaling, w_svd=sweep.w_svd(m))
            rows.append({"module": m, "r": rank, **numbers})
    return pd.DataFrame(rows)


def table7(sweep: Sweep, layer=None) -> tuple[Artifact, Artifact]:
    """The paper's Table 7 at one layer (CSV/Markdown/LaTeX), and the same numbers for every layer (CSV)."""
    layer = sweep.middle_layer if layer is None else layer
    every = amplification_frame(sweep, sweep.modules, sweep.ranks)
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
