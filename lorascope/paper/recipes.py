"""The recipes: each turns a sweep into one of the paper's figures or tables; `make_figures` runs them all."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

from lorascope.errors import LorascopeError
from lorascope.krylov import SMALL, one_thread
from lorascope.paper.artifact import Artifact, Skipped
from lorascope.paper.catalog import DESCRIPTIONS, FIGURE_FACTORS
from lorascope.paper.cross_task import cross_task_section, fig_cross_task
from lorascope.paper.findings import findings_markdown
from lorascope.paper.findings_asymmetry import asymmetry_section, frozen_a_section
from lorascope.paper.findings_beyond import (
    intruders_section,
    lora_vs_full_section,
    spectrum_section,
    trajectory_section,
)
from lorascope.paper.intruder_figs import fig_intruders
from lorascope.paper.lora_vs_full import fig_lora_vs_full
from lorascope.paper.many_adapters import (
    fig_merge,
    fig_shared_subspace,
    group_of,
    merge_section,
    subspace_section,
)
from lorascope.paper.rank_overlap import fig3
from lorascope.paper.rank_table import rank_table
from lorascope.paper.seed_overlap import fig4
from lorascope.paper.similarity_figs import fig6, fig7
from lorascope.paper.spectrum_figs import fig_spectrum
from lorascope.paper.sweep import Sweep
from lorascope.paper.trajectory_figs import trajectories
from lorascope.paper.w_and_delta import fig8, table7

log = logging.getLogger(__name__)

_NO_INIT = "the runs have no adapter_init.safetensors (A0), so A − A0 is unknown"


def _has_init(sweep: Sweep) -> bool:
    return all(r.init is not None for r in sweep.runs.values())


def _per_factor(stem: str, fn: Callable) -> Callable:
    """A similarity recipe drawn once per factor; A − A0 only where the runs saved A0."""

    def run(sweep: Sweep, opts) -> list:
        return [
            fn(sweep, f, opts) if f != "dA" or _has_init(sweep) else Skipped(f"{stem}_{f}", _NO_INIT)
            for f in opts.factors
        ]

    return run


def _needs_w(name: str, fn: Callable) -> Callable:
    """Recipes that need the base model's W: explain instead of failing when it cannot be read."""

    def run(sweep: Sweep, opts) -> list:
        try:
            out = fn(sweep, opts)
        except LorascopeError as e:
            return [Skipped(name, f"needs the base weights W: {e}")]
        return list(out) if isinstance(out, tuple | list) else [out]

    return run


RECIPES: dict[str, Callable] = {
    "fig3": _per_factor("fig3_rank_similarity", lambda s, f, o: fig3(s, f, layer=o.layer)),
    "fig4": _per_factor("fig4_seed_similarity", lambda s, f, o: fig4(s, f, layer=o.layer)),
    "fig6": _per_factor("fig6_layers_rank_similarity", lambda s, f, o: fig6(s, f, layers=o.layers)),
    "fig7": _per_factor("fig7_layers_seed_similarity", lambda s, f, o: fig7(s, f, layers=o.layers)),
    "fig8": _needs_w("fig8", lambda s, o: fig8(s, o.layer, o.device)),
    "table7": _needs_w("table7", lambda s, o: table7(s, o.layer, o.device)),
    "intruders": _needs_w("intruders", lambda s, o: fig_intruders(s, o.device)),
    "spectrum": lambda sweep, opts: fig_spectrum(sweep, opts.layer),
    "lora_vs_full": lambda sweep, opts: [fig_lora_vs_full(sweep)],  # pools every layer
    "cross_task": _per_factor("fig_cross_task", lambda s, f, o: fig_cross_task(s, f, layer=o.layer)),
    "trajectory": lambda sweep, opts: trajectories(sweep),
    "ranks": lambda sweep, opts: [rank_table(sweep)],
    "subspace": lambda sweep, opts: fig_shared_subspace(sweep, group_of(sweep, opts)),
    "merge": lambda sweep, opts: fig_merge(sweep, group_of(sweep, opts)),
}


