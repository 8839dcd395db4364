"""Which adapters an adapter map compares: sources resolved, names made unique, one base checked.

A single sweep folder stands for its complete runs; run folders and PEFT adapter folders mix
freely. Names are folder names, lengthened by parents only where two would collide (two PEFT
folders both called `adapter`). `SameBase` refuses adapters of different base models.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from lorascope.errors import LorascopeError
from lorascope.run_format import Run, read_summary
from lorascope.runs import is_run_dir, list_runs, load_run

log = logging.getLogger(__name__)


def resolve_sources(
    sources: Sequence, what: str = "an adapter map compares"
) -> tuple[list, dict[str, str] | None]:
    """Run folders, PEFT folders or loaded `Run`s, in order; a single sweep folder becomes its
    complete runs. At least 2, no path twice; `what` begins the error for fewer ("a merge needs").

    Returns (sources, left out): for a sweep, {run name: why} of the runs that are not complete or
    cannot be read (the caller also leaves out, and adds, those whose tensors turn out unreadable);
    None for sources given one by one, where any bad one is an error."""
    sources = [s if isinstance(s, Run) else Path(s) for s in sources]
    if len(sources) == 1 and isinstance(sources[0], Path) and _is_sweep(sources[0]):
        sweep = sources[0]
        done, left_out = [], {}
        for folder in list_runs(sweep):
            try:
                status = read_summary(folder).get("status", "incomplete")
            except LorascopeError as e:  # one unreadable run is reported and left out
                left_out[folder.name] = str(e)
                continue
            if status == "complete":
                done.append(folder)
            else:
                left_out[folder.name] = f"status {status}"
        if len(done) < 2:
            raise LorascopeError(
                f"{sweep}: {len(done)} complete run(s); {what} at least 2 "
                "(train more, e.g. `python sweep.py rank=8 seed=0,1,2`)"
            )
        return done, left_out
    if len(sources) < 2:
        raise LorascopeError(
            f"{what} at least 2 adapters, got {len(sources)}: give several run or "
            "PEFT folders, or one sweep folder"
        )
    seen: dict[Path, object] = {}
    for s in sources:
        if isinstance(s, Path):
            if not is_run_dir(s):
                load_run(s)  # raises the loader's own message (not a run, a sweep among runs, ...)
            key = s.resolve()
            if key in seen:
                raise LorascopeError(f"{s}: given twice; give each adapter once")
            seen[key] = s
    return sources, None


def _is_sweep(path: Path) -> bool:
    return path.is_dir() and not is_run_dir(path) and bool(list_runs(path))


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, lengthened by parent folders only where two would collide:
    [x/adapter, y/adapter, runs/r8-s0] -> ["x/adapter", "y/adapter", "r8-s0"]."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        clash = {n for n in names if names.count(n) > 1}
        if not clash:
            return names
        grown = False
        for i, n in enumerate(names):
            if n in clash and depth[i] < len(parts[i]):
                depth[i] += 1
                grown = True
        if not grown:
            raise LorascopeError(f"two adapters have the same path: {sorted(clash)[0]}")


def _base_name(name) -> str | None:
    """A base model id compared loosely: "sentence-transformers/all-MiniLM-L6-v2" and
    "/models/all-minilm-l6-v2/" name the same model; the fingerprints settle the rest."""
    if not name:
        return None
    return str(name).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower() or None


class SameBase:
    """Checks, one run at a time, that all runs adapt one base model.

    Where two runs both record ‖W‖_F of a module (`meta["base_fingerprint"]`), those must agree to
    rtol 1e-4, and such agreement settles that they share the base. Otherwise their
    `meta["base_model"]` names must agree (`_base_name`); a run without a name is not checked."""

    RTOL = 1e-4

    def __init__(self) -> None:
        self.fingerprints: dict[str, tuple[float, str]] = {}  # module -> (‖W‖_F, first run with it)
        self.name: tuple[str, str, str] | None = None  # (normalised base name, as given, first run)

    def add(self, run: Run, label: str) -> None:
        agreed = False
        for m, value in (run.meta.get("base_fingerprint") or {}).items():
            if m not in self.fingerprints:
                self.fingerprints[m] = (float(value), label)
                continue
            ref, ref_label = self.fingerprints[m]
            if abs(float(value) - ref) > self.RTOL * abs(ref):
                raise LorascopeError(
                    f"{label} and {ref_label} adapt different base weights: module {m} has ‖W‖_F "
                    f"{float(value):.6g} vs {ref:.6g}; compare adapters of one base model"
                )
            agreed = True
        name = _base_name(run.meta.get("base_model"))
        if name is None:
            return
        if self.name is None:
            self.name = (name, str(run.meta["base_model"]), label)
        elif name != self.name[0] and not agreed:
            raise LorascopeError(
                f"{label} and {self.name[2]} were trained on different base models "
                f"({run.meta['base_model']!r} vs {self.name[1]!r}); compare adapters of one base"
            )
