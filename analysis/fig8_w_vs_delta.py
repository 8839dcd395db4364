"""LoRA paper Figure 8: φ between W's top singular directions and ΔW's, per rank and for a random matrix.

    python analysis/fig8_w_vs_delta.py runs/minilm-bbc [--out DIR] [--format png,pdf] [--layer L]

Writes into SWEEP/figures by default; `lorascope figures SWEEP` runs every recipe at once.
"""

import sys

from lorascope.paper.recipes import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("fig8"))
