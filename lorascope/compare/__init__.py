"""The comparison layer: runs in, DataFrames out.

Between `lorascope.analysis` (pure arrays in, arrays out) and the CLI and figure recipes: each
function here takes loaded runs (or run folders), picks the modules and matrices, calls the
analysis, and returns tidy DataFrames or reports that the CLI prints and writes.

    from lorascope.compare import sweep_table                                  # a sweep listed (ls)
    from lorascope.compare import run_similarity, heatmap_pages, gaussian_floor   # two runs, φ
    from lorascope.compare import spectrum_frames, with_top_sigmas, run_trajectory  # one run's ΔW
    from lorascope.compare import amplification_table, intruder_tables, w_delta_frame  # W and ΔW
    from lorascope.compare import adapter_map, run_subspace, project_adapter, run_merge  # many adapters

Each module holds one comparison: `sweeps` (ls), `pairs` (two runs), `spectra`, `trajectories`,
`w_and_delta` (ΔW against the base's W), `maps`, `subspaces` and `merges` (many adapters, over the
shared inputs of `many` and `inputs`). The names load on first use, so that `lorascope ls` and
`--help` never import torch.
"""

from importlib import import_module

# name -> the module of lorascope.compare that defines it
_HOMES = {
    "sweep_table": "sweeps",
    "HeatmapPage": "pairs",
    "PairSimilarity": "pairs",
    "gaussian_floor": "pairs",
    "heatmap_pages": "pairs",
    "run_similarity": "pairs",
    "spectrum_frames": "spectra",
    "with_top_sigmas": "spectra",
    "run_trajectory": "trajectories",
    "AMPLIFICATION_COLUMNS": "w_and_delta",
    "amplification_table": "w_and_delta",
    "intruder_tables": "w_and_delta",
    "w_delta_frame": "w_and_delta",
    "AdapterMap": "maps",
    "adapter_map": "maps",
    "SubspaceReport": "subspaces",
    "load_shared_basis": "subspaces",
    "project_adapter": "subspaces",
    "run_subspace": "subspaces",
    "MergeReport": "merges",
    "merge_summary": "merges",
    "run_merge": "merges",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"lorascope.compare.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'lorascope.compare' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
