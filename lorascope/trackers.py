"""Experiment trackers: TensorBoard, MLflow, W&B and a CSV table, mirroring metrics.jsonl.

    tracking = trackers.start(cfg, run_dir)     # the run's config as hyper-parameters
    tracking.log(record, step)                  # each record train() appends to metrics.jsonl
    tracking.finish(summary)                    # the summary as final metrics; closes every tracker

metrics.jsonl stays the record of a run: analyses read only it, and a tracker sees exactly the
records written there, when they are written. Which trackers run is `cfg.logger` (conf/logger/);
their packages are optional extras, checked when the config is composed (`config.check_trackers`)
and imported only here, when a run starts. Where torch.distributed runs, only rank 0 reports.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from lorascope import run_format
from lorascope.config import SweepConfig, to_dict

log = logging.getLogger(__name__)

SUMMARY_PREFIX = "summary/"  # the summary's numbers, apart from the per-step series of the same names


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}; lists become their text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = str(v) if isinstance(v, list | tuple) else v
    return out


def numbers(d: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a flattened record (bools and the step itself are not metrics)."""
    return {
        k: float(v)
        for k, v in flatten(d).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "step" and math.isfinite(v)
    }


class Tracker:
    """One tracker: `start` before the first record, `log` each record, `finish` once."""

    def start(self, config: dict[str, Any]) -> None: ...

    def log(self, record: dict[str, Any], step: int) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


class CsvTracker(Tracker):
    """metrics.jsonl as one CSV table (a column per key), rewritten from metrics.jsonl at each record,
    so that it always equals it, a resumed run included."""

    def __init__(self, run_dir: Path, file: str) -> None:
        self.run_dir, self.path = run_dir, run_dir / file

    def log(self, record: dict[str, Any], step: int) -> None:
        frame = run_format.read_metrics(self.run_dir)
        run_format.atomic_write(self.path, lambda tmp: frame.to_csv(tmp, index=False))


class TensorBoardTracker(Tracker):
    """Event files in the run folder: a scalar per metric and step; the config as hparams at the end."""

    def __init__(self, log_dir: Path, resumed_at: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events its killed process wrote after the snapshot.
        self.writer = SummaryWriter(str(log_dir), purge_step=None if resumed_at is None else resumed_at + 1)
        self.config: dict[str, Any] = {}
        self.last_step = 0

    def start(self, config: dict[str, Any]) -> None:
        # TensorBoard's hparams take numbers, strings and bools; None is written as its text.
        self.config = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in config.items()}

    def log(self, record: dict[str, Any], step: int) -> None:
        for key, value in numbers(record).items():
            self.writer.add_scalar(key, value, step)
        self.last_step = step
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        final = {SUMMARY_PREFIX + k: v for k, v in numbers(summary).items()}
        config = {**self.config, "status": str(summary.get("status"))}
        for event in hparams(config, final):  # the HPARAMS tab: config beside the final numbers
            self.writer.file_writer.add_summary(event)
        for key, value in final.items():
            self.writer.add_scalar(key, value, self.last_step)
        self.writer.close()


class MlflowTracker(Tracker):
    """One MLflow run per run folder, in an experiment named after the sweep."""

    BATCH = 100  # MLflow's limit of params (and of metrics: 1000) per log_batch call

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, run_dir: Path) -> None:
        # MLflow sends usage telemetry by default; a local store asked for none (set it false to allow).
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                exp_id = self.client.create_experiment(experiment)
            except Exception:  # another job of the sweep created it first
                exp_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            exp_id = found.experiment_id
        tags = {"lorascope.run_dir": str(run_dir)}
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id

    def start(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in config.items()]
        for i in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + self.BATCH])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), self.BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + self.BATCH])

    def log(self, record: dict[str, Any], step: int) -> None:
        self._metrics(numbers(record), step)

    def finish(self, summary: dict[str, Any]) -> None:
        self._metrics({SUMMARY_PREFIX + k: v for k, v in numbers(summary).items()}, summary.get("steps") or 0)
        self.client.set_tag(self.run_id, "status", str(summary.get("status")))
        status = "FINISHED" if summary.get("status") == "complete" else "FAILED"
        self.client.set_terminated(self.run_id, status)


