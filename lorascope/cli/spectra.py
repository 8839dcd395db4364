"""`lorascope spectrum RUN` and `lorascope trajectory RUN`: ΔW of one run, as trained and as it formed.

<out>/spectrum.{csv,md,tex}                    σ(ΔW)'s ranks per module (energy, stable, effective)
<out>/spectrum_plot.<fmt>                      every module's σ (+ its CSV)
<out>/trajectory.<fmt>                         one panel per quantity against the step (+ its CSV)
<out>/trajectory_first_step.{csv,md,tex}       when the final top direction is reached, per kind
<out>/trajectory_first_step_modules.csv        the same per module
"""

from __future__ import annotations

from pathlib import Path

from lorascope.cli import inputs, options
from lorascope.cli.output import Written, formats, out_dir, print_table, progress

RUN_OUT = "<sweep>/analysis/<RUN>"


def add_spectrum(sub) -> None:
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
    options.add_outputs(p, RUN_OUT)
    p.set_defaults(func=cmd_spectrum)


def cmd_spectrum(args) -> int:
    from lorascope.analysis.plots import plot_spectrum
    from lorascope.compare import spectrum_frames, with_top_sigmas
    from lorascope.names import short_name

    figure_formats = formats(args)
    run = inputs.load(args.run, args)
    table, sigmas = spectrum_frames(run, inputs.selected(run, args))
    print_table(
        with_top_sigmas(table, sigmas, args.top),
        f"spectrum of dW = s B A, {run.name}: s_k singular values; energy_rank holds 90% "
        "of sum s^2; stable = ||dW||_F^2/||dW||_2^2; effective = exp(entropy of s/sum s)",
    )
    written = Written(out_dir(args, run.path, run.name), figure_formats)
    written.table(table, "spectrum")
    by_module = {short_name(m): g.sigma.to_numpy() for m, g in sigmas.groupby("module", sort=False)}
    fig, _ = plot_spectrum(by_module)
    fig.suptitle(f"{run.name}: spectrum of $\\Delta W$ ({len(table)} modules)", fontsize=11)
    written.figure(fig, "spectrum_plot", sigmas)
    written.report()
    return 0


def add_trajectory(sub) -> None:
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
    options.add_outputs(p, RUN_OUT)
    p.set_defaults(func=cmd_trajectory)


def cmd_trajectory(args) -> int:
    from lorascope.analysis.trajectory import first_step_by_kind, first_step_reached, kind_summary
    from lorascope.analysis.trajectory_plot import plot_trajectory
    from lorascope.compare import run_trajectory

    figure_formats = formats(args)
    run = inputs.load(args.run, args)
    frame = run_trajectory(run, args.k, args.modules, args.layers, progress=progress())
    reached = first_step_reached(frame, threshold=args.threshold)
    by_kind = first_step_by_kind(reached)
    print_table(
        kind_summary(frame),
        f"trajectory of {run.name}, at the final step, mean over layers: dA_rel = ||A - A0|| / ||A0||, "
        "phi_*_11 = phi(1,1) of dW's top direction with the final one, phi_A_A0 = phi(r,r) of A with A0",
    )
    print_table(
        by_kind, f"first step from which phi(1,1) to the final top direction stays >= {args.threshold}"
    )
    written = Written(out_dir(args, run.path, run.name), figure_formats)
    fig, _ = plot_trajectory(frame, threshold=args.threshold, suptitle=f"{run.name}: how ΔW forms")
    written.figure(fig, "trajectory", frame)
    written.table(by_kind, "trajectory_first_step")
    written.csv(reached, "trajectory_first_step_modules.csv", index=False)
    written.report()
    return 0
