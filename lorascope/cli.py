"""`lorascope ...`: one question per command, answered from run folders.

    lorascope ls SWEEP                      what a sweep holds
    lorascope similarity RUN_A RUN_B        φ heatmaps between two adapters (paper Fig. 3/4)
    lorascope amplification RUN             ‖UᵀWV‖_F and amplification (paper Table 7)
    lorascope spectrum RUN                  singular values of ΔW and effective ranks
    lorascope figures SWEEP                 every figure and table of the paper's Section 7
    lorascope export RUN OUT_DIR            write a run as a PEFT adapter folder

To add a command: write `_add_<name>(sub)` that registers its parser with
`set_defaults(func=...)` and append it to COMMANDS. A user mistake raises LorascopeError,
which `main` turns into one line `lorascope: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lorascope.errors import LorascopeError

log = logging.getLogger("lorascope")


def _print_table(df, title: str | None = None) -> None:
    from lorascope.analysis.tables import to_text

    if title:
        print(title)
    print(to_text(df))


def _progress() -> bool:
    return sys.stderr.isatty()


def _default_out(run_path: Path, name: str) -> Path:
    """<sweep>/analysis/<name>: beside the runs it describes (the sweep is the run's parent)."""
    return run_path.resolve().parent / "analysis" / name


def _report(paths) -> None:
    folders = sorted({str(p.parent) for p in paths})
    print(f"wrote {len(paths)} file(s) to {', '.join(folders)}: {', '.join(p.name for p in paths)}")


def _selected(run, args) -> list[str]:
    from lorascope.analysis.modules import parse_layers, select_modules

    layers = parse_layers(args.layers) if getattr(args, "layers", None) else None
    return select_modules(run.adapters, getattr(args, "modules", None), layers)


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
    from lorascope.analysis.tables import to_text
    from lorascope.runs import list_runs

    rows = [_ls_row(path) for path in list_runs(args.sweep)]
    if not rows:
        raise LorascopeError(f"{args.sweep}: holds no run folders")
    import pandas as pd

    df = pd.DataFrame(rows).set_index("run")
    print(to_text(df))  # NaN (a metric a run lacks) prints as --
    return 0


_WALL_KEYS = ("wall_time_s", "wall_time", "wall_s", "time_s", "elapsed_s")
_NOT_METRICS = {
    "status",
    "rank",
    "seed",
    "step",
    "steps",
    "alpha",
    "epoch",
    "throughput",
    "peak_memory",
    "peak_memory_mb",
    "peak_memory_gb",
    "tokens_per_s",
    "samples_per_s",
    "train_time_s",
    "trainable_params",
    "lora_params",
}


def _ls_row(path: Path) -> dict:
    """One line of `ls` from summary.json (and config.yaml for rank/seed): no tensors loaded."""
    from lorascope.runs import parse_run_name, read_config, read_summary

    summary = read_summary(path)
    config = read_config(path)
    parsed = parse_run_name(path.name) or (None, None)
    row = {
        "run": path.name,
        "rank": summary.get("rank", config.get("rank", parsed[0])),
        "seed": summary.get("seed", config.get("seed", parsed[1])),
        "status": summary.get("status", "incomplete"),
    }
    # Final metrics: numbers at the top level of summary.json, or in a nested "final"/"metrics" dict.
    metrics = {}
    for key in ("final", "metrics", "final_metrics", "eval"):
        if isinstance(summary.get(key), dict):
            metrics.update(summary[key])
    metrics.update({k: v for k, v in summary.items() if not isinstance(v, dict | list)})
    for k, v in metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in _NOT_METRICS:
            if k not in _WALL_KEYS and k not in row:
                row[k] = v
    wall = next((summary[k] for k in _WALL_KEYS if isinstance(summary.get(k), int | float)), None)
    row["wall_time"] = _duration(wall)
    return row


def _duration(seconds) -> str:
    if seconds is None:
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
    import pandas as pd

    from lorascope.analysis import PairSimilarity, gaussian_phi_baseline, grid_frame, parse_layers, short_name
    from lorascope.analysis.plots import plot_phi
    from lorascope.analysis.similarity import run_similarity
    from lorascope.analysis.tables import parse_formats, write_figure
    from lorascope.runs import load_run

    formats = parse_formats(args.format)
    run_a, run_b = load_run(args.run_a), load_run(args.run_b)
    layers = parse_layers(args.layers) if args.layers else None
    pair = run_similarity(run_a, run_b, args.factor, args.modules, layers, progress=_progress())
    for label, run, names in (("first", run_a, pair.only_a), ("second", run_b, pair.only_b)):
        if names:
            print(f"note: {len(names)} module(s) only in the {label} run {run.name} were skipped")
    summary = pair.summary()
    _print_table(
        summary,
        f"phi({args.factor}) {run_a.name} vs {run_b.name}: "
        "phi_11 = phi(1,1), phi_diag_mean = mean phi(k,k) for k <= min(r_a, r_b)",
    )

    out = args.out or _default_out(run_a.path, f"{run_a.name}_vs_{run_b.name}")
    stem = f"phi_{args.factor}"
    long = pair.long()
    out.mkdir(parents=True, exist_ok=True)
    long_path = out / f"{stem}.csv"
    long.to_csv(long_path, index=False, float_format="%.10g")
    summary_path = out / f"{stem}_summary.csv"
    summary.to_csv(summary_path, float_format="%.10g")
    written = [long_path, summary_path]

    names = list(pair.grids)
    first = pair.grids[names[0]]
    side = "left" if args.factor in ("B", "dW-left") else "right"
    n = pair.dims[names[0]]
    shape = {"right": lambda r: (r, n), "left": lambda r: (n, r)}[side]
    # The empirical floor (paper Fig. 4, right): two Gaussian matrices shaped like the first module's.
    floor = gaussian_phi_baseline(shape(first.shape[0]), shape(first.shape[1]), n_seeds=5, side=side)
    floor_name = f"random Gaussian (n={n})"
    floor_rows = PairSimilarity(args.factor, "", "", {floor_name: grid_frame(floor)}, {floor_name: n}).long()
    per_page = args.per_page
    if per_page < 1:
        raise LorascopeError(f"--per-page must be at least 1, got {per_page}")
    pages = [names[i : i + per_page] for i in range(0, len(names), per_page)]
    for p, page in enumerate(pages, 1):
        grids = {
            f"{short_name(m)}  ({pair.grids[m].shape[0]}×{pair.grids[m].shape[1]})": pair.grids[m]
            for m in page
        }
        grids[floor_name] = floor
        fig, _ = plot_phi(
            grids,
            row_label=f"i ({run_a.name})",
            col_label=f"j ({run_b.name})",
            suptitle=f"$\\phi$ of {_FACTOR_TEXT[args.factor]}: {run_a.name} (r={run_a.rank}) "
            f"vs {run_b.name} (r={run_b.rank})",
        )
        page_stem = out / (f"{stem}_heatmap" + (f"-{p}" if len(pages) > 1 else ""))
        data = pd.concat([long[long["module"].isin(page)], floor_rows], ignore_index=True)
        written += write_figure(fig, page_stem, data, formats)
    _report(written)
    return 0


_FACTOR_TEXT = {
    "A": "A (right)",
    "B": "B (left)",
    "dA": r"$A - A_0$ (right)",
    "dW-right": r"$\Delta W$ (right)",
    "dW-left": r"$\Delta W$ (left)",
}


def _add_similarity(sub) -> None:
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
        choices=["A", "B", "dA", "dW-right", "dW-left"],
        help=(
            "basis to compare: A (right singular vectors, the paper's U_A), B (left), dA (A - A0, "
            "needs adapter_init), dW-right / dW-left (singular vectors of dW = s B A); default A"
        ),
    )
    _add_filters(p)
    _add_out(p, "<sweep of RUN_A>/analysis/<RUN_A>_vs_<RUN_B>")
    p.add_argument("--format", default="png", help="figure formats, comma-separated: png,pdf,svg")
    p.add_argument("--per-page", type=int, default=12, help="modules per heatmap figure (default 12)")
    p.set_defaults(func=cmd_similarity)


