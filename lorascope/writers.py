"""Tables and figures to text and files: CSV, Markdown, LaTeX (booktabs), PNG/PDF + CSV.

Formatting is pure (DataFrame -> str); the `write_*` helpers are the only file writers,
used by the CLI and the figure recipes, never by the analysis functions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lorascope.errors import LorascopeError
from lorascope.run_format import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

TABLE_FORMATS = {"csv": ".csv", "md": ".md", "tex": ".tex"}
FIGURE_FORMATS = ("png", "pdf", "svg")


def format_number(x, digits: int = 3) -> str:
    """A paper-friendly number: 3 significant digits, no exponent for 1e-3 ≤ |x| < 1e5, ints as ints."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e5):
        return str(int(x))
    if isinstance(x, float):
        if math.isnan(x):
            return "--"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x != 0 and not 1e-3 <= abs(x) < 1e5:
            return f"{x:.{digits - 1}e}"
        # Enough decimals for `digits` significant figures, at least 2 (keeps columns aligned).
        decimals = max(2, digits - 1 - int(math.floor(math.log10(abs(x)))) if x else 2)
        return f"{x:.{decimals}f}"
    return str(x)


def _formatted(df: pd.DataFrame, digits: int) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_numeric_dtype(out[c]):
            out[c] = [format_number(v.item() if hasattr(v, "item") else v, digits) for v in out[c]]
    return out


def to_csv(df: pd.DataFrame) -> str:
    """Full precision CSV (the numbers behind a figure or table)."""
    return df.to_csv(float_format="%.10g")


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """GitHub-flavoured Markdown table (pandas' to_markdown, via tabulate).

    A MultiIndex (module, r) becomes ordinary leading columns: Markdown has no nested rows."""
    if isinstance(df.index, pd.MultiIndex):
        return _formatted(df.reset_index(), digits).to_markdown(index=False, disable_numparse=True)
    return _formatted(df, digits).to_markdown(disable_numparse=True)


def to_text(df: pd.DataFrame, digits: int = 3) -> str:
    """A compact plain-text table for the terminal."""
    return _formatted(df, digits).to_string()


# Symbols our column names use, as math that pdflatex typesets (it rejects the Unicode characters).
_LATEX_MATH = (("‖", r"$\|$"), ("ᵀ", r"$^\top$"), ("Δ", r"$\Delta$"), ("φ", r"$\phi$"), ("σ", r"$\sigma$"),
               ("−", "$-$"), ("√", r"$\surd$"), ("\\_F", "$_F$"))  # fmt: skip


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    for a, b in _LATEX_MATH:
        text = text.replace(a, b)
    return text.replace("$$", "")  # adjacent math pieces join into one


def to_latex(df: pd.DataFrame, digits: int = 3, caption: str | None = None, label: str | None = None) -> str:
    """booktabs LaTeX (\\toprule/\\midrule/\\bottomrule), numbers right-aligned and formatted for a paper."""
    flat = isinstance(df.index, pd.MultiIndex)
    if flat:  # (module, r) as leading columns, as in a paper's table
        df = df.reset_index()
    body = _formatted(df, digits)
    body.index = [_latex_escape(str(i)) for i in body.index]
    body.columns = [_latex_escape(str(c)) for c in body.columns]
    body = body.map(lambda v: _latex_escape(v) if isinstance(v, str) else v)
    body.index.name = _latex_escape(str(df.index.name)) if df.index.name else None
    align = "" if flat else "l"
    align += "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    style = body.style.hide(axis="index") if flat else body.style
    return style.to_latex(
        column_format=align,
        hrules=True,
        caption=caption,
        label=label,
        position_float="centering" if caption else None,
    )


def write_table(
    df: pd.DataFrame, stem: str | Path, formats: Iterable[str] = ("csv", "md", "tex")
) -> list[Path]:
    """Write df as stem.csv / stem.md / stem.tex side by side; returns the paths written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    render = {"csv": to_csv, "md": lambda d: to_markdown(d) + "\n", "tex": to_latex}
    paths = []
    for fmt in formats:
        if fmt not in TABLE_FORMATS:
            raise LorascopeError(f"unknown table format {fmt!r}: choose from {', '.join(TABLE_FORMATS)}")
        path = stem.with_name(stem.name + TABLE_FORMATS[fmt])
        atomic_write_text(path, render[fmt](df))  # every output whole or absent, as run files are
        paths.append(path)
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths


def parse_formats(text: str, allowed: Iterable[str] = FIGURE_FORMATS) -> list[str]:
    """ "png,pdf" -> ["png", "pdf"], checked against `allowed`."""
    allowed = list(allowed)
    formats = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in allowed]
    if bad or not formats:
        raise LorascopeError(f"--format {text!r}: choose from {', '.join(allowed)} (comma-separated)")
    return formats


def write_figure(
    fig, stem: str | Path, data: pd.DataFrame | None, formats: Iterable[str] = ("png",), dpi: int = 150
) -> list[Path]:
    """Save fig as stem.png / stem.pdf ... and its numbers as stem.csv beside it; closes fig."""
    import matplotlib.pyplot as plt

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        if fmt not in FIGURE_FORMATS:
            raise LorascopeError(f"unknown figure format {fmt!r}: choose from {', '.join(FIGURE_FORMATS)}")
        path = stem.with_name(f"{stem.name}.{fmt}")
        atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))
        paths.append(path)
    plt.close(fig)
    if data is not None:
        path = stem.with_name(stem.name + ".csv")
        atomic_write_text(path, data.to_csv(index=False, float_format="%.10g"))
        paths.append(path)
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths
