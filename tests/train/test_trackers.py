"""logger=csv|tensorboard|mlflow|wandb: each tracker holds what metrics.jsonl holds, read back with the
tracker's own library; a missing tracker package is one line when the config is composed."""

from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest
from conftest import sweep_cmd, tiny_config, tiny_overrides

from lorascope import config, run_format, trackers
from lorascope.errors import LorascopeError

CADENCE = ("train.log_every=1", "train.eval_every=2")


def _sweep(tmp_path, *overrides):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(sweep_cmd(*overrides), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def _series(run_dir) -> dict[str, dict[int, float]]:
    """metrics.jsonl as {metric: {step: value}}, the numbers a tracker must hold."""
    out: dict[str, dict[int, float]] = {}
    for record in run_format.read_metrics(run_dir).to_dict("records"):
        for key, value in trackers.numbers(record).items():
            out.setdefault(key, {})[int(record["step"])] = value
    return out


@pytest.fixture(scope="module")
def tracked_sweep(tiny_bert, topic_jsonl, tmp_path_factory):
    """One rank-1 run of the tiny BERT logged to csv, TensorBoard and MLflow at once, via sweep.py."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("tracked")
    overrides = tiny_overrides(
        tiny_bert, topic_jsonl, tmp / "runs", "train.log_every=1", "train.eval_every=2"
    )
    r = _sweep(tmp, "rank=1", "logger=[csv,tensorboard,mlflow]", *overrides)
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp / "runs" / "tiny-topics" / "r1-s0"


def test_tensorboard_events_hold_every_metric_of_metrics_jsonl(tracked_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_sweep), size_guidance={"scalars": 0})
    events.Reload()
    expected = _series(tracked_sweep)
    assert {"loss", "val_accuracy", "grad_norm_A/query"} <= set(expected)
    assert set(expected) <= set(events.Tags()["scalars"])
    for key, by_step in expected.items():
        got = {e.step: e.value for e in events.Scalars(key)}
        assert got == pytest.approx(by_step, rel=1e-6), key  # TensorBoard keeps float32
    summary = run_format.read_summary(tracked_sweep)
    final = events.Scalars(trackers.SUMMARY_PREFIX + "val_accuracy")
    assert final[-1].value == pytest.approx(summary["val_accuracy"], rel=1e-6)


def test_mlflow_store_holds_the_config_the_metrics_and_the_summary(tracked_sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tracked_sweep.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-topics")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "r1-s0" and run.info.status == "FINISHED"
    assert run.data.params["rank"] == "1" and run.data.params["train.steps"] == "4"
    assert (
        run.data.params["model.name_or_path"]
        == run_format.read_config(tracked_sweep)["model"]["name_or_path"]
    )
    for key, by_step in _series(tracked_sweep).items():
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert got == by_step, key  # float64 in the store: exact
    summary = run_format.read_summary(tracked_sweep)
    assert run.data.metrics[trackers.SUMMARY_PREFIX + "wall_time_s"] == summary["wall_time_s"]
    assert run.data.tags["status"] == "complete"


def test_csv_is_metrics_jsonl_as_a_table(tracked_sweep):
    table = pd.read_csv(tracked_sweep / "metrics.csv")
    pd.testing.assert_frame_equal(table, run_format.read_metrics(tracked_sweep), check_dtype=False)


def test_a_relaunch_with_a_tracker_skips_the_complete_run(tracked_sweep, tiny_bert, topic_jsonl):
    # Trackers do not change what a run computes: a complete run tracked differently is the same run.
    tmp = tracked_sweep.parents[2]
    overrides = tiny_overrides(
        tiny_bert, topic_jsonl, tmp / "runs", "train.log_every=1", "train.eval_every=2"
    )
    r = _sweep(tmp, "rank=1", *overrides)
    assert r.returncode == 0 and "1 skipped" in r.stdout + r.stderr, r.stdout + r.stderr


def _wandb_records(path):
    """The protobuf records of an offline W&B run file: a LevelDB-style log (32 KiB blocks, each record
    a 7-byte header: crc32, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4) after a 7-byte magic."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, part, block = path.read_bytes(), 7, b"", 32768
    assert data.startswith(b":W&B")
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        part, pos = part + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            part = b""
            yield record


def _finished_records(path, timeout: float = 60.0) -> list:
    """The records of a W&B run file once W&B's writer has closed it with its "exit" record. The file is
    written by W&B's own service process, which can still be writing when `run.finish()` has returned
    (seen on a busy machine: a file without its history records); after `timeout` seconds, whatever is
    there, for the assertions to judge."""
    import time

    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(_wandb_records(path))
        except DecodeError:  # a record still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_wandb_offline_run_holds_the_metrics_and_the_summary(tiny_bert, topic_jsonl, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lorascope.train import train

    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "sweep" / "r2-s0"
    cfg = tiny_config(tiny_bert, topic_jsonl, steps=4, train={"log_every": 1}, logger={"wandb": {}})
    summary = train(cfg, run_dir)
    (log_file,) = (tmp_path / "sweep" / "wandb").glob("offline-run-*/run-*.wandb")  # offline: nothing sent
    history: dict[str, dict[int, float]] = {}
    final: dict[str, object] = {}
    for record in _finished_records(log_file):
        kind = record.WhichOneof("record_type")
        items = (
            record.history.item if kind == "history" else record.summary.update if kind == "summary" else []
        )
        values = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
        if kind == "history":
            step = values.pop("_step")
            for key, value in values.items():
                if not key.startswith("_"):
                    history.setdefault(key, {})[step] = value
        elif kind == "summary":
            final |= values
    assert history == _series(run_dir)
    assert final["val_accuracy"] == summary["val_accuracy"] and final["status"] == "complete"
    config_record = next(
        r.run.config for r in _wandb_records(log_file) if r.WhichOneof("record_type") == "run"
    )
    config_values = {i.key: json.loads(i.value_json) for i in config_record.update}
    assert config_values["rank"] == 2 and config_values["train.steps"] == 4


def test_a_missing_tracker_package_is_one_line_at_compose_time(monkeypatch):
    real = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda n: None if n == "mlflow" else real(n))
    with pytest.raises(LorascopeError, match=r"logger=mlflow needs the mlflow package.*lorascope\[mlflow\]"):
        config.from_dict({"logger": {"mlflow": {}}})
    config.from_dict({"logger": {"csv": {}}})  # a tracker without a package is always there


