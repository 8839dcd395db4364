"""The command line of `python sweep.py`, checked against the schema before Hydra composes anything.

Hydra reports a key typo (`rnak=8`) or a wrong type (`train.steps=ten`) in 4–12 lines, and a swept
value (`rank=1,0`) reaches the check only in its own job, after the jobs before it have trained.
`check_overrides` gives each of these one line first: the closest key for a typo, each value's type
against the schema, and every value of every swept key checked (`config.check`) in the config that
Hydra's compose API builds from conf/ and the single-valued overrides, presets included. Choosing a
preset (`model=hf`), `hydra.*` and appended or deleted keys (`+key`, `~key`) are left to Hydra.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

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
        plain = [a for a in args if not a.startswith("-")]
        overrides = OverridesParser.create().parse_overrides(plain)
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
    for key, values in [*((k, [v]) for k, v in fixed.items()), *swept.items()]:
        for value in values:
            _check_type(key, value)
    if not swept:
        return  # the composed config is checked by SweepReport before any job starts
    kept = [
        a
        for a, o in zip(plain, overrides, strict=True)
        if not (o.is_sweep_override() or o.is_add() or o.is_delete())
    ]
    base = _composed(kept)  # appended or deleted keys are left to Hydra and the jobs, as above
    for key, values in swept.items():
        for value in values:
            if base is not None and not _interpolation(value):  # interpolations resolve in the job
                from_dict(_with(base, key, value))


def _interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _check_type(key: str, value: Any) -> None:
    """One value against the schema's type for its key (`train.steps=ten`), in one line."""
    if _interpolation(value):
        return
    try:
        OmegaConf.merge(OmegaConf.structured(SweepConfig), _nest({key: value}))
    except OmegaConfBaseException as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LorascopeError(f"config key {key}: {first}") from None


def _composed(args: list[str]) -> dict[str, Any] | None:
    """The config as Hydra composes it from conf/ with the single-valued overrides (presets included),
    without its hydra node; None if it does not compose (Hydra then reports why, as it always does)."""
    from hydra import compose, initialize_config_dir

    runs = [a for a in args if not a.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=runs)
    except Exception:
        return None
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}


def _with(config: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of `config` with the dotted `key` set to `value`."""
    out = copy.deepcopy(config)
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[leaf] = value
    return out
