"""findings.md: whether each Section 7 finding of the LoRA paper holds on a sweep, with the numbers.

    python analysis/findings.py runs/minilm-bbc [--out DIR] [--format png,pdf] [--layer L]

Writes into SWEEP/figures by default; `lorascope figures SWEEP` runs every recipe at once.
"""

import sys

from lorascope.paper.recipes import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("findings"))
