"""Which adapters an adapter map compares: sources resolved, names made unique, one base checked.

A single sweep folder stands for its complete runs; run folders and PEFT adapter folders mix
freely. Names are folder names, lengthened by parents only where two would collide (two PEFT
folders both called `adapter`). `SameBase` refuses adapters of different base models, told
by their weights' fingerprints (`lorascope.base_identity`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from lorascope.base_identity import agree, disagreement, loose_name, recorded
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


class SameBase:
    """Checks, one run at a time, that all runs adapt one base model, by content.

    The first run is the reference. A later run is on its base when their ‖W‖_F fingerprints
    agree (rtol 1e-4, `base_identity`) on the modules both record, whatever folder or hub id
    names the base; on another base when they differ. Where no fingerprint is shared (PEFT
    folders record none) and the base names differ (`loose_name`), the fingerprint of one module
    both adapt is read from each base (offline, one tensor); where a base cannot be opened, the
    differing names decide. allow_other=True (`--allow-other-base`) records each other base in
    `others` (one line each, for the output to say) instead of refusing."""

    def __init__(self, allow_other: bool = False) -> None:
        self.allow_other = allow_other
        self.fingerprints: dict[str, tuple[float, str]] = {}  # module -> (‖W‖_F, first run with it)
        self.reference: tuple[Run, str] | None = None
        self.others: list[str] = []  # why each run let through by allow_other is on another base

    def add(self, run: Run, label: str) -> None:
        why = self._other_base(run, label)
        if why is not None:
            if not self.allow_other:
                raise LorascopeError(f"{why}; compare adapters of one base model, or pass --allow-other-base")
            log.warning("%s (--allow-other-base)", why)
            self.others.append(why)
        for m, value in recorded(run).items():
            self.fingerprints.setdefault(m, (float(value), label))

    def _other_base(self, run: Run, label: str) -> str | None:
        """Why `run` is not on the reference's base, or None when it is (or cannot be told apart)."""
        if self.reference is None:
            self.reference = (run, label)
            return None
        mine = recorded(run)
        ours = {m: v for m, (v, _) in self.fingerprints.items()}
        found = disagreement(mine, ours)
        if found is not None:
            m, got, ref = found
            return (
                f"{label} and {self.fingerprints[m][1]} adapt different base weights: module {m} has "
                f"‖W‖_F {got:.6g} vs {ref:.6g}"
            )
        if set(mine) & set(ours):
            return None  # the weights agree: one base, whatever its name
        ref_run, ref_label = self.reference
        base, ref_base = run.meta.get("base_model"), ref_run.meta.get("base_model")
        name, ref_name = loose_name(base), loose_name(ref_base)
        if None in (name, ref_name) or name == ref_name:
            return None
        # a reference may be only a header (a saved shared basis: .meta, no adapters)
        module = next(
            (m for m in getattr(run, "adapters", {}) if m in getattr(ref_run, "adapters", {})), None
        )
        if module is not None:
            a, b = fingerprint(run, module), fingerprint(ref_run, module)
            if a is not None and b is not None:
                if agree(a, b):
                    log.info("%s and %s: bases %r and %r hold the same %s", label, ref_label,
                             base, ref_base, module)  # fmt: skip
                    return None
                return (
                    f"{label} and {ref_label} adapt different base weights: module {module} has ‖W‖_F "
                    f"{a:.6g} ({base}) vs {b:.6g} ({ref_base})"
                )
        return (
            f"{label} and {ref_label} were trained on different base models "
            f"({base!r} vs {ref_base!r}; no base weights to compare)"
        )


def fingerprint(run: Run, module: str) -> float | None:
    """‖W‖_F of `module`'s base weight: recorded, else read once from the run's base checkpoint
    (then kept in run.meta); None where the base cannot be opened offline or lacks the module."""
    value = recorded(run).get(module)
    if value is not None:
        return float(value)
    from lorascope.base_model import open_base
    from lorascope.run_format import base_fingerprint

    try:
        W = open_base(run).weight(module, dtype=None)
    except LorascopeError as e:
        log.info("%s: no fingerprint of %s from its base (%s)", run.path, module, e)
        return None
    value = base_fingerprint(W)
    run.meta.setdefault("base_fingerprint", {})[module] = value
    log.info("%s: ‖W‖_F of %s read from its base: %.6g", run.path, module, value)
    return value


def base_key_map(base: str | None):
    """transformers' key mapping (`key_mapping.KeyMap`) of a base model by name, or None: no name,
    a base not available offline, or a model whose keys transformers does not rename."""
    if not base:
        return None
    from lorascope import models
    from lorascope.base_model import open_named
    from lorascope.key_mapping import key_map

    try:
        return key_map(open_named(base, models.resolve).folder)
    except LorascopeError as e:
        log.info("base %s: no key mapping (%s)", base, e)
        return None


def aligned(run: Run, names: Sequence[str], base: str | None = None) -> Run:
    """`run` with its modules named as in `names` (another run's) where transformers' key mapping
    gives two names one in-memory name: an adapter saved under the checkpoint's (transformers < 5)
    names, "vit.encoder.layer.0.attention.attention.query", beside one saved under the model's,
    "vit.layers.0.attention.q_proj". `base`: the other run's base model (its mapping serves
    where this run's base is not available). Unchanged where the names already agree."""
    mine, theirs = set(run.adapters), set(names)
    if not (mine - theirs) or not (theirs - mine):
        return run
    from lorascope.base_model import base_name

    try:
        own = base_name(run)
    except LorascopeError:
        own = None
    mapping = base_key_map(own) or base_key_map(base)
    if mapping is None:
        return run
    canonical = {mapping.module_to_model(n): n for n in names}
    rename = {m: canonical.get(mapping.module_to_model(m), m) for m in run.adapters}
    if len(set(rename.values())) < len(rename) or all(k == v for k, v in rename.items()):
        return run
    moved = sum(k != v for k, v in rename.items())
    log.info(
        "%s: %d module(s) matched through transformers' key mapping for %s, e.g. %s = %s",
        run.path, moved, mapping.model_type, *next((k, v) for k, v in rename.items() if k != v),
    )  # fmt: skip
    meta = dict(run.meta)
    if meta.get("base_fingerprint"):
        meta["base_fingerprint"] = {rename.get(m, m): v for m, v in meta["base_fingerprint"].items()}
    init = {rename.get(m, m): a for m, a in run.init.items()} if run.init is not None else None
    return replace(run, adapters={rename[m]: a for m, a in run.adapters.items()}, meta=meta, init=init)
