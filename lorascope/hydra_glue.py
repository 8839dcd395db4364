"""The Hydra glue of `python sweep.py`: the schema in Hydra's ConfigStore, and the sweep report.

`register()` stores `lorascope.config.SweepConfig` as `lorascope_schema`, the first entry of
conf/config.yaml's defaults list, so a wrong type on the command line (`train.steps=ten`) fails when
Hydra composes the config. `SweepReport`, a Hydra callback named in conf/config.yaml, checks the
config's values before any job starts, and at the end of a multirun logs one line per run and exits
non-zero if any failed.

The jobs of a multirun may run in other processes (joblib) or on other machines (SLURM), so each
job appends its outcome to a ledger file in the sweep folder (which a cluster must share anyway),
whose path reaches the jobs through the environment. The sweep holds an OS lock on its ledger while
it runs; a ledger nobody holds belongs to a sweep that was killed, and the next sweep removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lorascope.config import SweepConfig, from_dict, to_dict
from lorascope.distributed import check_devices, env_rank
from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

# conf/hydra/launcher/{joblib,submitit_slurm}.yaml share their names with the plugins' schemas, so
# Hydra type-checks them against those schemas: wanted here, but Hydra warns about it. Set here, not in
# sweep.py, so that launcher worker processes (which import this module for SweepReport) have it too.
warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema with the same name")

LEDGER_ENV = "LORASCOPE_SWEEP_LEDGER"  # where each job appends its outcome
LEDGER_DIR = ".sweeps"  # inside the sweep folder


def register() -> None:
    """Store the schema, and the SLURM launcher's callback, in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from lorascope import slurm

    ConfigStore.instance().store(name="lorascope_schema", node=SweepConfig)
    slurm.register()  # hydra/launcher=submitit_slurm: an sbatch refusal in one line, states from squeue


def plain_config(config: DictConfig) -> dict[str, Any]:
    """The run's part of a composed config (no `hydra` node) as a plain, resolved dict."""
    return {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}


def _holds_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_stale_ledgers(folder: Path, keep: Path | None = None) -> list[Path]:
    """Delete the ledgers in `folder` that no live sweep holds (their sweep was killed)."""
    removed = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
        if path == keep:
            continue
        with contextlib.suppress(FileNotFoundError), open(path) as f:
            if _holds_lock(f.fileno()):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def record_outcome(run_dir: str | Path, summary: dict[str, Any]) -> None:
    """Append one job's outcome to the sweep's ledger (a no-op outside a sweep)."""
    ledger = os.environ.get(LEDGER_ENV)
    if env_rank() > 0:
        return  # one run trained by several processes is one outcome, rank 0's
    if not ledger or not Path(ledger).parent.is_dir():
        return
    row = {"run": str(run_dir), "status": summary.get("status"), "reason": summary.get("reason")}
    with open(ledger, "a") as f:  # one short line per job: appends from parallel jobs do not interleave
        f.write(json.dumps(row) + "\n")


class SweepReport(Callback):
    """Check the config before any job, collect each job's outcome, report them at the end."""

    def __init__(self) -> None:
        self._ledger: Path | None = None
        self._fd: int | None = None

    def on_multirun_start(self, config: DictConfig, **kw: Any) -> None:
        # The base config holds every single-valued override: a bad one (train.lr=-1) is reported
        # here, once, before any job loads a model. Swept values are checked by each job.
        if env_rank() > 0:
            return  # under torchrun every rank runs the sweep; rank 0 alone checks and reports it
        try:
            cfg = from_dict(plain_config(config))
            check_devices(cfg.train.devices, cfg.train.device, cfg.train.strategy)
            if cfg.task.source == "hf":  # a split or field the data set lacks: one line now, not per job
                from lorascope import hf_data

                hf_data.check(to_dict(cfg)["task"])
        except LorascopeError as e:
            print(f"lorascope: error: {e}", file=sys.stderr)
            sys.exit(2)
        folder = Path(config.hydra.sweep.dir) / LEDGER_DIR
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # runs_dir a file, or a folder this user cannot write
            reason = f"runs_dir={config.runs_dir}: cannot hold the sweep folder ({e.strerror})"
            print(f"lorascope: error: {reason}", file=sys.stderr)
            sys.exit(2)
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}-{os.getpid()}.jsonl"
        self._ledger = folder / name
        self._fd = os.open(self._ledger, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # released when this process ends, however it ends
        for path in remove_stale_ledgers(folder, keep=self._ledger):
            log.info("removed the ledger of an interrupted sweep: %s", path.name)
        os.environ[LEDGER_ENV] = str(self._ledger)

    def on_job_end(self, config: DictConfig, job_return: Any, **kw: Any) -> None:
        try:
            summary = job_return.return_value
        except Exception as e:  # the job raised: Hydra keeps the exception as the return value
            summary = {"status": "failed", "reason": f"{type(e).__name__}: {e}".splitlines()[0]}
        if isinstance(summary, dict):
            record_outcome(job_return.hydra_cfg.hydra.runtime.output_dir, summary)

    def on_multirun_end(self, config: DictConfig, **kw: Any) -> None:
        if self._ledger is None:
            return
        rows = []
        if self._ledger.is_file():
            rows = [json.loads(line) for line in self._ledger.read_text().splitlines() if line.strip()]
        self._ledger.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
        os.environ.pop(LEDGER_ENV, None)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        log.info("sweep done: %s", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no job")
        for r in rows:
            log.info("  %-9s %s%s", r["status"], r["run"], f"  ({r['reason']})" if r.get("reason") else "")
        if counts.get("failed"):
            sys.exit(1)
