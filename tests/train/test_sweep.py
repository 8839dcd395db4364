"""`python sweep.py ...` as users run it: a tiny sweep into tmp_path, relaunch, failures."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from conftest import sweep_cmd, tiny_overrides

from lorascope import run_format, runs


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
    assert run_format.read_summary(sweep / "r1-s1")["status"] == "failed"
    assert "step 1" in run_format.read_summary(sweep / "r1-s1")["reason"]
    assert runs.is_complete(sweep / "r1-s0")
    assert "1 complete, 1 failed" in out


def _jobs_and_report(out: str) -> tuple[list[str], list[str]]:
    """The jobs Hydra's launcher started (its `#N : overrides` lines) and the sweep report's run lines."""
    jobs = [line for line in out.splitlines() if re.search(r"\] - \t#\d+ : ", line)]
    report = out.split("sweep done:", 1)[1].splitlines()[1:] if "sweep done:" in out else []
    return jobs, [line for line in report if "lorascope.hydra_glue" in line]


def test_full_fine_tuning_is_launched_once_across_ranks(tiny_bert, topic_jsonl, tmp_path):
    # Full fine-tuning has no rank: rank=1,2 gives 2 LoRA runs and 1 full run, so 3 jobs, not 4.
    runs_dir = tmp_path / "runs"
    r = _sweep(tmp_path, "method=lora,full", "rank=1,2", *tiny_overrides(tiny_bert, topic_jsonl, runs_dir))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    jobs, report = _jobs_and_report(out)
    assert len(jobs) == 3, jobs
    assert [line.split()[-1].rsplit("/", 1)[-1] for line in report] == ["r1-s0", "r2-s0", "full-s0"], report
    assert "not launching method=full rank=2: the same run (full-s0) as method=full rank=1" in out
    assert "sweep done: 3 complete" in out


def test_jobs_sharing_a_folder_with_different_experiments_are_all_launched(tiny_bert, topic_jsonl, tmp_path):
    # One run folder for two learning rates is a user mistake the run's own check reports: not dropped.
    runs_dir = tmp_path / "runs"
    overrides = tiny_overrides(tiny_bert, topic_jsonl, runs_dir, "run_name=one", "train.steps=1")
    r = _sweep(tmp_path, "train.lr=1e-3,2e-3", *overrides)
    jobs, report = _jobs_and_report(r.stdout + r.stderr)
    assert r.returncode == 1 and len(jobs) == 2 and len(report) == 2, r.stdout + r.stderr
    assert "different config" in r.stdout + r.stderr


@pytest.mark.slow
def test_the_smoke_sweep_over_methods_launches_three_jobs(tmp_path):
    r = _sweep(tmp_path, "method=lora,full", "rank=1,8", "experiment=smoke", f"runs_dir={tmp_path / 'runs'}",
               "train.threads=1")  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    jobs, report = _jobs_and_report(out)
    assert len(jobs) == 3 and len(report) == 3, out[-3000:]
