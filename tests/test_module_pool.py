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
