"""What the commands print and where their files go: tables on stdout, one `Written` per command.

Every command writes its files through `Written` (figures + the CSV of their numbers, tables as
CSV/Markdown/LaTeX, plain CSVs, other files) into the folder `out_dir` picks, and ends with its
one line "wrote N file(s) to FOLDER: names". The writers themselves are `lorascope.writers`
(the same ones the figure recipes use), imported when a command writes, never at start-up.
"""

from __future__ import annotations

import sys
from pathlib import Path


def text(df) -> str:
    from lorascope.writers import to_text

    return to_text(df)


def print_table(df, title: str | None = None) -> None:
    if title:
        print(title)
    print(text(df))


def progress() -> bool:
    """Progress bars on stderr only where someone watches it."""
    return sys.stderr.isatty()


def beside(run_path: Path, name: str) -> Path:
    """<sweep>/analysis/<name>: beside the runs it describes (the sweep is the run's parent)."""
    return Path(run_path).resolve().parent / "analysis" / name


def out_dir(args, run_path: Path, name: str) -> Path:
    """--out, else <sweep of run_path>/analysis/<name>."""
    return args.out or beside(run_path, name)


def many_out(args, name: str) -> Path:
    """--out, else <sweep>/analysis/<name> beside the adapters (a sweep's own analysis/ for one sweep)."""
    if args.out is not None:
        return args.out
    first = Path(args.sources[0])
    return (first / "analysis" if len(args.sources) == 1 else beside(first, "")) / name


class Written:
    """The files one command writes into `folder`, in order; `report()` prints the closing line."""

    def __init__(self, folder: Path, formats: list[str] | None = None):
        self.folder = Path(folder)
        self.formats = formats
        self.paths: list[Path] = []

    def table(self, df, name: str) -> None:
        """name.csv, name.md, name.tex."""
        from lorascope.writers import write_table

        self.paths += write_table(df, self.folder / name)

    def figure(self, fig, name: str, data) -> None:
        """name.<format> for each --format, and name.csv with the numbers drawn."""
        from lorascope.writers import write_figure

        self.paths += write_figure(fig, self.folder / name, data, self.formats)

    def csv(self, df, name: str, index: bool = True) -> None:
        """name (a .csv file): the full-precision numbers behind what was printed or drawn."""
        from lorascope.run_format import atomic_write_text

        path = self.folder / name
        atomic_write_text(path, df.to_csv(index=index, float_format="%.10g"))
        self.paths.append(path)

    def file(self, path: Path) -> None:
        """A file the command wrote itself (a safetensors basis, an adapter)."""
        self.paths.append(Path(path))

    def report(self) -> None:
        report_paths(self.paths)


def report_paths(paths) -> None:
    """The closing line of a command that wrote files: how many, where, which."""
    folders = sorted({str(p.parent) for p in paths})
    print(f"wrote {len(paths)} file(s) to {', '.join(folders)}: {', '.join(p.name for p in paths)}")


def formats(args) -> list[str]:
    """--format as the list of figure formats (checked before anything is computed)."""
    from lorascope.writers import parse_formats

    return parse_formats(args.format)
