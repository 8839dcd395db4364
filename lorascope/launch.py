"""launch(cfg, run_dir): what a sweep job does with its run folder, under the folder's lock.

    complete, same experiment        skip it (files untouched)
    complete, another experiment     leave it alone; the job fails and says so
    killed with a resume state       resume from the last snapshot (same experiment only)
    anything else incomplete/failed  clean it and train from scratch

One process at a time: OS locks (fcntl.flock) on `.<run>.lock` beside the run folder and on
`.writer.lock` inside it guard all of it (`run_lock`). The kernel drops the locks when their process
ends, however it ends (a kill -9 included), so a stale lock never blocks a relaunch; a second job that
finds the run locked skips it with one line, and deleting one lock file does not let it in.
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

from lorascope import distributed, resume, run_format, runs, spawned, trackers
from lorascope.config import SweepConfig, comparable, from_dict, to_dict
from lorascope.distributed import World
from lorascope.errors import LorascopeError, one_line
from lorascope.train import RunFailed, pick_device, train

log = logging.getLogger(__name__)


WRITER_LOCK = ".writer.lock"  # inside the run folder; cleaning a folder for a redo keeps it


def lock_path(run_dir: Path) -> Path:
    """Beside the run folder, not in it: a job that finds no folder yet must have a lock to take."""
    return run_dir.parent / f".{run_dir.name}.lock"


def _take(stack: contextlib.ExitStack, path: Path, record: bool) -> str | None:
    """flock `path` for as long as `stack` is open: None once held, else the holder ("host pid N",
    which `record` writes into the file once held).

    A lock is held on an inode, not on a name: if the file was deleted or replaced between our open and
    our flock, the lock we got guards nothing that another process would open. Re-stat the name after
    locking and start over until the name and the locked file are one."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            return holder
        mine = os.fstat(fd)
        try:
            named = os.stat(path)
        except FileNotFoundError:
            named = None
        if named is not None and (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)
    stack.callback(os.close, fd)  # closing the file releases the lock
    if record:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
    return None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[str | None]:
    """Hold the run folder's lock: yields None once held, or the holder ("host pid N") if another
    process holds it (then nothing is held).

    Two locks, both needed: `.<run>.lock` beside the folder, and `.writer.lock` inside it, which the
    first creates the folder to hold. Deleting either file (the one beside is easy to take for litter)
    leaves the other guarding the run, so a second job never cleans or resumes a folder whose writer
    is alive."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        holder = _take(stack, lock_path(run_dir), record=True)
        if holder is None:
            run_dir.mkdir(exist_ok=True)
            # Left empty: a skipped run's folder stays byte for byte and time for time as it was.
            holder = _take(stack, run_dir / WRITER_LOCK, record=False)
        yield holder


def clean_run_dir(run_dir: Path) -> None:
    """Empty a run folder for a redo, keeping the folder and its writer lock (held by this process)."""
    for entry in run_dir.iterdir():
        if entry.name == WRITER_LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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
        try:
            world.init(pick_device(cfg.train.device))
        except Exception as e:
            return _failed(f"rank {world.rank}: cannot join the process group: {e}".splitlines()[0])
    if not world.is_main:  # another rank of this run decides under the lock; this one follows
        decision = world.broadcast(None)
        return decision if isinstance(decision, dict) else _run(cfg, out, decision, world)
    decided = False
    try:
        with run_lock(out) as holder:
            try:
                decision = _busy(out, holder) if holder is not None else _decide(cfg, out)
            except (LorascopeError, OSError) as e:  # a damaged folder, or one that cannot be written
                decision = _failed(one_line(e))
                log.error("%s failed: %s", out, decision["reason"])
            world.broadcast(decision)  # the other ranks of the run, if any, do as rank 0 does
            decided = True
            return decision if isinstance(decision, dict) else _run(cfg, out, decision, world)
    except (LorascopeError, OSError) as e:  # the lock could not be taken: a record, for every rank
        failed = _failed(one_line(e))
        log.error("%s failed: %s", out, failed["reason"])
        if not decided:
            world.broadcast(failed)
        return failed


def _busy(out: Path, holder: str) -> dict[str, Any]:
    reason = f"{out}: being trained by {holder}; not touched"
    log.warning(reason)
    return {"status": "busy", "reason": reason}


def _same_experiment(out: Path, cfg: SweepConfig) -> bool:
    saved = run_format.read_config(out)
    with contextlib.suppress(LorascopeError):  # keys added since the run was saved take their defaults
        saved = to_dict(from_dict(saved))
    return comparable(saved) == comparable(to_dict(cfg))


def _thread_change(state: resume.ResumeState, cfg: SweepConfig) -> str | None:
    """Why resuming would mix two CPU thread counts, or None. Float sums are ordered by the thread
    count, so a run is bit-identical to an uninterrupted one only at the thread count it started with."""
    was = state.counters.get("threads")
    now = cfg.train.threads or torch.get_num_threads()
    if was is None or was == now:
        return None
    return (
        f"killed after step {state.step} while training on {was} CPU thread(s), relaunched with {now}: "
        f"a resumed run is bit-identical only on the same count; relaunch with train.threads={was} "
        "(or remove the run folder to start afresh)"
    )


def _status(out: Path) -> str | None:
    """The status its summary.json gives a run folder (None: no summary); "damaged" for a summary
    that cannot be read, which proves nothing complete, so that the run is redone."""
    if not (out / run_format.SUMMARY_FILE).is_file():
        return None
    try:
        return run_format.read_summary(out).get("status") or "incomplete"
    except LorascopeError as e:
        log.warning("%s", e)
        return "damaged"


def _decide(cfg: SweepConfig, out: Path) -> bool | dict[str, Any]:
    """What to do with the run folder (under its lock): a summary to return as it is (skipped, or
    failed without touching anything), or whether to train resuming (True) or from scratch (False)."""
    if runs.is_complete(out):
        if _same_experiment(out, cfg):
            log.info("%s: complete with the same config; skipped", out)
            return {**run_format.read_summary(out), "status": "skipped"}
        reason = (
            f"{out} holds a complete run with a different config; not overwritten. "
            "Choose another folder with name=<sweep> (or run_name=...), or remove that folder"
        )
        log.error(reason)
        return _failed(reason)
    resuming = False
    if any(p.name != WRITER_LOCK for p in out.iterdir()):
        if not runs.is_run_dir(out):
            return _failed(f"{out} holds files that are not a run; not touched")
        state = resume.load_state(out)
        status = _status(out)
        if state is not None and status is None and _same_experiment(out, cfg):
            other_threads = _thread_change(state, cfg)
            if other_threads:
                log.error("%s", other_threads)
                return _failed(other_threads)  # nothing written: the same thread count still resumes it
            removed = run_format.remove_temporaries(out)
            log.info(
                "%s: killed after step %d; resuming (%d partial file(s) removed)",
                out,
                state.step,
                len(removed),
            )
            resuming = True
        else:
            log.info("%s: %s; cleaning and redoing it", out, status or "incomplete")
            clean_run_dir(out)
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
                run_format.write_summary(out, summary)
            trackers.fail_open(summary)  # each tracker records the run as failed
        elif world.distributed:
            # The other ranks wait for this one in a collective: end the process so that torchrun (or
            # SLURM) stops them, and rank 0 records the run as failed.
            logging.shutdown()
            os._exit(1)
        return summary
