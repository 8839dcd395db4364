"""Modules side by side (`module_map`) and the next item prepared meanwhile (`prefetched`): the results
of the plain loop, in order, errors where the loop would raise them."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lorascope.errors import LorascopeError
from lorascope.module_pool import module_map, prefetched


def test_module_map_equals_the_loop_in_order_and_raises_the_first_error():
    items = list(range(40))

    def work(i):
        X = torch.randn(32, 256, generator=torch.Generator().manual_seed(i))
        return torch.linalg.eigvalsh(X @ X.T)

    loop = [work(i) for i in items]
    for workers in (1, 2, 3):
        got = module_map(work, items, workers=workers)
        assert all(torch.equal(a, b) for a, b in zip(got, loop, strict=True))  # bit for bit, in order
    threads = torch.get_num_threads()

    def fail(i):
        if i in (7, 30):
            raise LorascopeError(f"module {i}")
        return i

    with pytest.raises(LorascopeError, match="module 7"):
        module_map(fail, items, workers=2)
    assert torch.get_num_threads() == threads  # restored after an error too
    assert module_map(str, [], workers=2) == [] and module_map(str, [5], workers=2) == ["5"]


def test_prefetched_yields_in_order_raises_at_result_and_holds_at_most_ahead_plus_one():
    started: list[int] = []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        if i == 3:
            raise LorascopeError("item 3")
        time.sleep(0.005)
        return i * i

    got, errors = [], []
    for n, future in enumerate(prefetched(work, range(8), ahead=1)):
        time.sleep(0.02)  # the consumer is slower: the background thread must wait, not run ahead
        with lock:
            assert len(started) <= n + 2  # this item, and at most one more started
        try:
            got.append(future.result())
        except LorascopeError as e:  # raised where the caller takes the item, and the rest go on
            errors.append(str(e))
    assert got == [0, 1, 4, 16, 25, 36, 49] and errors == ["item 3"]
    assert sorted(started) == list(range(8))
    assert list(prefetched(work, [])) == []


def test_side_by_side_runs_small_items_two_at_a_time_and_large_ones_alone_on_every_thread():
    from lorascope.module_pool import side_by_side

    torch.set_num_threads(2)
    seen, lock, running, most = [], threading.Lock(), [0], [0]

    def work(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            seen.append((i, torch.get_num_threads(), running[0]))
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return i * i

    items = [0, 1, 2, 3, 10, 4, 5]  # 10 is large: it waits for the pool and runs alone
    got = list(side_by_side(work, iter(items), small=lambda i: i < 10, workers=2))
    assert got == [i * i for i in items]  # in order
    assert most[0] == 2  # never more than `workers` in flight
    large = next(s for s in seen if s[0] == 10)
    assert large[1:] == (2, 1)  # alone, on every thread
    assert all(s[1] == 1 for s in seen if s[0] != 10)  # the small ones on one torch thread each
    assert torch.get_num_threads() == 2

    def fail(i):
        if i == 3:
            raise LorascopeError("module 3")
        return i

    with pytest.raises(LorascopeError, match="module 3"):
        list(side_by_side(fail, iter(range(8)), small=lambda i: True, workers=2))
    assert torch.get_num_threads() == 2  # restored after an error too
