"""The options several commands share, each declared once; and what argparse cannot check itself.

A command's parser calls these in the order its --help lists them:

    add_filters(p)                  --modules REGEX, --layers LIST
    add_device(p)                   --device auto|cpu|cuda (where W's decompositions run)
    add_allow_incomplete(p)         --allow-incomplete
    add_base(p)                     --base DIR (W from another copy of the base)
    add_allow_other_base(p)         --allow-other-base (compare across base models)
    add_out(p, default)             --out DIR (default: the command's folder, as its help says)
    add_format(p, default="png")    --format png,pdf,svg

`add_outputs(p, default)` is the block most commands end with (filters, allow-incomplete, out,
format). An option a new feature gives several commands (a base to read W from, statistics over
seeds, ...) is one more `add_*` here, called from each command's parser; the command body reads
`args.<name>`. Nothing here imports torch: `lorascope --help` and `lorascope <cmd> --help` stay
instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorascope.errors import LorascopeError

# Arguments that count directions or panels: `check_args` wants each at least 1.
COUNTS = ("k", "top", "per_page")


def add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modules", metavar="REGEX", help="only modules whose name matches REGEX (re.search)")
    p.add_argument(
        "--layers", metavar="LIST", help="only these layers, e.g. 0,2,5-7 (the number in the name)"
    )


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where W's decompositions run: auto (the GPU when there is one), cpu (float64) or cuda",
    )


def add_allow_incomplete(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="analyse runs whose summary.json is not 'complete' (still training, or killed)",
    )


def add_out(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--out", metavar="DIR", type=Path, help=f"folder for figures and tables (default: {default})"
    )


def add_base(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base",
        metavar="DIR",
        help="read W from this checkpoint folder instead of the run's base (e.g. the unquantized "
        "model beside a QLoRA adapter's 4-bit base); checked against the run's fingerprints",
    )


def add_allow_other_base(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-other-base",
        action="store_true",
        help="compare adapters of different base models (e.g. Llama-3 vs Llama-3.1), said in the output",
    )


def add_format(p: argparse.ArgumentParser, default: str = "png") -> None:
    where = "" if default == "png" else f" (default: {default})"
    p.add_argument("--format", default=default, help=f"figure formats, comma-separated: png,pdf,svg{where}")


def add_outputs(p: argparse.ArgumentParser, out_default: str, *, device: bool = False) -> None:
    """--modules, --layers, [--device], --allow-incomplete, --out and --format: what a command that
    reads runs and draws figures takes after its own arguments."""
    add_filters(p)
    if device:
        add_device(p)
    add_allow_incomplete(p)
    add_out(p, out_default)
    add_format(p)


def check_args(args) -> None:
    """What argparse checks only the type of: --k, --top and --per-page count directions or panels
    (at least 1); --device cuda needs a CUDA device (else nothing could be computed where asked)."""
    for name in COUNTS:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise LorascopeError(f"--{name.replace('_', '-')} {value}: want at least 1")
    if getattr(args, "device", None) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LorascopeError("--device cuda: this machine has no CUDA device; use --device auto or cpu")


def numbers(text: str | None, option: str) -> list[float] | None:
    """A comma-separated list of numbers (--weights 1,0.5,0.5), or None when not given."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LorascopeError(f"{option} {text!r}: want numbers separated by commas, e.g. 1,0.5,0.5") from None


def number(text: str | None, option: str) -> float | None:
    values = numbers(text, option)
    if values is not None and len(values) != 1:
        raise LorascopeError(f"{option} {text!r}: want one number")
    return values[0] if values else None
