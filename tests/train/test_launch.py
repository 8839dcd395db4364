"""Runs that never lie: one writer per run folder, divergence is failure, killed runs resume exactly,
bad values are refused before anything loads, files are readable by others."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest
from conftest import sweep_cmd, tiny_config, tiny_overrides

from lorascope import run_format, runs
from lorascope.hydra_glue import remove_stale_ledgers
from lorascope.launch import WRITER_LOCK, launch, lock_path, run_lock


def _cfg(model, data, **train_kw):
    return tiny_config(model, data, train=train_kw)


def _launch_in_subprocess(cfg: dict, out, patch: str = "") -> subprocess.Popen:
    code = (
        "import json, sys\n"
        f"{patch}\n"
        "from lorascope.launch import launch\n"
        "print(json.dumps(launch(json.loads(sys.argv[1]), sys.argv[2])))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(cfg), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _status(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])["status"]


def test_two_processes_with_two_configs_never_both_write_a_run(tiny_bert, topic_jsonl, tmp_path):
    out = tmp_path / "r2-s0"
    procs = [_launch_in_subprocess(_cfg(tiny_bert, topic_jsonl, steps=steps), out) for steps in (30, 3)]
    statuses = sorted(_status(p) for p in procs)
    assert statuses == ["busy", "complete"]  # one trained it; the other saw the lock and left it alone
    run = runs.load_run(out)
    # every file of the run tells the same story: one config, one training
    assert run.config["train"]["steps"] == run.meta["step"] == run.summary["steps"]
    assert (out / run_format.INIT_FILE).is_file() and run.status == "complete"


def test_a_held_lock_is_skipped_and_a_killed_holders_lock_is_not(tiny_bert, topic_jsonl, tmp_path):
    out = tmp_path / "r2-s0"
    with run_lock(out) as holder:
        assert holder is None
        busy = launch(_cfg(tiny_bert, topic_jsonl, steps=2), out)
    assert busy["status"] == "busy" and "being trained by" in busy["reason"]
    assert [p.name for p in out.iterdir()] == [WRITER_LOCK]  # launch left the folder as it found it
    # a process holding the lock dies by SIGKILL: the kernel drops its lock
    code = (
        "import os, pathlib, signal, sys\nfrom lorascope.launch import run_lock\n"
        "with run_lock(pathlib.Path(sys.argv[1])):\n    os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], timeout=120)
    assert proc.returncode == -signal.SIGKILL and lock_path(out).is_file()
    assert launch(_cfg(tiny_bert, topic_jsonl, steps=2), out)["status"] == "complete"


@pytest.mark.parametrize(
    "train_kw, why",
    [({"lr": 1e3, "steps": 10}, "diverge"), ({"lr": 1e30, "steps": 1}, "diverged")],
)
def test_divergence_is_a_failed_run_with_strict_json(tiny_bert, topic_jsonl, tmp_path, train_kw, why):
    out = tmp_path / "r2-s0"
    s = launch(_cfg(tiny_bert, topic_jsonl, **train_kw), out)
    assert s["status"] == "failed" and why in s["reason"].lower(), s
    assert not runs.is_complete(out) and not (out / run_format.ADAPTER_FILE).exists()

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    json.loads((out / run_format.SUMMARY_FILE).read_text(), parse_constant=refuse)
    for line in (out / run_format.METRICS_FILE).read_text().splitlines():
        json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.lr=-1", "train.lr=-1.0 must be a finite positive number"),
        ("train.batch_size=0", "train.batch_size=0 must be at least 1"),
        ("train.seq_len=0", "train.seq_len=0 must be at least 1"),
        ("train.steps=0", "train.steps=0 must be at least 1"),
        ("alpha=0", "alpha=0.0 must be a finite non-zero number"),
        ("method=bogus", "method=bogus is not one of lora, full"),
    ],
)
def test_bad_values_are_one_line_before_any_model_loads(tmp_path, override, needle):
    proc = subprocess.run(
        sweep_cmd(override, "rank=1,4", f"runs_dir={tmp_path}"), cwd=tmp_path, capture_output=True, text=True,
        timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"lorascope: error: {needle}"]
    assert not any(tmp_path.rglob("config.yaml"))  # no run was started


def test_a_missing_preset_is_named_in_a_multirun(tmp_path):
    proc = subprocess.run(
        sweep_cmd("rank=1,4", "model=doesnotexist", f"runs_dir={tmp_path}"), cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Could not find 'model/doesnotexist'" in proc.stderr and "Ambiguous" not in proc.stderr


def test_run_files_are_readable_as_the_umask_allows(tiny_bert, topic_jsonl, tmp_path):
    old = os.umask(0o022)
    try:
        launch(_cfg(tiny_bert, topic_jsonl, steps=2), tmp_path / "r2-s0")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "r2-s0").rglob("*") if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


KILL_AFTER_STEP_5 = """
import os
from lorascope import run_format, runs
_append = run_format.append_metrics
def _append_then_die(run_dir, record):
    _append(run_dir, record)
    if record.get("step") == 5:
        os.kill(os.getpid(), 9)  # killed mid-training, after the snapshot of step 4