def test_a_bad_tracker_value_stops_the_sweep_before_any_model_loads(tmp_path):
    r = _sweep(tmp_path, "rank=1", "logger=wandb", "logger.wandb.mode=bogus", f"runs_dir={tmp_path}")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "lorascope: error: logger.wandb.mode=bogus must be offline, online or disabled"
    )
    assert not any(tmp_path.rglob("config.yaml"))


def test_a_failed_run_is_marked_failed_in_the_tracker(tiny_bert, topic_jsonl, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from lorascope.launch import launch

    cfg = tiny_config(tiny_bert, topic_jsonl, steps=4, train={"fail_at_step": 2}, logger={"mlflow": {}})
    summary = launch(cfg, tmp_path / "sweep" / "r2-s0")
    assert summary["status"] == "failed"
    client = MlflowClient(f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert trackers._open == []  # nothing left open for the next run of the process


def test_a_resumed_run_keeps_one_tensorboard_value_per_step(tiny_bert, topic_jsonl, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lorascope.train import RunFailed, train

    run_dir = tmp_path / "sweep" / "r2-s0"
    train_keys = {"log_every": 1, "snapshot_every": 2}
    killed = tiny_config(tiny_bert, topic_jsonl, steps=6, train={**train_keys, "fail_at_step": 4},
                         logger={"tensorboard": {}})  # fmt: skip
    with pytest.raises(RunFailed):
        train(killed, run_dir)  # steps 1-3 logged, the snapshot at step 2
    trackers.fail_open({"status": "failed"})
    cfg = tiny_config(tiny_bert, topic_jsonl, steps=6, train=train_keys, logger={"tensorboard": {}})
    train(cfg, run_dir, resume_run=True)  # logs step 3 again
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("loss")]
    expected = _series(run_dir)["loss"]
    assert [s for s, _ in got] == sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert dict(got) == pytest.approx(expected, rel=1e-6)
