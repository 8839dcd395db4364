"""`lorascope ...`: one question per command, answered from run folders.

    lorascope ls SWEEP                      what a sweep holds
    lorascope similarity RUN_A RUN_B        φ heatmaps between two adapters (paper Fig. 3/4)
    lorascope amplification RUN             ‖UᵀWV‖_F and amplification (paper Table 7)
    lorascope intruders RUN                 intruder dimensions of W + ΔW (Shuttleworth et al. 2024)
    lorascope spectrum RUN                  singular values of ΔW and effective ranks
    lorascope trajectory RUN                how ΔW formed during training, from snapshots
    lorascope compare RUN... | SWEEP        N x N map of how alike many adapters are
    lorascope subspace RUN... | SWEEP       the directions N adapters share, against random adapters
    lorascope merge RUN... --method M       merge adapters with PEFT's utilities; what each keeps
    lorascope figures SWEEP                 every figure and table of the paper's Section 7
    lorascope export RUN OUT_DIR            write a run as a PEFT adapter folder
    lorascope report SWEEP                  the sweep's runs, figures, tables and findings in one HTML page
    lorascope dora RUN                      DoRA's magnitude and direction changes per module (its Fig. 2)

Each command is parse → call → write, in the module of its group: `ls`, `pairs` (similarity),
`w_and_delta` (amplification, intruders), `spectra` (spectrum, trajectory), `maps` (compare),
`subspaces`, `merges`, `export`, `paper` (figures, report), `dora`. A module holds `add_<name>(sub)`, which
registers the parser with `set_defaults(func=cmd_<name>)`, and `cmd_<name>(args)`, which loads
through `inputs` (the one check of a run's status), calls `lorascope.compare` or the analysis,
prints with `output.print_table` and writes its files through one `output.Written`. Options
several commands share are declared once in `options`. To add a command: write those two
functions and append `add_<name>` to COMMANDS.

Nothing is imported at start-up beyond argparse and these modules: `lorascope --help`,
`lorascope <cmd> --help` and `lorascope ls` never import torch. A user mistake raises
LorascopeError, which `main` turns into one line `lorascope: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lorascope.cli.dora import add_dora
from lorascope.cli.export import add_export
from lorascope.cli.ls import add_ls
from lorascope.cli.maps import add_compare
from lorascope.cli.merges import add_merge
from lorascope.cli.options import check_args
from lorascope.cli.pairs import add_similarity
from lorascope.cli.paper import add_figures, add_report
from lorascope.cli.spectra import add_spectrum, add_trajectory
from lorascope.cli.subspaces import add_subspace
from lorascope.cli.w_and_delta import add_amplification, add_intruders
from lorascope.errors import LorascopeError, one_line

log = logging.getLogger("lorascope")

# In the order `lorascope --help` lists them.
COMMANDS = [
    add_ls, add_similarity, add_amplification, add_intruders, add_spectrum, add_trajectory,
    add_compare, add_figures, add_export, add_subspace, add_merge, add_report, add_dora,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorascope",
        description="Analyse LoRA adapters: list sweeps, compare subspaces, amplification, spectra.",
        epilog="Run 'lorascope COMMAND --help' for a command's options. Figures are written with the "
        "CSV of their numbers beside them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _headless() -> None:
    """The commands only write files: never open a window. Through the environment when matplotlib
    is not imported yet (so that `ls` never imports it), else by switching its backend."""
    if "matplotlib" in sys.modules:
        import matplotlib

        matplotlib.use("Agg")
    else:
        os.environ["MPLBACKEND"] = "Agg"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lorascope` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    # No analysis ever fetches anything: a hub id that is not cached is an error, not a download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    _headless()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        check_args(args)
        return args.func(args)
    except (LorascopeError, OSError) as e:
        # A user mistake or an unreadable path: one line, no traceback.
        print(f"lorascope: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lorascope: interrupted", file=sys.stderr)
        return 130
