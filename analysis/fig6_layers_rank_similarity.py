"""LoRA paper Figure 6: Figure 3 (a small against a large rank) across layers.

    python analysis/fig6_layers_rank_similarity.py runs/minilm-bbc [--out DIR] [--format png,pdf] [--layer L]

Writes into SWEEP/figures by default; `lorascope figures SWEEP` runs every recipe at once.
"""

import sys

from lorascope.paper.recipes import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("fig6"))
