"""`lorascope dora RUN`: the DoRA paper's magnitude and direction changes per module and step (its Fig. 2).

    <out>/dora.{csv,md,tex}          delta_m, delta_d per (step, module)
    <out>/dora_scatter.<fmt>         ΔD against ΔM, coloured by step (+ its CSV)

Any run (DoRA, LoRA, PiSSA-style, full fine-tuning) or PEFT folder; W from the base checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from lorascope.cli import inputs, options
from lorascope.cli.output import Written, formats, out_dir, print_table


def add_dora(sub) -> None:
    p = sub.add_parser(
        "dora",
        help="the DoRA paper's magnitude and direction changes dM, dD per module and step (its Fig. 2)",
        description=(
            "Per module and snapshot step: dM = mean |‖W'_n‖ − ‖W_n‖| and dD = mean (1 − cos(W'_n, W_n)) "
            "over output units n, W' = W + dW, and their correlation; a table and a scatter figure. Any "
            "run (DoRA, LoRA, PiSSA, full fine-tuning); W from the base checkpoint (offline)."
        ),
    )
    p.add_argument("run", metavar="RUN", type=Path, help="run folder or PEFT adapter folder")
    options.add_outputs(p, "<sweep>/analysis/<RUN>")
    p.set_defaults(func=cmd_dora)


def cmd_dora(args) -> int:
    from lorascope.families.direction import correlation
    from lorascope.families.dora_analysis import dora_frame, plot_dora

    figure_formats = formats(args)
    run = inputs.load(args.run, args)
    frame = dora_frame(run, args.modules, inputs.layers(args, run.adapters))
    r = correlation(frame["delta_m"], frame["delta_d"])
    table = frame.set_index(["step", "module"])
    print_table(
        table,
        f"dora {run.name}: delta_m = mean |‖W'_n‖ − ‖W_n‖|, delta_d = mean (1 − cos(W'_n, W_n)) over output "
        f"units n; correlation(delta_m, delta_d) over modules and steps = {r:.3f}",
    )
    written = Written(out_dir(args, run.path, run.name), figure_formats)
    written.table(table, "dora")
    written.figure(plot_dora(frame, run.name), "dora_scatter", frame)
    written.report()
    return 0
