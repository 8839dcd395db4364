"""`lorascope similarity RUN_A RUN_B`: φ between the subspaces of two runs, module by module (Fig. 3/4).

<out>/phi_<factor>.csv                 every φ(i, j), long format
<out>/phi_<factor>_summary.csv         φ(1,1), the diagonal's mean and the random floor per module
<out>/phi_<factor>_heatmap[-N].<fmt>   heatmaps, `--per-page` modules a figure (+ their CSV)
"""

from __future__ import annotations

from pathlib import Path

from lorascope.cli import inputs, options
from lorascope.cli.choices import SIMILARITY_FACTORS
from lorascope.cli.output import Written, formats, out_dir, print_table, progress


def add_similarity(sub) -> None:
    p = sub.add_parser(
        "similarity",
        help="subspace similarity phi between two runs (paper Fig. 3/4)",
        description=(
            "Normalized subspace similarity phi(i, j) = ||U_a[:, :i]^T U_b[:, :j]||_F^2 / min(i, j) between "
            "the singular bases of two runs, per module (matched by name). Prints phi(1,1), the mean of the "
            "diagonal and the random floor max(i,j)/n, and writes heatmaps plus a CSV of every phi value."
        ),
    )
    p.add_argument("run_a", metavar="RUN_A", type=Path, help="first run folder (rows i)")
    p.add_argument("run_b", metavar="RUN_B", type=Path, help="second run folder (columns j)")
    p.add_argument(
        "--factor",
        default="A",
        choices=list(SIMILARITY_FACTORS),
        help="the bases to compare (default A): "
        + "; ".join(f"{name}: {what}" for name, what in SIMILARITY_FACTORS.items()),
    )
    options.add_allow_other_base(p)
    options.add_outputs(p, "<sweep of RUN_A>/analysis/<RUN_A>_vs_<RUN_B>")
    p.add_argument("--per-page", type=int, default=12, help="modules per heatmap figure (default 12)")
    p.set_defaults(func=cmd_similarity)


def cmd_similarity(args) -> int:
    from lorascope.compare import heatmap_pages, run_similarity
    from lorascope.compare.inputs import SameBase, aligned
    from lorascope.names import shared_modules

    figure_formats = formats(args)
    run_a, run_b = inputs.load(args.run_a, args), inputs.load(args.run_b, args)
    run_b = aligned(run_b, list(run_a.adapters), run_a.base_model)  # one model's old and new names
    # φ between adapters of two bases compares unrelated spaces: refused, as by compare, unless asked
    same_base = SameBase(allow_other=args.allow_other_base)
    for run in (run_a, run_b):
        same_base.add(run, str(run.path))
    inputs.other_bases(same_base.others)
    layers = inputs.layers(args, shared_modules([run_a.adapters, run_b.adapters]))
    pair = run_similarity(run_a, run_b, args.factor, args.modules, layers, progress=progress())
    pages = heatmap_pages(pair, args.per_page)
    for which, run, names in (("first", run_a, pair.only_a), ("second", run_b, pair.only_b)):
        if names:
            print(f"note: {len(names)} module(s) only in the {which} run {run.name} were skipped")
    summary = pair.summary()
    print_table(
        summary,
        f"phi({args.factor}) {run_a.name} vs {run_b.name}: phi_11 = phi(1,1), phi_diag_mean = mean "
        "phi(k,k) for k <= min(r_a, r_b), random_floor = the same mean for random subspaces of R^n",
    )
    written = Written(out_dir(args, run_a.path, f"{run_a.name}_vs_{run_b.name}"), figure_formats)
    write_similarity(written, pair, summary, pages, args.factor, run_a, run_b)
    written.report()
    return 0


def write_similarity(written: Written, pair, summary, pages, factor: str, run_a, run_b) -> None:
    from lorascope.analysis.factors import get_factor
    from lorascope.analysis.plots import plot_phi

    stem = f"phi_{factor}"
    written.csv(pair.long(), f"{stem}.csv", index=False)
    written.csv(summary, f"{stem}_summary.csv")
    title = f"$\\phi$ of {get_factor(factor).tex}: {inputs.label(run_a)} vs {inputs.label(run_b)}"
    for number, page in enumerate(pages, 1):
        fig, _ = plot_phi(
            page.grids, row_label=f"i ({run_a.name})", col_label=f"j ({run_b.name})", suptitle=title
        )
        written.figure(fig, f"{stem}_heatmap" + (f"-{number}" if len(pages) > 1 else ""), page.data)
