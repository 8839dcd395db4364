"""`train.devices=N`: one run trained by N processes on this node, started by the job itself.

The job's own process is rank 0: it already holds the run folder's lock and alone writes the folder.
It starts ranks 1..N-1 (fresh interpreters, torch.multiprocessing's "spawn"), which join a process
group on a free local port and train the same run without writing. If any rank dies (a crash, an
out-of-memory kill), the others' next collective fails, the run is recorded as failed with the
rank's exit, and the remaining processes are stopped; a relaunch redoes the run.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from lorascope.config import SweepConfig, to_dict
from lorascope.distributed import World, free_port
from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 60  # after rank 0 is done, how long the other ranks may take to exit
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT")


def _rank_main(rank: int, size: int, cfg: dict, out: str, resuming: bool) -> None:
    """Entry point of ranks 1..N-1: train without writing; exit non-zero on any failure."""
    import torch.distributed as dist

    from lorascope.train import train

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        train(cfg, out, resume_run=resuming, world=World(rank, size, rank))
    except BaseException as e:
        log.error("rank %d of %s failed: %s", rank, out, f"{type(e).__name__}: {e}".splitlines()[0])
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "did not exit"
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def train_on_devices(cfg: SweepConfig, out: Path, resuming: bool) -> dict[str, Any]:
    """Train `cfg` with cfg.train.devices processes, this one rank 0 -> rank 0's summary.

    Raises (for launch to record) if any rank failed, naming the first rank that did."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from lorascope.train import RunFailed, train

    size = cfg.train.devices
    saved = {k: os.environ.get(k) for k in RENDEZVOUS}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    ctx = mp.get_context("spawn")
    plain = to_dict(cfg)
    procs = [
        ctx.Process(target=_rank_main, args=(r, size, plain, str(out), resuming)) for r in range(1, size)
    ]
    for p in procs:
        p.start()
    error: BaseException | None = None
    try:
        summary = train(cfg, out, resume_run=resuming, world=World(0, size, 0))
    except BaseException as e:
        error = e
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for p in procs:
        p.join(timeout=JOIN_TIMEOUT_S if error is None else 5)
        if p.is_alive():
            p.kill()
            p.join()
    if isinstance(error, LorascopeError | RunFailed | KeyboardInterrupt):
        raise error  # a decision every rank took alike (divergence, bad input): its own words
    dead = [(r, p.exitcode) for r, p in enumerate(procs, 1) if p.exitcode != 0]
    if dead:  # rank 0's error, if any, is then the broken collective: the dead rank is the cause
        rank, code = dead[0]
        raise RunFailed(f"rank {rank} of {size} {_exit_text(code)}; the run is not complete") from error
    if error is not None:
        raise RunFailed(f"rank 0 of {size}: {type(error).__name__}: {error}".splitlines()[0]) from error
    log.info("%s: trained by %d processes (%s)", out, size, cfg.train.strategy)
    return summary
