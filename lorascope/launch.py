"""launch(cfg, run_dir): what a sweep job does with its run folder, under the folder's lock.

    complete, same experiment        skip it (files untouched)
    complete, another experiment     leave it alone; the job fails and says so
    killed with a resume state       resume from the last snapshot (same experiment only)
    anything else incomplete/failed  clean it and train from scratch

One process at a time: an OS lock (fcntl.flock) on `.<run>.lock` beside the run folder guards all of
it. The kernel drops the lock when its process ends, however it ends (a kill -9 included), so a stale
lock never blocks a relaunch; a second job that finds the run locked skips it with one line.
Every failure becomes a record ("status": "failed" and a "reason"), never an exception, so a sweep
goes on past a bad run.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lorascope import distributed, resume, runs, spawned, trackers
from lorascope.config import SweepConfig, comparable, from_dict, to_dict
from lorascope.distributed import World
from lorascope.errors import LorascopeError
from lorascope.train import RunFailed, pick_device, train

log = logging.getLogger(__name__)


def lock_path(run_dir: Path) -> Path:
    """Beside the run folder, not in it: cleaning the folder for a redo must not remove the lock."""
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[str | None]:
    """Hold the run folder's lock: yields None once held, or the holder ("host pid N") if another
    process holds it (then nothing is held)."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            yield holder
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        yield None
    finally:
        os.close(fd)  # releases the lock


def _failed(reason: str) -> dict[str, Any]:
    return {"status": "failed", "reason": reason}


def launch(cfg: SweepConfig | dict, out_dir: str | Path) -> dict[str, Any]:
    """Run `train` unless out_dir already holds this run complete; never raises for a bad run.

    Returns the summary: status complete, skipped (complete before with the same config), busy
    (another process holds the run), or failed (with "reason"). Under torchrun (or the tasks of a
    SLURM job) every rank calls this for the same run: rank 0 decides under the lock, the others follow."""
    out = Path(out_dir)
    try:
        cfg = from_dict(cfg)
        distributed.check_devices(cfg.train.devices, cfg.train.device, cfg.train.strategy)
    except LorascopeError as e:
        return _failed(str(e))
    world = World.from_env()
    if world.distributed:
        return _launch_rank(cfg, out, world)
    with run_lock(out) as holder:
        if holder is not None:
            return _busy(out, holder)
        decision = _decide(cfg, out)
        return decision if isinstance(decision, dict) else _run(cfg, out, decision, world)


def _busy(out: Path, holder: str) -> dict[str, Any]:
    reason = f"{out}: being trained by {holder}; not touched"
    log.warning(reason)
    return {"status": "busy", "reason": reason}


def _launch_rank(cfg: SweepConfig, out: Path, world: World) -> dict[str, Any]:
    """One rank of a run started by torchrun or SLURM: rank 0 takes the lock and decides (train,
    resume, or a summary such as skipped/busy), every rank follows that decision."""
    try:
        world.init(pick_device(cfg.train.device))
    except Exception as e:
        return _failed(f"rank {world.rank}: cannot join the process group: {e}".splitlines()[0])
    if not world.is_main:
        decision = world.broadcast(None)
        return decision if isinstance(decision, dict) else _run(cfg, out, decision, world)
    with run_lock(out) as holder:
        decision = _busy(out, holder) if holder is not None else _decide(cfg, out)
        world.broadcast(decision)
        return decision if isinstance(decision, dict) else _run(cfg, out, decision, world)


def _same_experiment(out: Path, cfg: SweepConfig) -> bool:
    saved = runs.read_config(out)
    with contextlib.suppress(LorascopeError):  # keys added since the run was saved take their defaults
        saved = to_dict(from_dict(saved))
    return comparable(saved) == comparable(to_dict(cfg))


def _decide(cfg: SweepConfig, out: Path) -> bool | dict[str, Any]:
    """What to do with the run folder (under its lock): a summary to return as it is (skipped, or
    failed without touching anything), or whether to train resuming (True) or from scratch (False)."""
    if runs.is_complete(out):
        if _same_experiment(out, cfg):
            log.info("%s: complete with the same config; skipped", out)
            return {**runs.read_summary(out), "status": "skipped"}
        reason = (
            f"{out} holds a complete run with a different config; not overwritten. "
            "Choose another folder with name=<sweep> (or run_name=...), or remove that folder"
        )
        log.error(reason)
        return _failed(reason)
    resuming = False
    if out.exists() and any(out.iterdir()):
        if not runs.is_run_dir(out):
            return _failed(f"{out} holds files that are not a run; not touched")
        state = resume.load_state(out)
        status = runs.read_summary(out).get("status") if (out / runs.SUMMARY_FILE).is_file() else None
        if state is not None and status is None and _same_experiment(out, cfg):
            removed = runs.remove_temporaries(out)
            log.info(
                "%s: killed after step %d; resuming (%d partial file(s) removed)",
                out,
                state.step,
                len(removed),
            )
            resuming = True
        else:
            log.info("%s: %s; cleaning and redoing it", out, status or "incomplete")
            shutil.rmtree(out)
    return resuming


def _reason(e: BaseException) -> str:
    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory: {e}".splitlines()[0]
    if isinstance(e, LorascopeError | RunFailed):
        return str(e).splitlines()[0]
    return f"{type(e).__name__}: {e}".splitlines()[0]


def _run(cfg: SweepConfig, out: Path, resuming: bool, world: World) -> dict[str, Any]:
    """Train (every rank), recording any failure as the run's summary (rank 0) instead of raising."""
    try:
        if cfg.train.devices > 1:
            return spawned.train_on_devices(cfg, out, resuming)
        return train(cfg, out, resume_run=resuming, world=world)
    except Exception as e:  # every failure becomes a record, so that the sweep goes on
        reason = _reason(e)
        if world.distributed:
            reason = f"rank {world.rank}: {reason}"
        log.error("%s failed: %s", out, reason, exc_info=not isinstance(e, LorascopeError | RunFailed))
        summary = _failed(reason)
        if world.is_main:
            with contextlib.suppress(Exception):
                runs.write_summary(out, summary)
            trackers.fail_open(summary)  # each tracker records the run as failed
        elif world.distributed:
            # The other ranks wait for this one in a collective: end the process so that torchrun (or
            # SLURM) stops them, and rank 0 records the run as failed.
            logging.shutdown()
            os._exit(1)
        return summary
