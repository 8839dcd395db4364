"""One writer per run folder, even when the lock file beside it is deleted or replaced mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import ROOT, sweep_cmd, tiny_overrides

from lorascope import run_format, runs
from lorascope.launch import lock_path, run_lock

# Imported at start-up by the sweep process whose PYTHONPATH holds it: every metrics record takes a
# while, so that the run is still training when the second sweep arrives.
SLOW_METRICS = """
import time
from lorascope import run_format
_append = run_format.append_metrics
def _slow_append(run_dir, record):
    _append(run_dir, record)
    time.sleep(0.4)
run_format.append_metrics = _slow_append
"""


def _sweep(tmp_path, runs_dir, *extra, slow: bool = False) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if slow:
        patch = tmp_path / "slow"
        patch.mkdir(exist_ok=True)
        (patch / "sitecustomize.py").write_text(SLOW_METRICS)
        env["PYTHONPATH"] = f"{patch}{os.pathsep}{ROOT}"
    return subprocess.Popen(
        sweep_cmd("rank=2", *extra), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("second_config", [["train.lr=0.01"], []], ids=["another config", "the same config"])
def test_a_deleted_lock_never_lets_a_second_sweep_take_a_running_run(
    tiny_bert, topic_jsonl, tmp_path, second_config
):
    runs_dir = tmp_path / "runs"
    common = tiny_overrides(tiny_bert, topic_jsonl, runs_dir, "train.steps=30", "train.log_every=1")
    out = runs_dir / "tiny-topics" / "r2-s0"
    first = _sweep(tmp_path, runs_dir, *common, slow=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / run_format.METRICS_FILE).is_file() or len(run_format.read_metrics(out)) < 3:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
            time.sleep(0.2)
        lock_path(out).unlink()  # a tidy-up while the run trains
        second = subprocess.run(
            sweep_cmd("rank=2", *common, *second_config), cwd=tmp_path, capture_output=True, text=True,
            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert first.poll() is None, "the first sweep ended before the second one arrived"
        log = second.stdout + second.stderr
        assert second.returncode == 0, log[-3000:]
        assert "busy" in log and "cleaning" not in log and "resuming" not in log
    finally:
        text = first.communicate(timeout=300)[0]
    assert first.returncode == 0, text[-3000:]
    run = runs.load_run(out)
    assert run.status == "complete" and run.config["train"]["lr"] == 3e-3  # the first sweep's run
    steps = [json.loads(line)["step"] for line in (out / run_format.METRICS_FILE).read_text().splitlines()]
    assert steps == list(range(31))  # one record per step, all from one writer


def test_a_replaced_lock_file_is_not_taken_for_the_lock(tmp_path):
    out = tmp_path / "r2-s0"
    with run_lock(out) as holder:
        assert holder is None
        lock_path(out).unlink()
        lock_path(out).write_text("")  # a new file under the lock's name: another inode, unlocked
        with run_lock(out) as second:
            assert second is not None  # the lock inside the folder still guards it
