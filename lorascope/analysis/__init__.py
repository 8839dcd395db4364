"""Analysis of LoRA subspaces: factored SVDs, subspace similarity φ, amplification, spectra.

Every analysis of ΔW takes one module's update `d` as an object of the ΔW protocol
(`lorascope.delta`): a run's module, LoRA factors (`lorascope.delta.Adapter`) and a full fine-tuning
ΔW (`lorascope.delta.DenseDelta`) alike, e.g. `d = run.adapters[module]` or `Adapter(A, B, scaling)`.

    from lorascope import analysis as la
    la.spectrum(d)                       # Spectrum: σ(ΔW), energy / stable / effective rank
    la.amplification(W, d, k=None)       # Amplification: Table 7 (w_norm, dw_norm, proj_dw, ...)
    la.amplifications(W, {"r8": d8, "r64": d64})  # the same for several ΔW of one W, one pass over W
    la.w_delta_similarity(W, d)          # Fig. 8: φ(W's top-i, ΔW's top-j) on la.FIG8_SIDE
    la.intruder_dimensions(W, d)         # Intruders: Shuttleworth et al. 2024
    la.delta_similarity(d1, d2, "right") # φ grid of ΔW1's and ΔW2's singular vectors
    la.FACTORS["dW-right"].basis(d, k=8) # the table of factors: (basis, σ) of A, B, A − A0 or ΔW
    d.svd(k)                             # (U, S, V): from the factors for LoRA (la.delta_svd(A, B, s))
    la.truncated_svd(M, k, algorithm="auto")  # a dense matrix's top-k: lapack, arpack or krylov
    la.factor_basis(A, side="right")     # A (r, in) -> V (in, r), columns by descending σ
    la.phi_grid(U1, U2)                  # φ[i-1, j-1] for every (i, j)
    la.subspace_similarity(A1, A2)       # φ grid of the right bases of A1, A2
    la.random_phi_baseline(r1, r2, n)    # max(i, j) / n

Pure functions: arrays or ΔW objects in, arrays / typed results / DataFrames out. Plots return
(fig, axes); only `lorascope.writers` (used by the CLI and recipes) touches the disk. Runs in,
DataFrames out (two runs compared module by module, a sweep listed) is `lorascope.compare`.
"""

from lorascope.analysis.amplification import (
    FIG8_SIDE,
    Amplification,
    amplification,
    amplifications,
    w_delta_similarity,
    weight_svd,
)
from lorascope.analysis.factors import FACTORS, Factor, get_factor
from lorascope.analysis.intruders import Intruders, intruder_dimensions
from lorascope.analysis.linalg import delta_svd, factor_basis, factor_svd, random_orthonormal
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
from lorascope.analysis.spectrum import Spectrum, spectrum, spectrum_metrics
from lorascope.delta import Delta, truncated_svd
from lorascope.names import layer_index, match_modules, parse_layers, select_modules, short_name

__all__ = [
    "FACTORS",
    "FIG8_SIDE",
    "Amplification",
    "Delta",
    "Factor",
    "Intruders",
    "Spectrum",
    "amplification",
    "amplifications",
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
    "truncated_svd",
    "w_delta_similarity",
    "weight_svd",
]
