"""`lorascope merge RUN... --method M`: merge adapters with PEFT's utilities, and what each keeps.

<out>/retention.{csv,md,tex}           per adapter: retention, φ, cosine, sign conflicts
<out>/merge_modules.{csv,md,tex}       per module
<out>/retention_modules.csv            per (module, adapter)
<out>/interference.<fmt>               interference of the adapters' singular bases (+ its CSV)
<out>/retention_plot.<fmt>             what the merge keeps of each adapter (+ its CSV)
<out>/adapter/                         with --save-adapter: the merge as a PEFT adapter
"""

from __future__ import annotations

from pathlib import Path

from lorascope.cli import inputs, options
from lorascope.cli.choices import MERGE_DENSITY, MERGE_METHODS
from lorascope.cli.output import Written, formats, many_out, print_table, progress


def add_merge(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="merge adapters with PEFT's utilities, and measure what each keeps",
        description=(
            "Merge N adapters module by module with PEFT's merge utilities (peft.utils.merge_utils: "
            "task arithmetic, TIES, DARE; 'svd' is add_weighted_adapter's SVD merge) on their dense ΔW, "
            "then measure per module and adapter the share of ΔW_i's energy the merged ΔW's top-k "
            "singular subspaces keep, φ of ΔW_i's top directions with the merged ones, the cosine, TIES' "
            "sign conflicts among the entries pruning keeps, and the Task-Singular-Vectors interference "
            "between adapters' bases, each with its random floor. --save-adapter writes the merge as a "
            "PEFT adapter (an SVD re-factorisation at --rank). Needs PEFT: pip install 'lorascope[merge]'."
        ),
    )
    p.add_argument(
        "sources", metavar="RUN_OR_PEFT", type=Path, nargs="+", help="run or PEFT folders, or one sweep"
    )
    p.add_argument("--method", required=True, help=f"one of {', '.join(MERGE_METHODS)}")
    p.add_argument(
        "--weights", metavar="LIST", help="one weight per adapter, e.g. 1,0.5,0.5 (default 1 each)"
    )
    p.add_argument(
        "--density",
        help=f"fraction of entries the pruning methods keep, in (0, 1] (default {MERGE_DENSITY})",
    )
    p.add_argument(
        "--rank",
        type=int,
        help="rank of the svd merge and of the saved adapter (default: the largest adapter rank; "
        "task_arithmetic: the sum of the ranks, exact)",
    )
    p.add_argument(
        "--k", type=int, help="top directions of the merged ΔW the measures use (default: Σ ranks)"
    )
    p.add_argument(
        "--majority-sign", default="total", help="TIES' sign election: total (default) or frequency"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of DARE's random pruning (default 0)")
    p.add_argument(
        "--save-adapter", action="store_true", help="write the merge as a PEFT adapter in OUT/adapter"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/adapter")
    options.add_outputs(p, "<sweep>/analysis/merge_<method>")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args) -> int:
    from lorascope.analysis.merging import merge_utils
    from lorascope.compare import merge_summary, run_merge

    merge_utils()  # PEFT first: without it, one line before anything is read
    figure_formats = formats(args)
    inputs.check_sources(args.sources, args)
    rep = run_merge(
        args.sources, args.method, weights=options.numbers(args.weights, "--weights"),
        density=options.number(args.density, "--density"), rank=args.rank, k=args.k,
        majority_sign_method=args.majority_sign, seed=args.seed, modules=args.modules, layers=args.layers,
        keep_factors=args.save_adapter, progress=progress(),
    )  # fmt: skip
    retention = rep.retention()
    density = f", density {rep.density:g}" if rep.density is not None else ""
    shown = [c for c in retention if c not in ("retention_left", "retention_right", "against_energy")]
    print_table(
        retention[shown],
        f"merge of {len(rep.names)} adapters by {rep.method}{density} (PEFT's merge_utils; "
        f"add_weighted_adapter's {rep.meta['peft_combination']!r}), mean over {len(rep.modules)} modules: "
        "retention = ‖U Uᵀ ΔW_i V Vᵀ‖²/‖ΔW_i‖² with U, V the merged ΔW's top-k; phi_* = φ of ΔW_i's "
        "top directions with the merged top-k; kept / against_sign = the entries pruning keeps / of "
        "those, against the elected sign",
    )
    s = merge_summary(rep)
    line = (
        f"interference ‖U_iᵀU_j‖²/min(k): output side {s['interference_left']:.3g} (floor "
        f"{s['interference_left_floor']:.3g}), input side {s['interference_right']:.3g} (floor "
        f"{s['interference_right_floor']:.3g})"
    )
    if "sign_conflict" in s:
        line += f"; sign conflict {s['sign_conflict']:.3g} (floor {s['sign_conflict_floor']:.3g})"
    print(line)
    if rep.skipped:
        print(f"note: {len(rep.skipped)} module(s) not shared by all adapters were skipped")
    written = Written(many_out(args, f"merge_{rep.method}"), figure_formats)
    write_merge(written, rep, retention, s)
    if args.save_adapter:
        folder = rep.save_adapter(written.folder / "adapter", overwrite=args.overwrite)
        written.file(folder / "adapter_model.safetensors")
        print(
            f"merged adapter (PEFT, r = {rep.rank}) in {folder}: PeftModel.from_pretrained(base, '{folder}')"
        )
    written.report()
    return 0


def write_merge(written: Written, rep, retention, summary: dict) -> None:
    from lorascope.analysis.many_plots import plot_interference, plot_retention

    written.table(retention, "retention")
    written.table(rep.modules, "merge_modules")
    written.csv(rep.adapters, "retention_modules.csv", index=False)
    floors = (summary["interference_left_floor"], summary["interference_right_floor"])
    title = f"{len(rep.names)} adapters: interference of their singular bases (TSV), mean over modules"
    fig, _ = plot_interference(rep.interference_frame("left"), rep.interference_frame("right"), floors,
                               title=title)  # fmt: skip
    written.figure(fig, "interference", rep.interference_long())
    fig, _ = plot_retention(retention, title=f"what {rep.method} keeps of each adapter")
    written.figure(fig, "retention_plot", retention.reset_index())
