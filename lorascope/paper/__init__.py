"""The LoRA paper's Section 7 figures and tables, computed on a sweep with `lorascope.analysis`.

    from lorascope.paper import make_figures
    written, skipped = make_figures("runs/minilm-bbc")      # every figure, table and findings.md

`lorascope figures SWEEP` runs them all; `lorascope figures SWEEP --only fig3,table7` runs some on
their own (the names are those of DESCRIPTIONS, which `lorascope figures --help` lists).
The recipes load on first use, so that the CLI can describe them (`lorascope.paper.catalog`) quickly.
"""

from lorascope.paper.catalog import DESCRIPTIONS, FIGURE_FACTORS

__all__ = ["DESCRIPTIONS", "FIGURE_FACTORS", "default_out", "make_figures"]


def __getattr__(name):
    if name in ("make_figures", "default_out"):
        from lorascope.paper import recipes

        return getattr(recipes, name)
    raise AttributeError(f"module 'lorascope.paper' has no attribute {name!r}")
