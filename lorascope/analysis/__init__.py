"""Analysis of LoRA subspaces: factored SVDs, subspace similarity φ, amplification, spectra.

    from lorascope import analysis as la
    la.factor_basis(A, side="right")     # A (r, in) -> V (in, r), columns by descending σ
    la.delta_svd(A, B, scaling)          # (U, S, V) of s·B A without forming it
    la.phi_grid(U1, U2)                  # φ[i-1, j-1] for every (i, j)
    la.subspace_similarity(A1, A2)       # φ grid of the right bases of A1, A2
    la.random_phi_baseline(r1, r2, n)    # max(i, j) / n
    la.amplification(W, A, B, scaling)   # Table 7
    la.spectrum(A, B, scaling)           # σ(ΔW), energy / stable / effective rank
    la.intruder_dimensions(W, delta)     # Shuttleworth et al. 2024

Pure functions: arrays in, arrays / dicts / DataFrames out. Plots return (fig, axes);
only `lorascope.writers` (used by the CLI and recipes) touches the disk. Runs in, DataFrames out
(two runs compared module by module, a sweep listed) is `lorascope.compare`.
"""

from lorascope.analysis.amplification import FIG8_SIDE, amplification, w_delta_similarity, weight_svd
from lorascope.analysis.factors import FACTORS, Factor, get_factor
from lorascope.analysis.intruders import intruder_dimensions
from lorascope.analysis.linalg import delta_svd, factor_basis, factor_svd, random_orthonormal
from lorascope.analysis.modules import layer_index, match_modules, parse_layers, select_modules, short_name
from lorascope.analysis.similarity import (
    b_similarity,
    delta_similarity,
    factor_phi,
    gaussian_phi_baseline,
    gaussian_phi_samples,
    grid_frame,
    learned_a_similarity,
    long_grid,
    phi_grid,
    random_phi_baseline,
    subspace_similarity,
)
from lorascope.analysis.spectrum import spectrum, spectrum_metrics

__all__ = [
    "FACTORS",
    "FIG8_SIDE",
    "Factor",
    "amplification",
    "b_similarity",
    "delta_similarity",
    "delta_svd",
    "factor_basis",
    "factor_phi",
    "factor_svd",
    "get_factor",
    "gaussian_phi_baseline",
    "gaussian_phi_samples",
    "grid_frame",
    "intruder_dimensions",
    "layer_index",
    "learned_a_similarity",
    "long_grid",
    "match_modules",
    "parse_layers",
    "phi_grid",
    "random_orthonormal",
    "random_phi_baseline",
    "select_modules",
    "short_name",
    "spectrum",
    "spectrum_metrics",
    "subspace_similarity",
    "w_delta_similarity",
    "weight_svd",
]