# ----------------------------------------------------------------------------- amplification


def cmd_amplification(args) -> int:
    import pandas as pd
    from tqdm.auto import tqdm

    from lorascope.analysis import amplification
    from lorascope.analysis.tables import write_table
    from lorascope.runs import load_run

    run = load_run(args.run)
    modules = _selected(run, args)
    from lorascope.models import load_base_weights  # needs the base model: import only here

    weights = load_base_weights(run, modules)
    rows = []
    for m in tqdm(modules, desc="amplification", unit="module", disable=not _progress()):
        ad = run.adapters[m]
        res = amplification(weights[m], ad.A, ad.B, ad.scaling, k=args.k)
        rows.append({"module": m, "rank": ad.rank, **res})
    df = pd.DataFrame(rows).set_index("module")
    df = df[["rank", "k", "w_norm", "dw_norm", "proj_dw", "proj_w", "proj_random", "amplification"]]
    _print_table(
        df,
        f"amplification {run.name}: proj_* = ||U^T W V||_F with U, V the top-k singular "
        "vectors of dW, of W, or random; amplification = dw_norm / proj_dw",
    )
    from lorascope.models import QUANTIZED_NOTE, is_quantized

    if is_quantized(run.base_model):
        print(f"note: {QUANTIZED_NOTE}")
    out = args.out or _default_out(run.path, run.name)
    _report(write_table(df, out / "amplification"))
    return 0