class WandbTracker(Tracker):
    """A W&B run (offline unless logger.wandb.mode=online), grouped by sweep, named after the run."""

    def __init__(self, settings, run_name: str, group: str, folder: Path) -> None:
        self.settings, self.run_name, self.group, self.folder = settings, run_name, group, folder
        self.run = None

    def start(self, config: dict[str, Any]) -> None:
        import wandb

        self.folder.mkdir(parents=True, exist_ok=True)
        s = self.settings
        self.run = wandb.init(
            project=s.project, entity=s.entity, mode=s.mode, dir=str(self.folder), name=self.run_name,
            group=self.group, config=config, settings=wandb.Settings(silent=True, console="off"),
        )  # fmt: skip

    def log(self, record: dict[str, Any], step: int) -> None:
        self.run.log(numbers(record), step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({**numbers(summary), "status": str(summary.get("status"))})
        self.run.finish(exit_code=0 if summary.get("status") == "complete" else 1)


class Tracking:
    """The selected trackers as one: each call goes to every tracker."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def start(self, config: dict[str, Any]) -> None:
        for t in self.trackers:
            t.start(config)

    def log(self, record: dict[str, Any], step: int) -> None:
        for t in self.trackers:
            t.log(record, step)

    def finish(self, summary: dict[str, Any]) -> None:
        trackers, self.trackers = self.trackers, []  # once, even if a tracker raises
        for t in trackers:
            t.finish(summary)


_open: list[Tracking] = []  # started and not finished: `fail_open` closes them when a run fails


def _rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def build(cfg: SweepConfig, run_dir: Path, resumed_at: int | None = None) -> list[Tracker]:
    """The trackers `cfg.logger` selects, for the run in `run_dir` (its parent is the sweep folder)."""
    lg, sweep = cfg.logger, run_dir.parent
    out: list[Tracker] = []
    if lg.csv is not None:
        out.append(CsvTracker(run_dir, lg.csv.file))
    if lg.tensorboard is not None:
        out.append(TensorBoardTracker(Path(lg.tensorboard.log_dir or run_dir), resumed_at))
    if lg.mlflow is not None:
        uri = lg.mlflow.tracking_uri or f"sqlite:///{(sweep / 'mlflow.db').resolve()}"
        out.append(MlflowTracker(uri, lg.mlflow.experiment or sweep.name, run_dir.name, run_dir))
    if lg.wandb is not None:
        out.append(WandbTracker(lg.wandb, run_dir.name, sweep.name, Path(lg.wandb.dir or sweep)))
    return out


def start(cfg: SweepConfig, run_dir: str | Path, resumed_at: int | None = None) -> Tracking:
    """Start the selected trackers for one run (none on ranks other than 0) with its config."""
    tracking = Tracking(build(cfg, Path(run_dir), resumed_at) if _rank0() else [])
    if tracking.trackers:
        log.info(
            "tracking with %s", ", ".join(type(t).__name__.removesuffix("Tracker") for t in tracking.trackers)
        )
        tracking.start(flatten(to_dict(cfg)))
        _open.append(tracking)
    return tracking


def finish(tracking: Tracking, summary: dict[str, Any]) -> None:
    if tracking in _open:
        _open.remove(tracking)
    tracking.finish(summary)


def fail_open(summary: dict[str, Any]) -> None:
    """Finish the trackers of a run that raised (a failed run is marked failed in each tracker)."""
    while _open:
        tracking = _open.pop()
        try:
            tracking.finish(summary)
        except Exception as e:  # a tracker's own failure must not hide the run's
            log.warning("a tracker failed to finish: %s", e)
