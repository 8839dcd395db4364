"""One bad run never sinks a command that reads a sweep: `ls`, `figures` and `compare SWEEP` list,
draw and compare the good runs and name the bad one in one line."""

from __future__ import annotations

import pytest
from analysis_fixtures import make_run, shared_directions

from lorascope import run_format
from lorascope.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(name: str, data: bytes):
    return lambda run: (run / name).write_bytes(data)


def _truncate(run):
    path = run / run_format.ADAPTER_FILE
    path.write_bytes(path.read_bytes()[:100])


CORRUPTIONS = {
    "summary not UTF-8": _write(run_format.SUMMARY_FILE, b'{"status": "compl\xff\xfe"}'),
    "summary a JSON list": _write(run_format.SUMMARY_FILE, b"[1, 2]"),
    "summary not JSON": _write(run_format.SUMMARY_FILE, b"{status: complete"),
    "config not UTF-8": _write(run_format.CONFIG_FILE, b"rank: \xff\xfe\n"),
    "config a YAML list": _write(run_format.CONFIG_FILE, b"- 1\n- 2\n"),
    "config a YAML string": _write(run_format.CONFIG_FILE, b"just text\n"),
    "adapter cut short": _truncate,
}


@pytest.fixture
def sweep(tmp_path):
    shared = shared_directions(32, 2)
    folder = tmp_path / "sweep"
    make_run(folder, "r4-s0", 4, shared=shared, seed=0)
    make_run(folder, "r8-s0", 8, shared=shared, seed=0)
    make_run(folder, "r8-s1", 8, shared=shared, seed=1)
    return folder


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupt_run_is_named_and_the_good_ones_are_listed_drawn_and_compared(
    sweep, tmp_path, capsys, case
):
    bad = make_run(sweep, "r16-s0", 16, seed=2)
    CORRUPTIONS[case](bad)

    assert main(["ls", str(sweep)]) == 0
    captured = capsys.readouterr()
    rows = {line.split()[0]: line for line in captured.out.splitlines()[2:]}
    assert set(rows) == {"r4-s0", "r8-s0", "r8-s1", "r16-s0"}, captured.out
    assert "complete" in rows["r4-s0"] and "Traceback" not in captured.err
    if case != "adapter cut short":  # ls reads no tensors
        assert "unreadable" in rows["r16-s0"]

    figs = tmp_path / "figs"
    assert main(["figures", str(sweep), "--out", str(figs), "--only", "fig3", "--factor", "A"]) == 0
    captured = capsys.readouterr()
    named = [line for line in captured.out.splitlines() if line.startswith("run r16-s0: skipped:")]
    assert len(named) == 1, captured.out
    assert (figs / "fig3_rank_similarity_A.png").is_file()  # from the good runs

    out = tmp_path / "map"
    assert main(["compare", str(sweep), "--out", str(out), "--k", "2"]) == 0
    captured = capsys.readouterr()
    named = [line for line in captured.out.splitlines() if "r16-s0" in line]
    assert len(named) == 1 and named[0].startswith("run r16-s0: skipped:"), captured.out
    matrix = (out / "map_dW-right_matrix.csv").read_text()
    assert "r16-s0" not in matrix and "r8-s1" in matrix


def test_a_broken_run_in_a_sibling_sweep_never_stops_figures(sweep, tmp_path, capsys):
    sibling = tmp_path / "other-task"
    make_run(sibling, "r8-s0", 8, seed=3)
    (sibling / "r8-s0" / run_format.CONFIG_FILE).write_bytes(b"task: \xff\n")
    figs = tmp_path / "figs"
    assert main(["figures", str(sweep), "--out", str(figs), "--only", "cross_task", "--factor", "A"]) == 0
    assert "cross_task" in capsys.readouterr().out  # skipped with its reason: no other task beside it


def test_compare_bounds_k_by_the_rank_before_allocating(sweep, tmp_path, capsys):
    small, huge = tmp_path / "k8", tmp_path / "huge"
    assert main(["compare", str(sweep), "--out", str(small), "--k", "8"]) == 0
    assert main(["compare", str(sweep), "--out", str(huge), "--k", str(10**9)]) == 0  # no 10^9-wide basis
    assert (huge / "map_dW-right_matrix.csv").read_text() == (small / "map_dW-right_matrix.csv").read_text()
