"""The command line of `python sweep.py`, checked against the schema before Hydra composes anything.

Hydra reports a key typo (`rnak=8`) or a wrong type (`train.steps=ten`) in 4–12 lines, and a swept
value (`rank=1,0`) reaches the check only in its own job, after the jobs before it have trained.
`check_overrides` gives each of these one line first: the closest key for a typo, and every value of
every swept key checked with the single-valued overrides beside it. Presets (`model=hf`), `hydra.*`
and appended or deleted keys (`+key`, `~key`) are left to Hydra, which reports them well.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

from lorascope.config import SweepConfig, from_dict
from lorascope.errors import LorascopeError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the config groups (model/, task/, ...)


def schema_keys(cls: type = SweepConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections ("train") and leaves ("train.lr") alike."""
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        keys.append(f"{prefix}{name}")
        # A section is a dataclass, possibly optional (`LoraConfig | None`, null for method=full).
        for t in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(t):
                keys += schema_keys(t, f"{prefix}{name}.")
    return keys


def _groups() -> set[str]:
    return {p.name for p in CONF_DIR.iterdir() if p.is_dir()} if CONF_DIR.is_dir() else set()


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def check_overrides(args: list[str]) -> None:
    """Raise LorascopeError (one line) for an override of `python sweep.py` that names no config key,
    or gives a value that the schema or `config.check` refuses (each value of a sweep on its own)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return  # Hydra's own flags (--help, --cfg job, -cn NAME, ...): Hydra's business
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except Exception:  # a syntax error: Hydra names it with its position
        return
    keys, groups = schema_keys(), _groups()
    fixed: dict[str, Any] = {}
    swept: dict[str, list[Any]] = {}
    for o in overrides:
        key = o.key_or_group
        if o.is_add() or o.is_delete() or "/" in key or key.split(".")[0] == "hydra" or key in groups:
            continue  # appended or deleted keys, group paths (hydra/launcher=joblib), Hydra's own, presets
        if key not in keys:
            close = difflib.get_close_matches(key, [*keys, *sorted(groups)], n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else " (the keys are in lorascope/config.py)"
            raise LorascopeError(f"{key}={o.input_line.split('=', 1)[-1]}: no such config key{hint}")
        if o.is_sweep_override():
            swept[key] = list(o.sweep_iterator())
        else:
            fixed[key] = o.value()
    if not any(isinstance(v, str) and "${" in v for v in fixed.values()):
        from_dict(_nest(fixed))
    for key, values in swept.items():
        for value in values:
            if not (isinstance(value, str) and "${" in value):  # interpolations resolve in the job
                from_dict(_nest({**fixed, key: value}))