run_format.append_metrics = _append_then_die
"""


def _files(folder):
    """The run's files (the writer lock, which names its process, is not one)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != WRITER_LOCK)
    return {p.relative_to(folder): p.read_bytes() for p in files}


def test_a_killed_run_resumes_from_its_last_snapshot_byte_identical(tiny_bert, topic_jsonl, tmp_path):
    cfg = _cfg(tiny_bert, topic_jsonl, steps=8, snapshot_every=2, log_every=1, eval_every=3)
    cfg["lora"] = {"dropout": 0.1}  # the dropout stream must resume where it stopped too
    whole = tmp_path / "whole" / "r2-s0"
    assert launch(cfg, whole)["status"] == "complete"

    out = tmp_path / "killed" / "r2-s0"
    proc = _launch_in_subprocess(cfg, out, patch=KILL_AFTER_STEP_5)
    proc.communicate(timeout=300)
    assert proc.returncode == -9 and not runs.is_complete(out)
    assert sorted(run_format.snapshot_files(out)) == [2, 4]
    (out / ".adapter.safetensors.1234.tmp").write_bytes(b"half a file")  # a write the kill cut short
    early = {s: (p.stat().st_mtime_ns, p.read_bytes()) for s, p in run_format.snapshot_files(out).items()}

    assert launch(cfg, out)["status"] == "complete"
    assert not (out / ".adapter.safetensors.1234.tmp").exists()
    # the snapshots written before the kill are the run's trajectory: kept as they were
    assert {
        s: (p.stat().st_mtime_ns, p.read_bytes()) for s, p in run_format.snapshot_files(out).items() if s <= 4
    } == early
    got, want = _files(out), _files(whole)
    assert set(got) == set(want) and "checkpoints/resume.safetensors" not in map(str, got)
    for name in want:
        if name.name != run_format.SUMMARY_FILE:  # wall times differ
            assert got[name] == want[name], name
    summary = json.loads((out / run_format.SUMMARY_FILE).read_text())
    assert (
        summary["val_accuracy"] == json.loads((whole / run_format.SUMMARY_FILE).read_text())["val_accuracy"]
    )


def test_stale_ledgers_are_removed_and_live_ones_kept(tmp_path):
    import fcntl

    live, dead = tmp_path / "live.jsonl", tmp_path / "dead.jsonl"
    live.write_text("")
    dead.write_text('{"run": "x", "status": "complete"}\n')
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    # flock locks belong to the open file: a second open, as another process would, cannot take it
    assert remove_stale_ledgers(tmp_path) == [dead]
    assert live.is_file() and not dead.exists()
    os.close(fd)


def test_a_sweep_leaves_no_ledger_behind(tiny_bert, topic_jsonl, tmp_path):
    proc = subprocess.run(
        sweep_cmd("rank=1", *tiny_overrides(tiny_bert, topic_jsonl, tmp_path / "runs", "train.steps=1")),
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "runs" / "tiny-topics" / ".sweeps").iterdir()) == []
