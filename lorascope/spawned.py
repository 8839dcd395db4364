"""`train.devices=N`: one run trained by N processes on this node, started by the job itself.

The job's own process supervises: it holds the run folder's lock and starts ranks 0..N-1 (fresh
interpreters, torch.multiprocessing's "spawn"), which join a process group on a free local port; rank 0
writes the folder (under the lock its parent holds), the others compute. The supervisor waits on the
processes themselves, not on a collective: when a rank dies (a crash, an out-of-memory kill), the others
get GRACE_S to notice the broken collective and exit, then are killed, so a rank blocked in a collective
that never returns cannot hang the job. The run is then recorded as failed with the rank's exit, and a
relaunch redoes it. Rank 0's summary, or the error it raised, reaches the supervisor through a pipe; its
log records through a queue, into the job's own handlers.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from lorascope.config import SweepConfig, to_dict
from lorascope.distributed import World, free_port
from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 60  # after rank 0 is done, how long the other ranks may take to exit
GRACE_S = 10  # after a rank died, how long the others may take to exit on their own
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT")


def _rank_main(rank: int, size: int, cfg: dict, out: str, resuming: bool, result, records, level) -> None:
    """Entry point of every rank: train (rank 0 writes the run); rank 0 sends back its summary or its
    error as (kind, value); exit non-zero on any failure."""
    import torch.distributed as dist

    from lorascope.train import RunFailed, train

    DECIDED = (LorascopeError, RunFailed, KeyboardInterrupt)  # re-raised by the supervisor as they are
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level if rank == 0 else max(level, logging.WARNING))
    if os.environ.get("LORASCOPE_TEST_KILL") == f"{rank}:start":  # testing aid: dies before joining
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        summary = train(cfg, out, resume_run=resuming, world=World(rank, size, rank))
        if rank == 0:
            result.put(("summary", summary))
    except BaseException as e:
        if rank == 0:  # a decision every rank takes alike (bad input, divergence) keeps its own words
            kind = next((k.__name__ for k in DECIDED if isinstance(e, k)), None)  # subclasses too
            result.put((kind, str(e)) if kind else ("error", f"{type(e).__name__}: {e}".splitlines()[0]))
        log.error("rank %d of %s failed: %s", rank, out, f"{type(e).__name__}: {e}".splitlines()[0])
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "did not exit"
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def _supervise(procs: list) -> tuple[list[tuple[int, int]], set[int]]:
    """Wait for every rank -> (ranks that failed, in the order they exited, with their exit codes; the
    ranks this function had to kill). After a failure the rest get GRACE_S, after rank 0's success
    JOIN_TIMEOUT_S."""
    alive = {p.sentinel: (rank, p) for rank, p in enumerate(procs)}
    failed: list[tuple[int, int]] = []
    deadline = None
    while alive:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = wait(list(alive), timeout=left)
        if not ready:
            break
        for sentinel in ready:
            rank, p = alive.pop(sentinel)
            p.join()
            if p.exitcode != 0:
                failed.append((rank, p.exitcode))
                if len(failed) == 1:
                    deadline = time.monotonic() + GRACE_S
            elif rank == 0 and deadline is None:
                deadline = time.monotonic() + JOIN_TIMEOUT_S
    killed = set()
    for rank, p in alive.values():
        log.warning("rank %d did not exit after rank %d's end: killing it", rank, (failed or [(0, 0)])[0][0])
        p.kill()
        p.join()
        killed.add(rank)
    return failed, killed


def train_on_devices(cfg: SweepConfig, out: Path, resuming: bool) -> dict[str, Any]:
    """Train `cfg` with cfg.train.devices processes -> rank 0's summary.

    Raises (for launch to record) if any rank failed, naming the first rank that did."""
    import torch.multiprocessing as mp

    from lorascope.train import RunFailed

    size = cfg.train.devices
    saved = {k: os.environ.get(k) for k in RENDEZVOUS}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    ctx = mp.get_context("spawn")
    result, records = ctx.SimpleQueue(), ctx.Queue()
    root = logging.getLogger()
    listener = logging.handlers.QueueListener(records, *root.handlers, respect_handler_level=True)
    plain = to_dict(cfg)
    procs = [
        ctx.Process(target=_rank_main, args=(r, size, plain, str(out), resuming, result, records, root.level))
        for r in range(size)
    ]
    listener.start()
    try:
        for p in procs:
            p.start()
        failed, killed = _supervise(procs)
    except KeyboardInterrupt:
        for p in procs:
            p.kill()
            p.join()
        raise
    finally:
        listener.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    kind, value = result.get() if not result.empty() else ("", None)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if kind in ("LorascopeError", "RunFailed"):  # a decision every rank took alike: its own words
        raise (LorascopeError if kind == "LorascopeError" else RunFailed)(value)
    if failed or killed:  # the cause: a rank killed by a signal (OOM, a crash) before one that raised
        signalled = [(r, c) for r, c in failed if c < 0]
        rank, code = (signalled or failed or [(min(killed), None)])[0]
        if rank == 0 and kind == "error":
            raise RunFailed(f"rank 0 of {size}: {value}")
        raise RunFailed(f"rank {rank} of {size} {_exit_text(code)}; the run is not complete")
    if kind != "summary":
        raise RunFailed(f"rank 0 of {size} exited without a summary; the run is not complete")
    log.info("%s: trained by %d processes (%s)", out, size, cfg.train.strategy)
    return value
