"""The comparison layer: runs in, DataFrames out.

Between `lorascope.analysis` (pure arrays in, arrays out) and the CLI and figure recipes: each
function here takes loaded runs (or run folders), picks the modules and matrices, calls the
analysis, and returns tidy DataFrames that the CLI prints and writes.

    from lorascope.compare import run_similarity, heatmap_pages, spectrum_frames, sweep_table
    from lorascope.compare import run_subspace, project_adapter, run_merge     # many adapters at once
"""

from lorascope.compare.merges import MergeReport, merge_summary, run_merge
from lorascope.compare.pairs import HeatmapPage, PairSimilarity, gaussian_floor, heatmap_pages, run_similarity
from lorascope.compare.spectra import spectrum_frames, with_top_sigmas
from lorascope.compare.subspaces import SubspaceReport, load_shared_basis, project_adapter, run_subspace
from lorascope.compare.sweeps import sweep_table

__all__ = [
    "HeatmapPage",
    "MergeReport",
    "PairSimilarity",
    "SubspaceReport",
    "gaussian_floor",
    "heatmap_pages",
    "load_shared_basis",
    "merge_summary",
    "project_adapter",
    "run_merge",
    "run_similarity",
    "run_subspace",
    "spectrum_frames",
    "sweep_table",
    "with_top_sigmas",
]
