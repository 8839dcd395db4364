"""The spectrum of each module's ΔW in a run: a table of effective ranks and the singular values."""

from __future__ import annotations

import pandas as pd

from lorascope.analysis.factors import is_factored
from lorascope.analysis.spectrum import dense_spectrum, spectrum


def spectrum_frames(run, modules: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, sigmas) for the run's `modules`.

    table: one row per module (index "module"): rank, sigma_1, fro_norm, energy_rank, stable_rank,
    effective_rank. sigmas: long format, columns module, k (from 1), sigma — σ_k of ΔW, descending."""
    rows, sigmas = [], []
    for m in modules:
        ad = run.adapters[m]
        if is_factored(ad):
            res = spectrum(ad.A, ad.B, ad.scaling)
        else:  # a full fine-tuning ΔW: every singular value, for its energy and effective ranks
            res = dense_spectrum(ad.delta_weight())
        s = res.pop("singular_values")
        rows.append({"module": m, "rank": ad.rank, **res})
        sigmas.append(pd.DataFrame({"module": m, "k": range(1, len(s) + 1), "sigma": s}))
    return pd.DataFrame(rows).set_index("module"), pd.concat(sigmas, ignore_index=True)


def with_top_sigmas(table: pd.DataFrame, sigmas: pd.DataFrame, top: int) -> pd.DataFrame:
    """The table with columns s1..s{top} (the leading singular values) in place of sigma_1, for printing."""
    shown = table.drop(columns=["sigma_1"])
    wide = sigmas[sigmas.k <= top].pivot(index="module", columns="k", values="sigma")
    for k in reversed(wide.columns.tolist()):
        shown.insert(1, f"s{k}", wide.loc[shown.index, k])
    return shown
