"""`lorascope subspace RUN... | SWEEP`: the directions N adapters share, against N random adapters.

<out>/energy_curve.<fmt>               energy in the top-m shared directions against m (+ its CSV)
<out>/layers.<fmt>                     the same per layer (+ its CSV)
<out>/subspace.{csv,md,tex}            per module: energy, floor, knee, shared dimensions
<out>/coverage.{csv,md,tex}            each adapter's coverage by the shared directions
<out>/coverage_modules.csv             the same per module
<out>/shared_basis.safetensors         the shared basis, for --basis FILE --project NEW
<out>/projection.{csv,md,tex}          with --project: the new adapter's coverage
"""

from __future__ import annotations

from pathlib import Path

from lorascope.cli import inputs, options
from lorascope.cli.output import Written, beside, formats, many_out, print_table, progress
from lorascope.errors import LorascopeError


def add_subspace(sub) -> None:
    p = sub.add_parser(
        "subspace",
        help="the directions N adapters share, against N random adapters",
        description=(
            "Per module, the top eigenvectors of the sum of the adapters' ΔW projectors on one side "
            "(each adapter's orthonormal top-k basis from the factored SVD, weighted 1/k or σ²/Σσ², so "
            "every adapter brings one unit of energy; no ΔW is formed): the share of the energy the top-m "
            "shared directions hold for every m, the same curve for N independent random adapters of the "
            "same sizes (Monte Carlo floor with its band), each adapter's coverage by the shared "
            "directions (outliers flagged), per-layer figures and tables, and the shared basis as "
            "safetensors. --project NEW_ADAPTER measures how much of a new adapter lies inside it (floor "
            "m/n, exact); --basis FILE --project NEW reuses a saved basis."
        ),
    )
    p.add_argument(
        "sources", metavar="RUN_OR_PEFT", type=Path, nargs="*", help="run or PEFT folders, or one sweep"
    )
    p.add_argument("--side", default="right", help="right (ΔW's input space, default) or left (output)")
    p.add_argument("--k", type=int, help="directions per adapter (default: all of its rank)")
    p.add_argument("--weighted", action="store_true", help="weight each direction by σ²/Σσ² (default 1/k)")
    p.add_argument("--m", type=int, help="shared directions the tables read (default: the largest k)")
    p.add_argument(
        "--keep", type=int, help="shared directions saved and used for coverage (default: 4 × the largest k)"
    )
    p.add_argument("--trials", type=int, default=16, help="Monte Carlo trials of the floor (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the floor's random adapters (default 0)")
    p.add_argument("--project", metavar="NEW_ADAPTER", type=Path, help="a run or PEFT folder to project")
    p.add_argument("--basis", metavar="FILE", type=Path, help="a shared_basis.safetensors to project onto")
    options.add_outputs(p, "<sweep>/analysis/subspace_<side>")
    p.set_defaults(func=cmd_subspace)


def cmd_subspace(args) -> int:
    from lorascope.compare import run_subspace

    figure_formats = formats(args)
    if args.basis is not None:  # reuse a saved basis: project a new adapter onto it, nothing else
        return _project_on_saved(args)
    if not args.sources:
        raise LorascopeError(
            "give the adapters (run or PEFT folders, or one sweep), or --basis FILE --project NEW"
        )
    inputs.check_sources(args.sources, args)
    rep = run_subspace(
        args.sources, side=args.side, k=args.k, weighted=args.weighted, m=args.m, keep=args.keep,
        trials=args.trials, seed=args.seed, modules=args.modules, layers=args.layers, progress=progress(),
    )  # fmt: skip
    N, weighting = len(rep.names), "σ²-weighted" if rep.weighted else "unweighted"
    print_table(
        rep.kind_summary(),
        f"shared subspace of {N} adapters, {rep.side} side ({weighting}), {len(rep.modules)} modules, median "
        "over layers: energy = share of the adapters' energy in the top-m shared directions; floor / "
        f"floor_hi = the same for {N} independent random adapters (Monte Carlo mean / mean + 3 sd, "
        f"{rep.meta['trials']} trials); knee = the first m with 95% of the largest excess of energy over "
        "the floor; shared_dims = leading eigenvalues above the floor's band",
    )
    coverage = rep.coverage()
    shown = coverage if N <= 15 else coverage.sort_values("coverage").head(10)
    print_table(
        shown,
        "coverage of each adapter by the top-m shared directions, mean over modules"
        + ("" if N <= 15 else " (the 10 lowest)")
        + f"; outlier: closer to the floor than to the median; {int(coverage.outlier.sum())} outlier(s)",
    )
    if rep.skipped:
        print(f"note: {len(rep.skipped)} module(s) not shared by all adapters were skipped")
    written = Written(many_out(args, f"subspace_{rep.side}"), figure_formats)
    write_subspace(written, rep, coverage)
    if args.project is not None:
        from lorascope.compare import project_adapter

        projection = project_adapter(args.project, rep, k=args.k, modules=args.modules, layers=args.layers)
        _print_projection(projection, Path(args.project).name, "the shared basis")
        written.table(projection, "projection")
    written.report()
    return 0


def write_subspace(written: Written, rep, coverage) -> None:
    from lorascope.analysis.many_plots import plot_energy_curves, plot_layer_profile

    N, weighting = len(rep.names), "σ²-weighted" if rep.weighted else "unweighted"
    table, curve = rep.table(), rep.curve()
    title = f"{N} adapters, {rep.side} side ({weighting}): energy in the top-m shared directions"
    fig, _ = plot_energy_curves(curve, table, title=title)
    written.figure(fig, "energy_curve", curve)
    fig, _ = plot_layer_profile(table, title=f"{N} adapters, {rep.side} side: per layer")
    written.figure(fig, "layers", table.reset_index())
    written.table(table, "subspace")
    written.table(coverage, "coverage")
    written.csv(rep.coverage_long(), "coverage_modules.csv", index=False)
    written.file(rep.save_basis(written.folder / "shared_basis.safetensors"))


def _project_on_saved(args) -> int:
    """--basis FILE --project NEW: a new adapter's coverage by a shared basis saved before."""
    from lorascope.compare import project_adapter

    if args.sources or args.project is None:
        raise LorascopeError(
            "--basis FILE reads a saved shared basis: give --project NEW_ADAPTER, no adapters"
        )
    table = project_adapter(args.project, args.basis, k=args.k, modules=args.modules, layers=args.layers)
    _print_projection(table, Path(args.project).name, args.basis.name)
    written = Written(args.out or beside(Path(args.project), f"projection_{Path(args.project).name}"))
    written.table(table, "projection")
    written.report()
    return 0


def _print_projection(table, name: str, basis: str) -> None:
    print_table(
        table,
        f"{name} projected on {basis}: coverage = its share inside the top-m (and all `keep`) shared "
        "directions; floor = m/n, exact for an adapter independent of the basis",
    )
    print(f"mean coverage {table.coverage.mean():.3g} against the floor {table.floor.mean():.3g}")