def small_modules(sweep: Sweep) -> bool:
    """Whether every adapted module of the sweep (LoRA and full fine-tuning) has out · in < SMALL.

    Then every decomposition the recipes make is small (r-column QRs and SVDs, 384² for MiniLM) and
    runs on one CPU thread. `lorascope figures` on the demo sweep, 2 cores, side by side: with three
    other busy processes 577 s (240 s CPU) on torch's two threads against 255 s (79 s CPU) on one, the
    OpenMP threads waiting on each other; on an idle machine 55 s against 60 s. A 7B base keeps torch's
    threads."""
    runs = [*sweep.runs.values(), *sweep.full.values(), *sweep.frozen_A.values()]
    return all(a.out_features * a.in_features < SMALL for r in runs for a in r.adapters.values())


def default_out(sweep: str | Path) -> Path:
    return Path(sweep) / "figures"


def run_recipe(name: str, sweep: Sweep, opts, done: dict | None = None) -> list[Artifact | Skipped]:
    """One recipe's results; `done` holds earlier recipes' results, which findings reuses."""
    done = {} if done is None else done
    if name not in done:
        done[name] = _findings(sweep, opts, done) if name == "findings" else RECIPES[name](sweep, opts)
    return done[name]


def _findings(sweep: Sweep, opts, done: dict) -> list[Artifact]:
    import matplotlib.pyplot as plt

    parts = {}
    for name in (
        "fig3",
        "fig4",
        "table7",
        "spectrum",
        "lora_vs_full",
        "intruders",
        "trajectory",
        "cross_task",
        "subspace",
        "merge",
    ):
        fresh = name not in done
        parts[name] = run_recipe(name, sweep, opts, done)
        for art in parts[name]:
            if fresh and getattr(art, "fig", None) is not None:
                plt.close(art.fig)  # computed here for its numbers only
    by_factor = {k: dict(zip(opts.factors, parts[k], strict=True)) for k in ("fig3", "fig4")}
    beyond = [
        *spectrum_section(parts["spectrum"], sweep),
        *lora_vs_full_section(parts["lora_vs_full"][0]),
        *intruders_section(parts["intruders"]),
        *asymmetry_section(sweep),
        *frozen_a_section(sweep),
        *trajectory_section(parts["trajectory"]),
        *cross_task_section(parts["cross_task"]),
        *subspace_section(parts["subspace"]),
        *merge_section(parts["merge"]),
    ]
    text = findings_markdown(sweep, by_factor["fig3"], by_factor["fig4"], parts["table7"][0], beyond)
    return [Artifact("findings", text=text)]


def make_figures(
    sweep: str | Path,
    out: str | Path | None = None,
    formats=("png", "pdf"),
    recipes: Iterable[str] | None = None,
    factors=FIGURE_FACTORS,
    layer: int | None = None,
    layers: list[int] | None = None,
    progress: bool = False,
    device: str = "auto",
) -> tuple[list[Path], list[Skipped]]:
    """Run the recipes on a sweep folder and write their files under `out` (default SWEEP/figures)."""
    from tqdm.auto import tqdm

    loaded = Sweep.load(sweep)
    out = Path(out) if out else default_out(sweep)
    opts = argparse.Namespace(factors=list(factors), layer=layer, layers=layers, device=device)
    names = list(recipes or DESCRIPTIONS)
    unknown = [n for n in names if n not in DESCRIPTIONS]
    if unknown:
        raise LorascopeError(f"unknown recipe(s) {', '.join(unknown)}: choose from {', '.join(DESCRIPTIONS)}")
    written, done = [], {}
    skipped = [Skipped(f"run {name}", why) for name, why in loaded.skipped.items()]
    with one_thread() if small_modules(loaded) else nullcontext():
        for name in tqdm(names, desc="figures", unit="recipe", disable=not progress):
            for result in run_recipe(name, loaded, opts, done):
                if isinstance(result, Skipped):
                    skipped.append(result)
                else:
                    written += result.write(out, formats)
    for s in skipped:
        log.info("%s", s)  # returned to the caller, who reports it (the CLI prints one line each)
    return written, skipped
