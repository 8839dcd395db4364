"""`python sweep.py ...` as users run it: a tiny sweep into tmp_path, relaunch, failures."""

from __future__ import annotations

import os
import subprocess

from conftest import sweep_cmd, tiny_overrides

from lorascope import runs


def _sweep(tmp_path, *overrides):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        sweep_cmd(*overrides), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def _snapshot(folder):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sweep_writes_runs_then_skips_them(tiny_bert, topic_jsonl, tmp_path):
    runs_dir = tmp_path / "runs"
    r = _sweep(tmp_path, "rank=1,2", *tiny_overrides(tiny_bert, topic_jsonl, runs_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    sweep = runs_dir / "tiny-topics"
    assert [p.name for p in runs.list_runs(sweep)] == ["r1-s0", "r2-s0"]
    for p in runs.list_runs(sweep):
        run = runs.load_run(p)
        assert run.status == "complete" and run.rank == int(p.name[1])
        assert not (p / ".hydra").exists() and not any(p.glob("*.log"))  # no Hydra clutter in runs
    assert not any(d.name.isdigit() for d in sweep.iterdir())  # no 0/1/2 job folders
    assert "sweep done: 2 complete" in r.stdout + r.stderr
    before = _snapshot(sweep / "r1-s0") | _snapshot(sweep / "r2-s0")

    # Threads, logging cadence and evaluation batch size do not change what a run computes.
    overrides = tiny_overrides(tiny_bert, topic_jsonl, runs_dir)
    overrides = [o for o in overrides if not o.startswith("train.threads=")]
    again = _sweep(tmp_path, "rank=1,2", *overrides, "train.threads=2", "train.log_every=3",
                   "train.eval_batch_size=7")  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 skipped" in again.stdout + again.stderr
    assert _snapshot(sweep / "r1-s0") | _snapshot(sweep / "r2-s0") == before


def test_failing_run_is_recorded_and_the_sweep_goes_on(tiny_bert, topic_jsonl, tmp_path):
    runs_dir = tmp_path / "runs"
    r = _sweep(
        tmp_path, "rank=1", "seed=0,1",
        *tiny_overrides(tiny_bert, topic_jsonl, runs_dir, "run_name=r${rank}-s${seed}"),
        "train.fail_at_step=${seed}",  # seed 1 fails at step 1; seed 0 never reaches step 0
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    sweep = runs_dir / "tiny-topics"
    assert runs.read_summary(sweep / "r1-s1")["status"] == "failed"
    assert "step 1" in runs.read_summary(sweep / "r1-s1")["reason"]
    assert runs.is_complete(sweep / "r1-s0")
    assert "1 complete, 1 failed" in out
