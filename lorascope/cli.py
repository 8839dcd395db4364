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

To add a command: write `_add_<name>(sub)` that registers its parser with
`set_defaults(func=...)` and append it to COMMANDS. A user mistake raises LorascopeError,
which `main` turns into one line `lorascope: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lorascope.errors import LorascopeError, one_line

log = logging.getLogger("lorascope")


def _text(df) -> str:
    from lorascope.analysis.tables import to_text

    return to_text(df)


def _print_table(df, title: str | None = None) -> None:
    if title:
        print(title)
    print(_text(df))


def _write_csv(df, path: Path, index: bool = True) -> Path:
    """The full-precision numbers behind what was printed or drawn."""
    from lorascope.run_format import atomic_write_text

    atomic_write_text(path, df.to_csv(index=index, float_format="%.10g"))
    return path


def _progress() -> bool:
    return sys.stderr.isatty()


def _default_out(run_path: Path, name: str) -> Path:
    """<sweep>/analysis/<name>: beside the runs it describes (the sweep is the run's parent)."""
    return run_path.resolve().parent / "analysis" / name


def _report(paths) -> None:
    folders = sorted({str(p.parent) for p in paths})
    print(f"wrote {len(paths)} file(s) to {', '.join(folders)}: {', '.join(p.name for p in paths)}")


def _layers(args, names) -> set[int] | None:
    """--layers, cut to the layers the modules `names` have."""
    from lorascope.analysis.modules import layer_index, parse_layers

    if not getattr(args, "layers", None):
        return None
    return parse_layers(args.layers, available={i for n in names if (i := layer_index(n)) is not None})


def _selected(run, args) -> list[str]:
    from lorascope.analysis.modules import select_modules

    return select_modules(run.adapters, getattr(args, "modules", None), _layers(args, run.adapters))


def _label(run) -> str:
    """A run in a figure title: its name and rank (or that it is full fine-tuning)."""
    return f"{run.name} ({'full fine-tuning' if run.method == 'full' else f'r={run.rank}'})"


def _load(path: Path, args):
    """A run to analyse: a failed run never, an incomplete one only with --allow-incomplete."""
    from lorascope.runs import load_run

    run = load_run(path)
    _check_status(path, run.summary, args)
    return run


def _check_status(path: Path, summary: dict, args) -> None:
    """Refuse a failed run whatever the flags, and an incomplete one unless --allow-incomplete."""
    status = summary.get("status", "incomplete")
    if status == "failed":
        reason = summary.get("reason") or "no reason recorded"
        raise LorascopeError(f"{path}: the run failed ({reason}); it is not analysed")
    if status != "complete" and not getattr(args, "allow_incomplete", False):
        raise LorascopeError(
            f"{path}: the run is {status} (its summary.json does not say complete: still training, "
            "or killed); pass --allow-incomplete to analyse what it saved"
        )


def _add_allow_incomplete(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="analyse runs whose summary.json is not 'complete' (still training, or killed)",
    )


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where W's decompositions run: auto (the GPU when there is one), cpu (float64) or cuda",
    )


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modules", metavar="REGEX", help="only modules whose name matches REGEX (re.search)")
    p.add_argument(
        "--layers", metavar="LIST", help="only these layers, e.g. 0,2,5-7 (the number in the name)"
    )


def _add_out(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--out", metavar="DIR", type=Path, help=f"folder for figures and tables (default: {default})"
    )


# ----------------------------------------------------------------------------- ls


def cmd_ls(args) -> int:
    from lorascope.compare import sweep_table

    table = sweep_table(args.sweep)
    table["wall_time_s"] = table["wall_time_s"].map(_duration)
    print(_text(table.rename(columns={"wall_time_s": "wall_time"})))  # a metric a run lacks prints as --
    return 0


def _duration(seconds) -> str:
    if seconds is None or seconds != seconds:  # absent, or NaN in a frame
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def _add_ls(sub) -> None:
    p = sub.add_parser(
        "ls",
        help="list the runs of a sweep",
        description=(
            "One row per run folder of SWEEP: rank, seed, status, final metrics and wall time, "
            "read from summary.json (no tensors are loaded)."
        ),
    )
    p.add_argument("sweep", metavar="SWEEP", type=Path, help="sweep folder, e.g. runs/minilm-bbc")
    p.set_defaults(func=cmd_ls)


# ----------------------------------------------------------------------------- similarity


def cmd_similarity(args) -> int:
    from lorascope.analysis.factors import get_factor
    from lorascope.analysis.plots import plot_phi
    from lorascope.analysis.tables import parse_formats, write_figure
    from lorascope.compare import heatmap_pages, run_similarity
    from lorascope.compare.inputs import SameBase

    formats = parse_formats(args.format)
    run_a, run_b = _load(args.run_a, args), _load(args.run_b, args)
    same_base = (
        SameBase()
    )  # φ between adapters of two bases compares unrelated spaces: refused, as by compare
    for run in (run_a, run_b):
        same_base.add(run, str(run.path))
    layers = _layers(args, [m for m in run_a.adapters if m in run_b.adapters])
    pair = run_similarity(run_a, run_b, args.factor, args.modules, layers, progress=_progress())
    pages = heatmap_pages(pair, args.per_page)
    for label, run, names in (("first", run_a, pair.only_a), ("second", run_b, pair.only_b)):
        if names:
            print(f"note: {len(names)} module(s) only in the {label} run {run.name} were skipped")
    summary = pair.summary()
    _print_table(
        summary,
        f"phi({args.factor}) {run_a.name} vs {run_b.name}: phi_11 = phi(1,1), phi_diag_mean = mean "
        "phi(k,k) for k <= min(r_a, r_b), random_floor = the same mean for random subspaces of R^n",
    )
    out = args.out or _default_out(run_a.path, f"{run_a.name}_vs_{run_b.name}")
    stem = f"phi_{args.factor}"
    written = [
        _write_csv(pair.long(), out / f"{stem}.csv", index=False),
        _write_csv(summary, out / f"{stem}_summary.csv"),
    ]
    title = f"$\\phi$ of {get_factor(args.factor).tex}: {_label(run_a)} vs {_label(run_b)}"
    for number, page in enumerate(pages, 1):
        fig, _ = plot_phi(
            page.grids, row_label=f"i ({run_a.name})", col_label=f"j ({run_b.name})", suptitle=title
        )
        page_stem = out / (f"{stem}_heatmap" + (f"-{number}" if len(pages) > 1 else ""))
        written += write_figure(fig, page_stem, page.data, formats)
    _report(written)
    return 0


def _add_similarity(sub) -> None:
    from lorascope.analysis.factors import FACTORS

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
        choices=list(FACTORS),
        help="the bases to compare (default A): "
        + "; ".join(f"{f.name}: {f.help}" for f in FACTORS.values()),
    )
    _add_filters(p)
    _add_allow_incomplete(p)
    _add_out(p, "<sweep of RUN_A>/analysis/<RUN_A>_vs_<RUN_B>")
    p.add_argument("--format", default="png", help="figure formats, comma-separated: png,pdf,svg")
    p.add_argument("--per-page", type=int, default=12, help="modules per heatmap figure (default 12)")
    p.set_defaults(func=cmd_similarity)


# ----------------------------------------------------------------------------- amplification


def cmd_amplification(args) -> int:
    from lorascope.analysis.tables import write_table
    from lorascope.compare.base import AMPLIFICATION_COLUMNS, amplification_table
    from lorascope.models import QUANTIZED_NOTE, is_quantized

    run = _load(args.run, args)
    table = amplification_table(
        run, k=args.k, modules=args.modules, layers=_layers(args, run.adapters), device=args.device,
        progress=_progress(),
    ).set_index("module")[AMPLIFICATION_COLUMNS]  # fmt: skip
    _print_table(
        table,
        f"amplification {run.name}: proj_* = ||U^T W V||_F with U, V the top-k singular "
        "vectors of dW, of W, or random; amplification = dw_norm / proj_dw",
    )
    if is_quantized(run.base_model):
        print(f"note: {QUANTIZED_NOTE}")
    out = args.out or _default_out(run.path, run.name)
    _report(write_table(table, out / "amplification"))
    return 0


def _add_amplification(sub) -> None:
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
    _add_filters(p)
    _add_device(p)
    _add_allow_incomplete(p)
    _add_out(p, "<sweep>/analysis/<RUN>")
    p.set_defaults(func=cmd_amplification)


# ----------------------------------------------------------------------------- intruders


def cmd_intruders(args) -> int:
    from lorascope.analysis.intruder_plot import plot_intruder_curve
    from lorascope.analysis.tables import parse_formats, write_figure, write_table
    from lorascope.compare.base import intruder_tables
    from lorascope.models import QUANTIZED_NOTE, is_quantized

    formats = parse_formats(args.format)
    run = _load(args.run, args)
    table, curve = intruder_tables(
        run, k=args.k, eps=args.eps, modules=args.modules, layers=_layers(args, run.adapters),
        device=args.device, progress=_progress(),
    )  # fmt: skip
    table = table.drop(columns="run").set_index("module")
    _print_table(
        table,
        f"intruder dimensions of {run.name}: among the top-{args.k} left singular vectors of W + dW, those "
        f"whose largest |cos| with every left singular vector of W is below eps = {args.eps}",
    )
    if is_quantized(run.base_model):
        print(f"note: {QUANTIZED_NOTE}")
    out = args.out or _default_out(run.path, run.name)
    written = write_table(table, out / "intruders")
    fig, _ = plot_intruder_curve(curve, k=args.k, eps=args.eps, title=f"{run.name}: intruder dimensions")
    written += write_figure(fig, out / "intruders_eps", curve, formats)
    _report(written)
    return 0


def _add_intruders(sub) -> None:
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
    _add_filters(p)
    _add_device(p)
    _add_allow_incomplete(p)
    _add_out(p, "<sweep>/analysis/<RUN>")
    p.add_argument("--format", default="png", help="figure formats, comma-separated: png,pdf,svg")
    p.set_defaults(func=cmd_intruders)


# ----------------------------------------------------------------------------- spectrum


def cmd_spectrum(args) -> int:
    from lorascope.analysis.modules import short_name
    from lorascope.analysis.plots import plot_spectrum
    from lorascope.analysis.tables import parse_formats, write_figure, write_table
    from lorascope.compare import spectrum_frames, with_top_sigmas

    formats = parse_formats(args.format)
    run = _load(args.run, args)
    table, sigmas = spectrum_frames(run, _selected(run, args))
    _print_table(
        with_top_sigmas(table, sigmas, args.top),
        f"spectrum of dW = s B A, {run.name}: s_k singular values; energy_rank holds 90% "
        "of sum s^2; stable = ||dW||_F^2/||dW||_2^2; effective = exp(entropy of s/sum s)",
    )
    out = args.out or _default_out(run.path, run.name)
    written = write_table(table, out / "spectrum")
    by_module = {short_name(m): g.sigma.to_numpy() for m, g in sigmas.groupby("module", sort=False)}
    fig, _ = plot_spectrum(by_module)
    fig.suptitle(f"{run.name}: spectrum of $\\Delta W$ ({len(table)} modules)", fontsize=11)
    written += write_figure(fig, out / "spectrum_plot", sigmas, formats)
    _report(written)
    return 0


def _add_spectrum(sub) -> None:
    p = sub.add_parser(
        "spectrum",
        help="singular values and effective ranks of dW",
        description=(
            "Per module: the singular values of dW = s B A (computed without forming dW), the energy rank "
            "(smallest k holding 90% of sum sigma^2), the stable rank ||dW||_F^2 / ||dW||_2^2 and the "
            "effective rank exp(H(sigma / sum sigma)). Writes a table and a spectrum figure + CSV."
        ),
    )
    p.add_argument("run", metavar="RUN", type=Path, help="run folder")
    p.add_argument("--top", type=int, default=4, help="singular values to print per module (default 4)")
    _add_filters(p)
    _add_allow_incomplete(p)
    _add_out(p, "<sweep>/analysis/<RUN>")
    p.add_argument("--format", default="png", help="figure formats, comma-separated: png,pdf,svg")
    p.set_defaults(func=cmd_spectrum)


# ----------------------------------------------------------------------------- export


def cmd_export(args) -> int:
    from lorascope.peft_format import export_peft

    run = _load(args.run, args)
    export_peft(run, args.out_dir, fan_in_fan_out=args.fan_in_fan_out, overwrite=args.overwrite)
    print(f"wrote {args.format} adapter of {run.name} to {args.out_dir}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a run as a PEFT adapter folder",
        description=(
            "Write RUN's adapter as a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) "
            "in OUT_DIR, loadable with peft.PeftModel.from_pretrained."
        ),
    )
    p.add_argument("run", metavar="RUN", type=Path, help="run folder")
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to write")
    p.add_argument("--format", default="peft", choices=["peft"], help="output format (default: peft)")
    p.add_argument(
        "--fan-in-fan-out",
        action="store_true",
        default=None,
        help="the base model stores W as (in, out), as GPT-2's Conv1D (default: from the run)",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    _add_allow_incomplete(p)
    p.set_defaults(func=cmd_export)


# ----------------------------------------------------------------------------- figures


def cmd_figures(args) -> int:
    from lorascope.analysis.tables import parse_formats
    from lorascope.paper import FIGURE_FACTORS, default_out, make_figures
    from lorascope.report import write_report

    out = args.out or default_out(args.sweep)
    written, skipped = make_figures(
        args.sweep,
        out,
        formats=parse_formats(args.format),
        recipes=args.only.split(",") if args.only else None,
        factors=args.factor or FIGURE_FACTORS,
        layer=args.layer,
        progress=_progress(),
        device=args.device,
    )
    for s in skipped:
        print(s)
    _report(written)
    if (out / "findings.md").is_file():
        print(f"findings: {out / 'findings.md'}")
    print(f"report: {write_report(args.sweep, out)}")  # the page of all of it
    return 0


def _add_figures(sub) -> None:
    from lorascope.paper import DESCRIPTIONS, FIGURE_FACTORS

    p = sub.add_parser(
        "figures",
        help="every figure and table of the LoRA paper's Section 7, and findings.md",
        description="Render the LoRA paper's Section 7 analyses for a sweep:\n\n"
        + "\n".join(f"  {k:<9} {v}" for k, v in DESCRIPTIONS.items())
        + "\n\nFigures are written as PNG/PDF with the CSV of their numbers beside them, tables as CSV,\n"
        "Markdown and LaTeX. Recipes the sweep cannot feed (no second seed, say) are skipped with\n"
        "the command that would make them possible.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", metavar="SWEEP", type=Path, help="sweep folder, e.g. runs/minilm-bbc")
    _add_out(p, "SWEEP/figures")
    p.add_argument("--format", default="png,pdf", help="figure formats, comma-separated (default: png,pdf)")
    p.add_argument(
        "--only", metavar="LIST", help=f"only these recipes, e.g. fig3,table7 ({', '.join(DESCRIPTIONS)})"
    )
    p.add_argument(
        "--factor", action="append", choices=FIGURE_FACTORS, help="factor(s) for the φ figures (default: all)"
    )
    p.add_argument("--layer", type=int, help="layer of the single-layer figures (default: the middle one)")
    _add_device(p)
    p.set_defaults(func=cmd_figures)


# ----------------------------------------------------------------------------- trajectory


def cmd_trajectory(args) -> int:
    from lorascope.analysis.tables import parse_formats, write_figure, write_table
    from lorascope.analysis.trajectory import first_step_by_kind, first_step_reached, kind_summary
    from lorascope.analysis.trajectory_plot import plot_trajectory
    from lorascope.compare.trajectories import run_trajectory

    formats = parse_formats(args.format)
    run = _load(args.run, args)
    frame = run_trajectory(run, args.k, args.modules, args.layers, progress=_progress())
    reached = first_step_reached(frame, threshold=args.threshold)
    by_kind = first_step_by_kind(reached)
    _print_table(
        kind_summary(frame),
        f"trajectory of {run.name}, at the final step, mean over layers: dA_rel = ||A - A0|| / ||A0||, "
        "phi_*_11 = phi(1,1) of dW's top direction with the final one, phi_A_A0 = phi(r,r) of A with A0",
    )
    _print_table(
        by_kind, f"first step from which phi(1,1) to the final top direction stays >= {args.threshold}"
    )
    out = args.out or _default_out(run.path, run.name)
    fig, _ = plot_trajectory(frame, threshold=args.threshold, suptitle=f"{run.name}: how ΔW forms")
    written = write_figure(fig, out / "trajectory", frame, formats)
    written += write_table(by_kind, out / "trajectory_first_step")
    written.append(_write_csv(reached, out / "trajectory_first_step_modules.csv", index=False))
    _report(written)
    return 0


def _add_trajectory(sub) -> None:
    p = sub.add_parser(
        "trajectory",
        help="how an adapter formed during training, from its snapshots",
        description=(
            "From step 0 (adapter_init), every snapshot (train.snapshot_every=N) and the final adapter: per "
            "module and step ||A_t - A0||/||A0||, ||B_t||, ||dW_t||, stable and energy rank of dW_t, phi of "
            "dW_t's top-k input and output directions with the final dW's, and phi(A_t, A0). Writes a figure "
            "with one panel per quantity and a CSV with one row per (module, step)."
        ),
    )
    p.add_argument("run", metavar="RUN", type=Path, help="run folder (trained with train.snapshot_every=N)")
    p.add_argument("--k", type=int, default=8, help="top directions compared with the final dW (default 8)")
    p.add_argument(
        "--threshold", type=float, default=0.9, help="phi(1,1) that counts as the final direction reached"
    )
    _add_filters(p)
    _add_allow_incomplete(p)
    _add_out(p, "<sweep>/analysis/<RUN>")
    p.add_argument("--format", default="png", help="figure formats, comma-separated: png,pdf,svg")
    p.set_defaults(func=cmd_trajectory)


# ----------------------------------------------------------------------------- compare


def cmd_compare(args) -> int:
    from lorascope.analysis.map_plot import plot_adapter_map
    from lorascope.analysis.tables import parse_formats, write_figure
    from lorascope.compare.maps import adapter_map
    from lorascope.runs import is_run_dir, read_summary

    formats = parse_formats(args.format)
    for path in args.sources:  # the same door as every other command, before anything is loaded
        if is_run_dir(path):
            _check_status(path, read_summary(path), args)
    amap = adapter_map(
        args.sources,
        factor=args.factor,
        k=args.k,
        modules=args.modules,
        layers=args.layers,
        progress=_progress(),
        normalize=args.normalize,
        weight=args.weight,
        signed=args.signed,
    )
    lo, hi = amap.floor_range()
    floor = f"{lo:.3g}" if lo == hi else f"{lo:.3g}-{hi:.3g}"
    what = "cos(dW_a, dW_b)" if amap.score == "cosine" else f"mean phi(t,t), t <= {amap.k}, of {amap.factor}"
    what += ", (s - floor)/(1 - floor) per module" if amap.normalized else ""
    title = (
        f"similarity of {len(amap.names)} adapters: {what}, {amap.weight} average over "
        f"{len(amap.modules)} shared modules; random floor {floor}"
    )
    _print_table(amap.similarity if len(amap.names) <= 15 else amap.nearest(), title)
    if amap.skipped:
        print(f"note: {len(amap.skipped)} module(s) not shared by all adapters were skipped")
    for name, why in amap.left_out.items():
        print(f"run {name}: skipped: {why}")
    first = Path(args.sources[0])
    out = args.out or (first / "analysis" if len(args.sources) == 1 else _default_out(first, ""))
    out = out / f"compare_{amap.factor}" if args.out is None else out
    order = amap.order()
    n, m = len(amap.names), len(amap.modules)
    short = f"{n} adapters: {what}, {m} modules"
    fig, _ = plot_adapter_map(amap.similarity, floor=amap.floor, linkage=amap.linkage(), title=short)
    stem = f"map_{amap.factor}"
    written = write_figure(fig, out / stem, amap.similarity.loc[order, order].reset_index(), formats)
    written.append(_write_csv(amap.similarity, out / f"{stem}_matrix.csv"))
    written.append(_write_csv(amap.by_kind, out / f"{stem}_by_kind.csv", index=False))
    written.append(_write_csv(amap.nearest(), out / f"{stem}_nearest.csv"))
    _report(written)
    return 0


def _add_compare(sub) -> None:
    from lorascope.analysis.adapter_map import MAP_FACTORS

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
    _add_filters(p)
    _add_allow_incomplete(p)
    _add_out(p, "<sweep>/analysis/compare_<factor>")
    p.add_argument("--format", default="png", help="figure formats, comma-separated: png,pdf,svg")
    p.set_defaults(func=cmd_compare)


# ----------------------------------------------------------------------------- subspace, merge


def _complete_sources(sources, args) -> None:
    """Run folders must be complete unless --allow-incomplete, checked before anything is loaded."""
    from lorascope.runs import is_run_dir, read_summary

    for path in sources:
        if is_run_dir(path) and not args.allow_incomplete:
            status = read_summary(path).get("status", "incomplete")
            if status != "complete":
                raise LorascopeError(f"{path}: the run is {status}; pass --allow-incomplete to use it")


def _many_out(args, name: str) -> Path:
    """--out, else <sweep>/analysis/<name> beside the adapters (a sweep's own analysis/ for one sweep)."""
    if args.out is not None:
        return args.out
    first = Path(args.sources[0])
    return (first / "analysis" if len(args.sources) == 1 else _default_out(first, "")) / name


def _numbers(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LorascopeError(f"{option} {text!r}: want numbers separated by commas, e.g. 1,0.5,0.5") from None


def _number(text: str | None, option: str) -> float | None:
    values = _numbers(text, option)
    if values is not None and len(values) != 1:
        raise LorascopeError(f"{option} {text!r}: want one number")
    return values[0] if values else None


def cmd_subspace(args) -> int:
    from lorascope.analysis.many_plots import plot_energy_curves, plot_layer_profile
    from lorascope.analysis.tables import parse_formats, write_figure, write_table
    from lorascope.compare import project_adapter, run_subspace

    formats = parse_formats(args.format)
    if args.basis is not None:  # reuse a saved basis: project a new adapter onto it, nothing else
        if args.sources or args.project is None:
            raise LorascopeError(
                "--basis FILE reads a saved shared basis: give --project NEW_ADAPTER, no adapters"
            )
        table = project_adapter(args.project, args.basis, k=args.k, modules=args.modules, layers=args.layers)
        _print_projection(table, Path(args.project).name, args.basis.name)
        out = args.out or _default_out(Path(args.project), f"projection_{Path(args.project).name}")
        _report(write_table(table, out / "projection"))
        return 0
    if not args.sources:
        raise LorascopeError(
            "give the adapters (run or PEFT folders, or one sweep), or --basis FILE --project NEW"
        )
    _complete_sources(args.sources, args)
    rep = run_subspace(
        args.sources, side=args.side, k=args.k, weighted=args.weighted, m=args.m, keep=args.keep,
        trials=args.trials, seed=args.seed, modules=args.modules, layers=args.layers, progress=_progress(),
    )  # fmt: skip
    N, weighting = len(rep.names), "σ²-weighted" if rep.weighted else "unweighted"
    _print_table(
        rep.kind_summary(),
        f"shared subspace of {N} adapters, {rep.side} side ({weighting}), {len(rep.modules)} modules, median "
        "over layers: energy = share of the adapters' energy in the top-m shared directions; floor / "
        f"floor_hi = the same for {N} independent random adapters (Monte Carlo mean / mean + 3 sd, "
        f"{rep.meta['trials']} trials); knee = the first m with 95% of the largest excess of energy over "
        "the floor; shared_dims = leading eigenvalues above the floor's band",
    )
    coverage = rep.coverage()
    shown = coverage if N <= 15 else coverage.sort_values("coverage").head(10)
    _print_table(
        shown,
        "coverage of each adapter by the top-m shared directions, mean over modules"
        + ("" if N <= 15 else " (the 10 lowest)")
        + f"; outlier: closer to the floor than to the median; {int(coverage.outlier.sum())} outlier(s)",
    )
    if rep.skipped:
        print(f"note: {len(rep.skipped)} module(s) not shared by all adapters were skipped")
    out = _many_out(args, f"subspace_{rep.side}")
    table, curve = rep.table(), rep.curve()
    title = f"{N} adapters, {rep.side} side ({weighting}): energy in the top-m shared directions"
    fig, _ = plot_energy_curves(curve, table, title=title)
    written = write_figure(fig, out / "energy_curve", curve, formats)
    fig, _ = plot_layer_profile(table, title=f"{N} adapters, {rep.side} side: per layer")
    written += write_figure(fig, out / "layers", table.reset_index(), formats)
    written += write_table(table, out / "subspace")
    written += write_table(coverage, out / "coverage")
    written.append(_write_csv(rep.coverage_long(), out / "coverage_modules.csv", index=False))
    written.append(rep.save_basis(out / "shared_basis.safetensors"))
    if args.project is not None:
        projection = project_adapter(args.project, rep, k=args.k, modules=args.modules, layers=args.layers)
        _print_projection(projection, Path(args.project).name, "the shared basis")
        written += write_table(projection, out / "projection")
    _report(written)
    return 0


def _print_projection(table, name: str, basis: str) -> None:
    _print_table(
        table,
        f"{name} projected on {basis}: coverage = its share inside the top-m (and all `keep`) shared "
        "directions; floor = m/n, exact for an adapter independent of the basis",
    )
    print(f"mean coverage {table.coverage.mean():.3g} against the floor {table.floor.mean():.3g}")


def _add_subspace(sub) -> None:
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
    _add_filters(p)
    _add_allow_incomplete(p)
    _add_out(p, "<sweep>/analysis/subspace_<side>")
    p.add_argument("--format", default="png", help="figure formats, comma-separated: png,pdf,svg")
    p.set_defaults(func=cmd_subspace)


def cmd_merge(args) -> int:
    from lorascope.analysis.many_plots import plot_interference, plot_retention
    from lorascope.analysis.merging import merge_utils
    from lorascope.analysis.tables import parse_formats, write_figure, write_table
    from lorascope.compare import merge_summary, run_merge

    merge_utils()  # PEFT first: without it, one line before anything is read
    formats = parse_formats(args.format)
    _complete_sources(args.sources, args)
    rep = run_merge(
        args.sources, args.method, weights=_numbers(args.weights, "--weights"),
        density=_number(args.density, "--density"), rank=args.rank, k=args.k,
        majority_sign_method=args.majority_sign, seed=args.seed, modules=args.modules, layers=args.layers,
        keep_factors=args.save_adapter, progress=_progress(),
    )  # fmt: skip
    retention = rep.retention()
    density = f", density {rep.density:g}" if rep.density is not None else ""
    shown = [c for c in retention if c not in ("retention_left", "retention_right", "against_energy")]
    _print_table(
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
    out = _many_out(args, f"merge_{rep.method}")
    written = write_table(retention, out / "retention")
    written += write_table(rep.modules, out / "merge_modules")
    written.append(_write_csv(rep.adapters, out / "retention_modules.csv", index=False))
    floors = (s["interference_left_floor"], s["interference_right_floor"])
    title = f"{len(rep.names)} adapters: interference of their singular bases (TSV), mean over modules"
    fig, _ = plot_interference(rep.interference_frame("left"), rep.interference_frame("right"), floors,
                               title=title)  # fmt: skip
    written += write_figure(fig, out / "interference", rep.interference_long(), formats)
    fig, _ = plot_retention(retention, title=f"what {rep.method} keeps of each adapter")
    written += write_figure(fig, out / "retention_plot", retention.reset_index(), formats)
    if args.save_adapter:
        folder = rep.save_adapter(out / "adapter", overwrite=args.overwrite)
        written.append(folder / "adapter_model.safetensors")
        print(
            f"merged adapter (PEFT, r = {rep.rank}) in {folder}: PeftModel.from_pretrained(base, '{folder}')"
        )
    _report(written)
    return 0


def _add_merge(sub) -> None:
    from lorascope.analysis.merging import DEFAULT_DENSITY, METHODS

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
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    p.add_argument(
        "--weights", metavar="LIST", help="one weight per adapter, e.g. 1,0.5,0.5 (default 1 each)"
    )
    p.add_argument(
        "--density",
        help=f"fraction of entries the pruning methods keep, in (0, 1] (default {DEFAULT_DENSITY})",
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
    _add_filters(p)
    _add_allow_incomplete(p)
    _add_out(p, "<sweep>/analysis/merge_<method>")
    p.add_argument("--format", default="png", help="figure formats, comma-separated: png,pdf,svg")
    p.set_defaults(func=cmd_merge)


# ----------------------------------------------------------------------------- main

COMMANDS = [
    _add_ls, _add_similarity, _add_amplification, _add_intruders, _add_spectrum, _add_trajectory,
    _add_compare, _add_figures, _add_export,
    _add_subspace, _add_merge,
]  # fmt: skip


# ----------------------------------------------------------------------------- report


def cmd_report(args) -> int:
    from lorascope.report import write_report

    print(f"report: {write_report(args.sweep, args.figures, args.out)}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of a sweep: runs, figures, tables, findings",
        description=(
            "Write one HTML page holding the runs table of SWEEP (status, rank, seed, method, metrics, "
            "wall time, why a run failed, each run's config on demand), findings.md, and every figure "
            "and table of `lorascope figures` with its files. Everything is inside the page (no server, "
            "no network): open it from disk, mail it, attach it to a notebook."
        ),
    )
    p.add_argument("sweep", metavar="SWEEP", type=Path, help="sweep folder, e.g. runs/minilm-bbc")
    p.add_argument(
        "--out", metavar="FILE", type=Path, help="the page to write (default: FIGURES/report.html)"
    )
    p.add_argument(
        "--figures",
        metavar="DIR",
        type=Path,
        help="the folder `lorascope figures` wrote (default: SWEEP/figures)",
    )
    p.set_defaults(func=cmd_report)


COMMANDS.append(_add_report)


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


def _check_args(args) -> None:
    """What argparse checks only the type of: --k, --top and --per-page count directions or panels
    (at least 1); --device cuda needs a CUDA device (else nothing could be computed where asked)."""
    for name in ("k", "top", "per_page"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise LorascopeError(f"--{name.replace('_', '-')} {value}: want at least 1")
    if getattr(args, "device", None) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LorascopeError("--device cuda: this machine has no CUDA device; use --device auto or cpu")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lorascope` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    # No analysis ever fetches anything: a hub id that is not cached is an error, not a download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import matplotlib

    matplotlib.use("Agg")  # the commands only write files: never open a window
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        _check_args(args)
        return args.func(args)
    except (LorascopeError, OSError) as e:
        # A user mistake or an unreadable path: one line, no traceback.
        print(f"lorascope: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lorascope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
