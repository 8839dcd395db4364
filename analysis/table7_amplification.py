"""LoRA paper Table 7: ‖UᵀWV‖_F for U, V from ΔW, from W and random, ‖W‖_F, ‖ΔW‖_F and the amplification.

    python analysis/table7_amplification.py runs/minilm-bbc [--out DIR] [--format png,pdf] [--layer L]

Writes into SWEEP/figures by default; `lorascope figures SWEEP` runs every recipe at once.
"""

import sys

from lorascope.paper.recipes import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("table7"))
