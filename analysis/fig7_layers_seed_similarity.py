"""LoRA paper Figure 7: Figure 4 (two seeds at one rank) across layers.

    python analysis/fig7_layers_seed_similarity.py runs/minilm-bbc [--out DIR] [--format png,pdf] [--layer L]

Writes into SWEEP/figures by default; `lorascope figures SWEEP` runs every recipe at once.
"""

import sys

from lorascope.paper.recipes import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("fig7"))
