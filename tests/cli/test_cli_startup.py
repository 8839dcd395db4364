"""`lorascope --help`, `lorascope <cmd> --help` and `lorascope ls` start without torch, and the names
the parsers offer without importing the analysis are the analysis' own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorascope.cli import COMMANDS, build_parser, choices

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "matplotlib", "safetensors", "scipy")
COMMAND_NAMES = sorted(build_parser()._subparsers._group_actions[0].choices)


def _heavy_modules_after(*argv: str) -> tuple[list[str], str]:
    """The heavy packages `lorascope ARGV` has imported when it returns, and what it printed, run in a
    fresh interpreter (this one has imported torch long ago)."""
    code = (
        "import json, sys\n"
        "from lorascope.cli import main\n"
        "try:\n"
        "    code = main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr[-2000:]
    return report["heavy"], proc.stdout


def test_help_imports_no_torch():
    heavy, out = _heavy_modules_after("--help")
    assert heavy == [] and "similarity" in out and "ls" in out


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_each_command_help_imports_no_torch(command):
    heavy, out = _heavy_modules_after(command, "--help")
    assert heavy == [], f"`lorascope {command} --help` imported {heavy}"
    assert f"usage: lorascope {command}" in out


def test_ls_imports_no_torch(tmp_path):
    from analysis_fixtures import make_run

    make_run(tmp_path, "r4-s0", 4)
    make_run(tmp_path, "r8-s0", 8, summary={"status": "failed", "reason": "loss is nan at step 3"})
    heavy, out = _heavy_modules_after("ls", str(tmp_path))
    assert heavy == [], f"`lorascope ls` imported {heavy}"
    assert "r4-s0" in out and "r8-s0" in out and "failed" in out


def test_a_command_that_needs_torch_is_seen_to_import_it(tmp_path):
    """The check can fail: `spectrum` reads tensors, and the same probe reports torch."""
    from analysis_fixtures import make_run

    run = make_run(tmp_path, "r4-s0", 4)
    heavy, out = _heavy_modules_after("spectrum", str(run), "--out", str(tmp_path / "out"))
    assert "torch" in heavy and "wrote" in out


def test_every_command_is_registered_once():
    assert len(COMMAND_NAMES) == len(COMMANDS) == len(set(COMMAND_NAMES))


def test_the_offered_names_are_the_analysis_own():
    from lorascope.analysis.adapter_map import MAP_FACTORS
    from lorascope.analysis.factors import FACTORS
    from lorascope.analysis.merging import DEFAULT_DENSITY, METHODS

    assert choices.SIMILARITY_FACTORS == {name: f.help for name, f in FACTORS.items()}
    assert choices.MAP_FACTORS == MAP_FACTORS
    assert choices.MERGE_METHODS == METHODS and choices.MERGE_DENSITY == DEFAULT_DENSITY
