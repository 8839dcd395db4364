"""The names the options offer (--factor, --method), for the parsers, without importing the analysis.

The analysis modules that define these (`analysis.factors.FACTORS`, `analysis.adapter_map.MAP_FACTORS`,
`analysis.merging.METHODS` and `DEFAULT_DENSITY`) import torch; the parsers must not, so that
`--help` is instant. tests/cli/test_startup.py checks that each name here is the analysis' own,
so a factor or a merge method added there fails that test until it is offered here too.
"""

# analysis.factors.FACTORS: name -> its one line for the CLI (Factor.help)
SIMILARITY_FACTORS = {
    "A": "right singular vectors of A, the paper's U_A",
    "B": "left singular vectors of B",
    "dA": "right singular vectors of A - A0 (needs adapter_init)",
    "dW-right": "right (input-side) singular vectors of dW = s B A",
    "dW-left": "left (output-side) singular vectors of dW = s B A",
}

# analysis.adapter_map.MAP_FACTORS
MAP_FACTORS = ("dW-right", "dW-left", "A", "B")

# analysis.merging.METHODS and DEFAULT_DENSITY
MERGE_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune", "svd")
MERGE_DENSITY = 0.2
