"""Sweeps through Hydra's launchers as users pick them.

hydra/launcher=joblib runs anywhere. hydra/launcher=submitit_slurm needs a real SLURM cluster:
`make test-slurm` starts one on this machine (scripts/slurm_cluster.sh) and names its partition in
$LORASCOPE_SLURM_PARTITION; without that variable the cluster tests are skipped (they submit jobs
and write the runs to a local temporary folder, which only a one-node cluster can see).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import sweep_cmd, tiny_overrides

from lorascope import run_format, runs, slurm

PARTITION = os.environ.get("LORASCOPE_SLURM_PARTITION")
needs_slurm = pytest.mark.skipif(
    not PARTITION,
    reason="no SLURM cluster: `make test-slurm` starts one here and sets LORASCOPE_SLURM_PARTITION",
)


def _sweep(tmp_path, *overrides, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        sweep_cmd(*overrides), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def _assert_complete(sweep, names):
    assert [p.name for p in runs.list_runs(sweep)] == names
    for p in runs.list_runs(sweep):
        assert json.loads((p / "summary.json").read_text())["status"] == "complete"
        run = runs.load_run(p)
        assert run.status == "complete" and run.rank == int(p.name[1]) and run.adapters


def test_joblib_runs_two_jobs_in_two_processes(tiny_bert, topic_jsonl, tmp_path):
    runs_dir = tmp_path / "runs"
    r = _sweep(
        tmp_path, "rank=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        *tiny_overrides(tiny_bert, topic_jsonl, runs_dir),
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "n_jobs=2" in out and "launching 2 jobs" in out  # joblib launched them, not the basic launcher
    _assert_complete(runs_dir / "tiny-topics", ["r1-s0", "r2-s0"])
    assert "sweep done: 2 complete" in out  # each worker process reported its run


# sbatch's stderr as Debian's SLURM 22.05 writes it (scripts/slurm_cluster.sh's cluster).
GRES = "sbatch: error: Invalid generic resource (gres) specification\n"
PARTITION_ERR = (
    "sbatch: error: invalid partition specified: gpu\n"
    "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
)


def test_sbatch_reason_is_one_line():
    assert slurm.sbatch_reason(GRES) == "Invalid generic resource (gres) specification"
    both = "invalid partition specified: gpu; Invalid partition name specified"
    assert slurm.sbatch_reason(PARTITION_ERR) == both
    assert slurm.sbatch_reason("sbatch: error: X\nsbatch: error: Batch job submission failed: X\n") == "X"
    assert slurm.sbatch_reason("something\nelse\n") == "something else"  # not sbatch's format: kept


def test_refusal_message_names_the_request():
    params = {"partition": "cpu", "gpus_per_node": 1, "cpus_per_task": None, "mem_gb": None}
    params["timeout_min"] = 60
    line = slurm.refusal_message(GRES, params)
    assert line.startswith("lorascope: sbatch refused the job: Invalid generic resource (gres) specification")
    assert "partition=cpu gpus_per_node=1 timeout_min=60" in line and "mem_gb" not in line
    assert "\n" not in line


def test_squeue_watcher_reads_states_and_ends_forgotten_jobs():
    watcher = slurm.squeue_watcher_class()()
    for job_id in ("12_0", "12_1", "13"):
        watcher.register_job(job_id)
    watcher.use_squeue = True
    info = watcher.read_info("12_0|RUNNING|vm\n13|TIMEOUT|vm\n")
    assert info["12_0"]["State"] == "RUNNING" and info["13"]["State"] == "TIMEOUT"
    # 12_1 ended so long ago that squeue forgot it: ended, not "UNKNOWN" (which is waited for forever).
    assert info["12_1"]["State"] == "ENDED"
    watcher._info_dict.update(info)
    assert not watcher.is_done("12_0", mode="cache")
    assert watcher.is_done("12_1", mode="cache") and watcher.is_done("13", mode="cache")


@pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")  # see hydra_glue.py
def test_slurm_preset_asks_for_no_gpu_and_brings_the_callback():
    from hydra import compose, initialize_config_dir

    from lorascope import hydra_glue

    hydra_glue.register()  # as sweep.py does
    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=submitit_slurm"], return_hydra_config=True).hydra
    # Only a partition is needed on a CPU-only cluster: null leaves GPUs, CPUs and memory to its defaults.
    assert cfg.launcher.gpus_per_node is None and cfg.launcher.gres is None
    assert cfg.launcher.cpus_per_task is None and cfg.launcher.mem_gb is None
    assert cfg.callbacks.lorascope_slurm._target_ == "lorascope.slurm.SlurmCallback"
    assert "report" in cfg.callbacks  # beside the sweep's own callback, not instead of it


def _slurm_sweep(tmp_path, *overrides, timeout=600):
    runs_dir = tmp_path / "runs"
    r = _sweep(
        tmp_path, "hydra/launcher=submitit_slurm", f"hydra.launcher.partition={PARTITION}",
        "experiment=smoke", f"runs_dir={runs_dir}", *overrides, timeout=timeout,
    )  # fmt: skip
    return r, runs_dir / "smoke-minilm-bbc"


@needs_slurm
def test_slurm_sweep_completes_both_runs(tmp_path):
    r, sweep = _slurm_sweep(tmp_path, "rank=1,2")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    _assert_complete(sweep, ["r1-s0", "r2-s0"])
    assert "sweep done: 2 complete" in out
    assert "Bypassing sacct error" not in out  # no sacct warning at every poll...
    assert out.count("job states come from squeue") <= 1  # ...at most one line saying why
    assert any((sweep / ".submitit").rglob("*_log.out"))  # the jobs' logs, where the preset says


def _gres_configured() -> bool:
    gres = subprocess.run(
        ["sinfo", "--noheader", f"--partition={PARTITION}", "--format=%G"], capture_output=True, text=True
    ).stdout.split()
    return any(g != "(null)" for g in gres)


@needs_slurm
@pytest.mark.parametrize(
    "override, reason",
    [
        ("hydra.launcher.gpus_per_node=1", "Invalid generic resource (gres) specification"),
        ("hydra.launcher.partition=lorascope-no-such-partition", "lorascope-no-such-partition"),
    ],
)
def test_slurm_refusal_is_one_line(tmp_path, override, reason):
    if "gpus" in override and _gres_configured():
        pytest.skip(f"partition {PARTITION} has GPUs: sbatch accepts the request")
    r, sweep = _slurm_sweep(tmp_path, "rank=1,2", override)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("lorascope: sbatch refused the job: ") and reason in lines[0]
    assert "Traceback" not in r.stdout + r.stderr
    assert not runs.list_runs(sweep)  # nothing ran


@needs_slurm
def test_slurm_job_that_dies_ends_the_sweep(tmp_path):
    # The job script exits before the run starts: the job FAILS without a result. submitit alone,
    # without sacct, would wait for that result forever; the timeout here catches a hang.
    r, sweep = _slurm_sweep(tmp_path, "rank=1", 'hydra.launcher.setup=["exit 3"]', timeout=240)
    assert r.returncode != 0
    assert r.stderr.startswith("lorascope: a SLURM job ended without its result"), r.stderr
    assert "state: FAILED" in r.stderr and "Traceback" not in r.stderr
    assert not runs.list_runs(sweep)


@needs_slurm
def test_slurm_runs_one_run_as_two_tasks(tmp_path):
    # hydra.launcher.tasks_per_node=2: the two tasks of one job train one run through torch.distributed
    # (gloo), rank 0 writing it; the sweep reports it once.
    r, sweep = _slurm_sweep(tmp_path, "rank=2", "hydra.launcher.tasks_per_node=2", "train.threads=1")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    _assert_complete(sweep, ["r2-s0"])
    assert run_format.read_summary(sweep / "r2-s0")["processes"] == 2
    assert "sweep done: 1 complete" in out
    steps = [rec["step"] for rec in run_format.read_metrics(sweep / "r2-s0").to_dict("records")]
    assert steps == sorted(set(steps))  # one record per step: rank 0 alone wrote them
