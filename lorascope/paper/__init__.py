"""The LoRA paper's Section 7 figures and tables, computed on a sweep with `lorascope.analysis`.

    from lorascope.paper import make_figures
    written, skipped = make_figures("runs/minilm-bbc")      # every figure, table and findings.md

Each script in the repository's analysis/ folder runs one recipe on its own
(`python analysis/fig3_rank_similarity.py runs/minilm-bbc`); `lorascope figures SWEEP` runs them all.
This module stays light (no matplotlib import) so that the CLI can describe the recipes quickly.
"""

# The factors every similarity figure is drawn for: the paper's A, the learned part A − A0
# (after short training A can still be mostly its random init) and ΔW's input side.
FACTORS = ("A", "dA", "dW-right")

DESCRIPTIONS = {
    "fig3": "Fig. 3: φ between a small and a large rank at one layer, with the zoomed lower-left triangle",
    "fig4": "Fig. 4: φ between two seeds at one rank, beside two random Gaussian matrices",
    "fig6": "Fig. 6: Fig. 3 across layers",
    "fig7": "Fig. 7: Fig. 4 across layers",
    "fig8": "Fig. 8: φ between W's and ΔW's top singular directions, per rank and for a random matrix",
    "table7": "Table 7: ‖UᵀWV‖_F for U, V from ΔW / W / random, and the amplification ‖ΔW‖_F / ‖UᵀWV‖_F",
    "ranks": "the rank table: held-out metric, parameters and cost per run",
    "findings": "findings.md: whether each of the paper's findings holds on this sweep, with numbers",
}


def __getattr__(name):
    if name in ("make_figures", "recipe_main", "default_out"):
        from lorascope.paper import recipes

        return getattr(recipes, name)
    raise AttributeError(f"module 'lorascope.paper' has no attribute {name!r}")