def _add_amplification(sub) -> None:
    p = sub.add_parser(
        "amplification",
        help="how dW amplifies directions of W (paper Table 7)",
        description=(
            "Per module: ||W||_F, ||dW||_F, ||U^T W V||_F for U, V the top-k singular vectors of dW, of W "
            "itself and random, and amplification = ||dW||_F / ||U^T W V||_F. Loads the run's base model "
            "(offline) for W."
        ),
    )
    p.add_argument("run", metavar="RUN", type=Path, help="run folder")
    p.add_argument("--k", type=int, default=None, help="number of singular directions (default: the rank)")
    _add_filters(p)
    _add_out(p, "<sweep>/analysis/<RUN>")
    p.set_defaults(func=cmd_amplification)


# ----------------------------------------------------------------------------- spectrum


def cmd_spectrum(args) -> int:
    import pandas as pd

    from lorascope.analysis import short_name, spectrum
    from lorascope.analysis.plots import plot_spectrum
    from lorascope.analysis.tables import parse_formats, write_figure, write_table
    from lorascope.runs import load_run

    formats = parse_formats(args.format)
    run = load_run(args.run)
    modules = _selected(run, args)
    rows, sigmas = [], {}
    for m in modules:
        ad = run.adapters[m]
        res = spectrum(ad.A, ad.B, ad.scaling)
        sigmas[m] = res.pop("singular_values")
        rows.append({"module": m, "rank": ad.rank, **res})
    df = pd.DataFrame(rows).set_index("module")
    top = min(args.top, min(len(s) for s in sigmas.values()))
    shown = df.copy()
    for i in range(top):
        shown.insert(1 + i, f"s{i + 1}", [float(sigmas[m][i]) for m in df.index])
    shown = shown.drop(columns=["sigma_1"])
    _print_table(
        shown,
        f"spectrum of dW = s B A, {run.name}: s_k singular values; energy_rank holds 90% "
        "of sum s^2; stable = ||dW||_F^2/||dW||_2^2; effective = exp(entropy of s/sum s)",
    )
    out = args.out or _default_out(run.path, run.name)
    written = write_table(df, out / "spectrum")
    long = pd.DataFrame(
        [{"module": m, "k": k + 1, "sigma": float(v)} for m, s in sigmas.items() for k, v in enumerate(s)]
    )
    fig, _ = plot_spectrum({short_name(m): s for m, s in sigmas.items()})
    fig.suptitle(f"{run.name}: spectrum of $\\Delta W$ ({len(sigmas)} modules)", fontsize=11)
    written += write_figure(fig, out / "spectrum_plot", long, formats)
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
    _add_out(p, "<sweep>/analysis/<RUN>")
    p.add_argument("--format", default="png", help="figure formats, comma-separated: png,pdf,svg")
    p.set_defaults(func=cmd_spectrum)


# ----------------------------------------------------------------------------- export


def cmd_export(args) -> int:
    from lorascope.runs import load_run

    run = load_run(args.run)
    try:
        from lorascope.peft_format import export_peft
    except ImportError as e:
        raise LorascopeError(f"PEFT export is not available in this install ({e})") from None
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
    p.set_defaults(func=cmd_export)


# ----------------------------------------------------------------------------- figures


def cmd_figures(args) -> int:
    from lorascope.analysis.tables import parse_formats
    from lorascope.paper.recipes import FACTORS, default_out, make_figures

    out = args.out or default_out(args.sweep)
    written, skipped = make_figures(
        args.sweep,
        out,
        formats=parse_formats(args.format),
        recipes=args.only.split(",") if args.only else None,
        factors=args.factor or FACTORS,
        layer=args.layer,
        progress=_progress(),
    )
    for s in skipped:
        print(s)
    _report(written)
    if (out / "findings.md").is_file():
        print(f"findings: {out / 'findings.md'}")
    return 0


def _add_figures(sub) -> None:
    from lorascope.paper import DESCRIPTIONS, FACTORS

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
        "--factor", action="append", choices=FACTORS, help="factor(s) for the φ figures (default: all)"
    )
    p.add_argument("--layer", type=int, help="layer of the single-layer figures (default: the middle one)")
    p.set_defaults(func=cmd_figures)


# ----------------------------------------------------------------------------- main

COMMANDS = [_add_ls, _add_similarity, _add_amplification, _add_spectrum, _add_figures, _add_export]


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lorascope` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (LorascopeError, OSError) as e:
        # A user mistake or an unreadable path: one line, no traceback.
        text = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.strerror and e.filename else e
        print(f"lorascope: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lorascope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
