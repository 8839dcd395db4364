"""Modules side by side: one analysis function over many modules on a pool of threads, each op on one
torch thread.

The work of one module (r × n × r products of 64 × 4096 factors, eigh of r × r Gram matrices) is
too small for torch's own threads: OpenMP's barriers cost more than they give, and on a shared
CPU they can cost seconds (`linalg.one_thread`). Modules are independent, so the CPUs are used
by running several modules at once instead: torch releases the GIL inside every op, and a
thread that the operating system pauses holds up nobody else. The results are those of the
plain loop, in the same order, bit for bit (every op runs on one thread either way).

    grids = module_map(lambda m: phi_of(m), modules)      # = [phi_of(m) for m in modules]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from itertools import islice
from typing import TypeVar

import torch

from lorascope.krylov import one_thread

T = TypeVar("T")
R = TypeVar("R")


def module_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[R]:
    """[fn(x) for x in items], run on `workers` threads (default: torch's thread count), torch itself
    on one thread meanwhile. `progress` wraps the results as they come (a tqdm), in order. The first
    exception fn raises is raised here, after the running calls finish."""
    workers = max(1, int(workers or torch.get_num_threads()))
    wrap = progress or (lambda it: it)
    with on_one_thread():
        if workers == 1 or len(items) < 2:
            return list(wrap(fn(x) for x in items))
        with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
            return list(wrap(pool.map(fn, items)))


def on_one_thread() -> AbstractContextManager:
    """`one_thread()`, or nothing where torch runs on one thread already (inside `module_map`'s
    workers: `torch.set_num_threads` is process-wide, and is not called there while others compute)."""
    return one_thread() if torch.get_num_threads() > 1 else nullcontext()


def prefetched(fn: Callable[[T], R], items: Iterable[T], ahead: int = 1) -> Iterator[Future]:
    """fn(x) for x in items as futures, in order, each started on a background thread (`ahead` of
    them) up to `ahead` items before it is asked for: the caller works on one item while the next
    ones are prepared. Take each with .result() (which raises what fn raised, there); at most
    ahead + 1 results are held."""
    it = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, ahead)) as pool:
        pending: deque[Future] = deque(pool.submit(fn, x) for x in islice(it, max(1, ahead)))
        while pending:
            current = pending.popleft()
            for x in it:
                pending.append(pool.submit(fn, x))
                break
            yield current


def side_by_side(
    fn: Callable[[T], R], items: Iterable[T], small: Callable[[T], bool], workers: int | None = None
) -> Iterator[R]:
    """fn(x) for x in items, in order, as the items come (a generator that reads W one module at a
    time): the items `small` says are small run `workers` at a time (default: torch's thread count)
    on a pool, torch on one thread meanwhile; any other runs alone, on every thread, once the pool
    has drained. At most `workers` items are in flight, so memory stays that of `workers` modules.

    For work whose parts differ in size: a warm intruder module (n × r products, a Krylov of N × 2r
    products: one thread each, two modules at once) beside a cold one (an eigh of W Wᵀ, which
    LAPACK spreads over every thread). The results are those of the plain loop up to the rounding of
    one-thread against many-thread BLAS."""
    threads = torch.get_num_threads()
    workers = max(1, int(workers or threads))
    if workers == 1:
        yield from (fn(x) for x in items)
        return
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for x in items:
            if small(x):
                torch.set_num_threads(1)
                pending.append(pool.submit(fn, x))
                while len(pending) > workers:
                    yield pending.popleft().result()
                continue
            while pending:
                yield pending.popleft().result()
            torch.set_num_threads(threads)
            yield fn(x)
        while pending:
            yield pending.popleft().result()
    finally:  # on an error too: the running ones finish, the queued ones never start, then the threads
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
