"""`lorascope amplification RUN` and `lorascope intruders RUN`: ΔW against the base model's W.

    <out>/amplification.{csv,md,tex}       ‖UᵀWV‖_F for ΔW's, W's and random top-k; amplification (Table 7)
    <out>/intruders.{csv,md,tex}           intruder dimensions of W + ΔW per module
    <out>/intruders_eps.<fmt>              their count against ε (+ its CSV)

W is read one module at a time from the run's base checkpoint (`lorascope.base_model`).
"""

from __future__ import annotations

from pathlib import Path

from lorascope.cli import inputs, options
from lorascope.cli.output import Written, formats, out_dir, print_table, progress

W_OUT = "<sweep>/analysis/<RUN>"


def add_amplification(sub) -> None:
    p = sub.add_parser(
        "amplification",
        help="how dW amplifies directions of W (paper Table 7)",
        description=(
            "Per module: ||W||_F, ||dW||_F, ||U^T W V||_F for U, V the top-k singular vectors of dW, of W "
            "itself and random, and amplification = ||dW||_F / ||U^T W V||_F. Reads each W alone from the "
            "run's base checkpoint (offline), and W's top-k singular vectors from the on-disk cache (a "
            "truncated SVD the first time)."
        ),
    )
    p.add_argument("run", metavar="RUN", type=Path, help="run folder")
    p.add_argument("--k", type=int, default=None, help="number of singular directions (default: the rank)")
    p.add_argument(
        "--energy-share",
        action="store_true",
        help="also the shares of dW's energy in W's top-r and bottom-r singular subspaces (PiSSA / MiLoRA's "
        "measure; needs W's whole decomposition, cached) and their figure",
    )
    options.add_filters(p)
    options.add_device(p)
    options.add_base(p)
    options.add_allow_incomplete(p)
    options.add_out(p, W_OUT)
    p.set_defaults(func=cmd_amplification)


def cmd_amplification(args) -> int:
    from lorascope.analysis.amplification import ENERGY_COLUMNS
    from lorascope.compare import AMPLIFICATION_COLUMNS, amplification_table

    run = inputs.load(args.run, args)
    columns = AMPLIFICATION_COLUMNS + (ENERGY_COLUMNS if args.energy_share else [])
    table = amplification_table(
        run, k=args.k, modules=args.modules, layers=inputs.layers(args, run.adapters), device=args.device,
        progress=progress(), base=args.base, energy=args.energy_share,
    ).set_index("module")[columns]  # fmt: skip
    print_table(
        table,
        f"amplification {run.name}: proj_* = ||U^T W V||_F with U, V the top-k singular "
        "vectors of dW, of W, or random; amplification = dw_norm / proj_dw",
    )
    inputs.quantized_note(run, args.base)
    written = Written(out_dir(args, run.path, run.name), ["png"])  # the energy figure, when asked
    written.table(table, "amplification")
    if args.energy_share:
        from lorascope.analysis.energy_plot import plot_energy_share

        fig = plot_energy_share(table, f"{run.name}: dW's energy in W's top-r / bottom-r singular subspaces")
        written.figure(fig, "energy_share", table[ENERGY_COLUMNS].reset_index())
    written.report()
    return 0


def add_intruders(sub) -> None:
    p = sub.add_parser(
        "intruders",
        help="intruder dimensions of W + dW (Shuttleworth et al. 2024)",
        description=(
            "Per module: how many of the top-k left singular vectors of W + dW have a largest |cos| below "
            "eps with every left singular vector of W (new directions, not reweighted ones), and the count "
            "against eps in [0.1, 0.9]. W is read alone from the base checkpoint; its full left basis is "
            "computed once and cached; the top-k of W + dW come from a matrix-free truncated SVD."
        ),
    )
    p.add_argument("run", metavar="RUN", type=Path, help="run or PEFT folder")
    p.add_argument("--k", type=int, default=10, help="top singular vectors of W + dW examined (default 10)")
    p.add_argument("--eps", type=float, default=0.5, help="|cos| below which a direction intrudes (0.5)")
    options.add_base(p)
    options.add_outputs(p, W_OUT, device=True)
    p.set_defaults(func=cmd_intruders)


def cmd_intruders(args) -> int:
    from lorascope.analysis.intruder_plot import plot_intruder_curve
    from lorascope.compare import intruder_tables

    figure_formats = formats(args)
    run = inputs.load(args.run, args)
    table, curve = intruder_tables(
        run, k=args.k, eps=args.eps, modules=args.modules, layers=inputs.layers(args, run.adapters),
        device=args.device, progress=progress(), base=args.base,
    )  # fmt: skip
    table = table.drop(columns="run").set_index("module")
    print_table(
        table,
        f"intruder dimensions of {run.name}: among the top-{args.k} left singular vectors of W + dW, those "
        f"whose largest |cos| with every left singular vector of W is below eps = {args.eps}",
    )
    inputs.quantized_note(run, args.base)
    written = Written(out_dir(args, run.path, run.name), figure_formats)
    written.table(table, "intruders")
    fig, _ = plot_intruder_curve(curve, k=args.k, eps=args.eps, title=f"{run.name}: intruder dimensions")
    written.figure(fig, "intruders_eps", curve)
    written.report()
    return 0
