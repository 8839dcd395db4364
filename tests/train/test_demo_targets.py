"""`make demo` then `make demo-paper`: the runs both targets name are one experiment, so the second finds
the first's runs done instead of refusing their folders (a config that differs in what it computes)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lorascope import hydra_glue
from lorascope.config import comparable, from_dict, to_dict

pytestmark = pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")
ROOT = Path(__file__).resolve().parents[2]
hydra_glue.register()


def _recipes() -> dict[str, list[list[str]]]:
    """{target: [the overrides of each `sweep.py` command of its recipe]}, Make variables expanded."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^([A-Z_]+)\s*:?=\s*(.*)$", text, re.M))
    recipes: dict[str, list[list[str]]] = {}
    target = None
    for line in text.splitlines():
        if m := re.match(r"^([\w-]+):", line):
            target = m.group(1)
            recipes[target] = []
        elif line.startswith("\t") and target:
            line = re.sub(r"\$\((\w+)\)", lambda v: variables.get(v.group(1), ""), line)
            if "sweep.py" in line:
                recipes[target].append(shlex.split(line.split("sweep.py", 1)[1]))
    return recipes


def _experiment(overrides: list[str], **choice: str) -> dict:
    """The comparable config of one run of a sweep command: each swept key at `choice`'s value (which
    must be one of the command's), hydra's own overrides dropped."""
    chosen = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.startswith("hydra"):
            continue
        if key in choice:
            assert choice[key] in value.split(","), (o, choice)
            value = choice.pop(key)
        chosen.append(f"{key}={value}")
    chosen += [f"{k}={v}" for k, v in choice.items()]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=chosen)
    plain = {k: v for k, v in cfg.items() if k != "hydra"}
    return comparable(to_dict(from_dict(dict(plain))))


def _find(commands: list[list[str]], must: dict[str, str]) -> list[str]:
    for overrides in commands:
        values = dict(o.partition("=")[::2] for o in overrides)
        if all(k in values and v in values[k].split(",") for k, v in must.items()):
            return overrides
    raise AssertionError(f"no sweep command with {must}: {commands}")


def test_demo_paper_reuses_the_runs_make_demo_trained():
    recipes = _recipes()
    demo = recipes["demo-stream-full"] + recipes["demo-stream-r64"]
    paper = recipes["demo-paper"]
    assert demo and paper
    full_demo = _experiment(_find(demo, {"method": "full"}), method="full", rank="1")
    full_paper = _experiment(_find(paper, {"method": "full"}), method="full", seed="0")
    assert full_demo == full_paper
    r8_demo = _experiment(_find(demo, {"rank": "8"}), rank="8")
    r8_paper = _experiment(_find(paper, {"experiment": "paper_ranks"}), rank="8", seed="0")
    assert r8_demo == r8_paper
