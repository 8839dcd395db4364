"""The spectrum of each module's ΔW in a run: a table of effective ranks and the singular values."""

from __future__ import annotations

import pandas as pd

from lorascope.analysis.spectrum import spectrum
from lorascope.delta import rank_bound


def spectrum_frames(run, modules: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, sigmas) for the run's `modules`.

    table: one row per module (index "module"): rank, sigma_1, fro_norm, energy_rank, stable_rank,
    effective_rank. sigmas: long format, columns module, k (from 1), sigma — σ_k of ΔW, descending."""
    rows, sigmas = [], []
    for m in modules:
        ad = run.adapters[m]
        res = spectrum(ad)  # every σ: r from the factors, all min(out, in) of a full fine-tuning ΔW
        s = res.singular_values
        rows.append({"module": m, "rank": rank_bound(ad), **res.metrics()})
        sigmas.append(pd.DataFrame({"module": m, "k": range(1, len(s) + 1), "sigma": s}))
    return pd.DataFrame(rows).set_index("module"), pd.concat(sigmas, ignore_index=True)


def with_top_sigmas(table: pd.DataFrame, sigmas: pd.DataFrame, top: int) -> pd.DataFrame:
    """The table with columns s1..s{top} (the leading singular values) in place of sigma_1, for printing."""
    shown = table.drop(columns=["sigma_1"])
    wide = sigmas[sigmas.k <= top].pivot(index="module", columns="k", values="sigma")
    for k in reversed(wide.columns.tolist()):
        shown.insert(1, f"s{k}", wide.loc[shown.index, k])
    return shown
