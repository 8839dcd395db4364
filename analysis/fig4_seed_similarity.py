"""LoRA paper Figure 4: φ between two seeds at r = 64, beside two random Gaussian matrices of the same shape.

    python analysis/fig4_seed_similarity.py runs/minilm-bbc [--out DIR] [--format png,pdf] [--layer L]

Writes into SWEEP/figures by default; `lorascope figures SWEEP` runs every recipe at once.
"""

import sys

from lorascope.paper.recipes import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("fig4"))
