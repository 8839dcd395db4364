"""`lorascope compare RUN... | SWEEP`: the N x N map of how alike many adapters are, with a dendrogram.

<out>/map_<factor>.<fmt>               the clustered heatmap (+ its CSV, in the dendrogram's order)
<out>/map_<factor>_matrix.csv          the N x N matrix, run names as index and columns
<out>/map_<factor>_by_kind.csv         the same per kind of module
<out>/map_<factor>_nearest.csv         each adapter's nearest neighbour
"""

from __future__ import annotations

from pathlib import Path

from lorascope.cli import inputs, options
from lorascope.cli.choices import MAP_FACTORS
from lorascope.cli.output import Written, formats, many_out, print_table, progress


def add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="N x N map of how alike many adapters are, with a dendrogram",
        description=(
            "For adapters on one base (runs and PEFT folders mixed, or one sweep folder): per shared module "
            "the mean of phi(t, t) over t <= k of the chosen bases (from dW's subspaces by default, so "
            "B -> BR, A -> R^-1 A changes nothing), averaged over modules. Writes a clustered heatmap with "
            "its dendrogram and the random floor, the matrix as CSV (run names as index and columns), "
            "the per-kind breakdown and each adapter's nearest neighbour."
        ),
    )
    p.add_argument(
        "sources", metavar="RUN_OR_PEFT", type=Path, nargs="+", help="run or PEFT folders, or a sweep"
    )
    p.add_argument("--factor", default="dW-right", choices=list(MAP_FACTORS), help="bases (default dW-right)")
    p.add_argument("--k", type=int, default=8, help="top directions per module (default 8)")
    p.add_argument(
        "--normalize",
        action="store_true",
        help="score each module as (score - floor) / (1 - floor), its own random floor, before averaging",
    )
    p.add_argument(
        "--weight",
        choices=("uniform", "energy"),
        default="uniform",
        help="module weights in the average: uniform (default) or energy (|dW_a| |dW_b| over the top-k)",
    )
    p.add_argument(
        "--signed",
        action="store_true",
        help="the signed, sigma-weighted cosine of dW_a and dW_b (from the factors) instead of phi",
    )
    options.add_allow_other_base(p)
    options.add_outputs(p, "<sweep>/analysis/compare_<factor>")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from lorascope.compare import adapter_map

    figure_formats = formats(args)
    inputs.check_sources(args.sources, args)
    amap = adapter_map(
        args.sources, factor=args.factor, k=args.k, modules=args.modules, layers=args.layers,
        progress=progress(), allow_other_base=args.allow_other_base, normalize=args.normalize,
        weight=args.weight, signed=args.signed,
    )  # fmt: skip
    inputs.other_bases(amap.other_bases)
    lo, hi = amap.floor_range()
    floor = f"{lo:.3g}" if lo == hi else f"{lo:.3g}-{hi:.3g}"
    title = (
        f"similarity of {len(amap.names)} adapters: {_what(amap, 'phi', '<=')}, {amap.weight} average over "
        f"{len(amap.modules)} shared modules; random floor {floor}"
    )
    print_table(amap.similarity if len(amap.names) <= 15 else amap.nearest(), title)
    if amap.skipped:
        print(f"note: {len(amap.skipped)} module(s) not shared by all adapters were skipped")
    for name, why in amap.left_out.items():
        print(f"run {name}: skipped: {why}")
    written = Written(many_out(args, f"compare_{amap.factor}"), figure_formats)
    write_map(written, amap)
    written.report()
    return 0


def write_map(written: Written, amap) -> None:
    from lorascope.analysis.map_plot import plot_adapter_map

    order = amap.order()
    n, m = len(amap.names), len(amap.modules)
    short = f"{n} adapters: {_what(amap, 'φ', '≤')}, {m} modules"
    fig, _ = plot_adapter_map(amap.similarity, floor=amap.floor, linkage=amap.linkage(), title=short)
    stem = f"map_{amap.factor}"
    written.figure(fig, stem, amap.similarity.loc[order, order].reset_index())
    written.csv(amap.similarity, f"{stem}_matrix.csv")
    written.csv(amap.by_kind, f"{stem}_by_kind.csv", index=False)
    written.csv(amap.nearest(), f"{stem}_nearest.csv")


def _what(amap, phi: str, le: str) -> str:
    """What the map's score is, for its printed title and its figure."""
    what = (
        "cos(dW_a, dW_b)" if amap.score == "cosine" else f"mean {phi}(t,t), t {le} {amap.k}, of {amap.factor}"
    )
    return what + (", (s - floor)/(1 - floor) per module" if amap.normalized else "")
