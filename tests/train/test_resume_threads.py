"""Bit-identity holds per CPU thread count: the run records it, and a resume with another is refused."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import tiny_config

from lorascope import resume, run_format, runs
from lorascope.launch import launch

KILL_AFTER_STEP_3 = """
import os
from lorascope import run_format, runs
_append = run_format.append_metrics
def _append_then_die(run_dir, record):
    _append(run_dir, record)
    if record.get("step") == 3:
        os.kill(os.getpid(), 9)
run_format.append_metrics = _append_then_die
"""


def test_a_resume_with_another_thread_count_is_refused(tiny_bert, topic_jsonl, tmp_path):
    cfg = tiny_config(
        tiny_bert, topic_jsonl, steps=6, train={"snapshot_every": 2, "log_every": 1, "threads": 1}
    )
    out = tmp_path / "r2-s0"
    code = (
        f"import json, sys\n{KILL_AFTER_STEP_3}\nfrom lorascope.launch import launch\n"
        "launch(json.loads(sys.argv[1]), sys.argv[2])"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg), str(out)], timeout=300)
    assert proc.returncode == -9 and resume.load_state(out) is not None

    other = {**cfg, "train": {**cfg["train"], "threads": 2}}
    refused = launch(other, out)
    assert refused["status"] == "failed" and "train.threads=1" in refused["reason"], refused
    assert "\n" not in refused["reason"] and not runs.is_complete(out)
    assert resume.load_state(out) is not None  # kept: the same thread count still resumes it

    done = launch(cfg, out)
    assert done["status"] == "complete" and done["threads"] == 1
    assert json.loads((out / run_format.SUMMARY_FILE).read_text())["threads"] == 1
