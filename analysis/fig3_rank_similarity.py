"""LoRA paper Figure 3: φ(A_{r=8}, A_{r=64}, i, j) at the middle layer, with the zoomed lower-left triangle.

    python analysis/fig3_rank_similarity.py runs/minilm-bbc [--out DIR] [--format png,pdf] [--layer L]

Writes into SWEEP/figures by default; `lorascope figures SWEEP` runs every recipe at once.
"""

import sys

from lorascope.paper.recipes import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("fig3"))
