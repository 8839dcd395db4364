"""The runs a command reads: one door for a run's status, and --modules / --layers applied to a run.

`load` (one run, loaded) and `check_sources` (many run or PEFT folders, before anything is
loaded) both go through `check_status`: a failed run is never analysed, an incomplete one only
with --allow-incomplete. Nothing else in the CLI reads a run's status.
"""

from __future__ import annotations

from pathlib import Path

from lorascope.errors import LorascopeError


def check_status(path: Path, summary: dict, args) -> None:
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


def load(path: Path, args):
    """A run to analyse (`lorascope.runs.load_run`), its status checked."""
    from lorascope.runs import load_run

    run = load_run(path)
    check_status(path, run.summary, args)
    return run


def check_sources(sources, args) -> None:
    """The run folders among `sources` (PEFT and sweep folders pass), checked before any is loaded."""
    from lorascope.run_format import read_summary
    from lorascope.runs import is_run_dir

    for path in sources:
        if is_run_dir(path):
            check_status(path, read_summary(path), args)


def layers(args, names) -> set[int] | None:
    """--layers, cut to the layers the modules `names` have."""
    from lorascope.names import layers_of

    return layers_of(names, getattr(args, "layers", None))


def selected(run, args) -> list[str]:
    """The run's modules that --modules and --layers keep."""
    from lorascope.names import select_modules

    return select_modules(run.adapters, getattr(args, "modules", None), layers(args, run.adapters))


def label(run) -> str:
    """A run in a figure title: its name and rank (or that it is full fine-tuning)."""
    return f"{run.name} ({'full fine-tuning' if run.method == 'full' else f'r={run.rank}'})"


def quantized_note(run, base) -> None:
    """Say when W is quantized: the SmolLM2 preset (GGUF), or a bitsandbytes checkpoint."""
    from lorascope.base_model import Checkpoint, open_base
    from lorascope.models import QUANTIZED_NOTE, is_quantized

    if base is None and is_quantized(run.base_model):
        print(f"note: {QUANTIZED_NOTE}")
        return
    checkpoint = Checkpoint(base) if base is not None else open_base(run)
    if checkpoint.quantization:
        print(
            f"note: W is dequantized from {checkpoint.quantization} ({checkpoint.folder}): its spectrum "
            "carries quantization noise; --base DIR reads an unquantized copy of the base"
        )


def other_bases(why: list[str]) -> None:
    """--allow-other-base: say which runs are on another base than the first."""
    import sys

    for line in why:
        print(f"note: --allow-other-base: {line}", file=sys.stderr)
