"""The greedy batcher: concurrent items run together, each caller gets its own row, a lone item runs at
once, and a failing batch fails its callers without stopping the batcher."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.batching import GreedyBatcher


def test_concurrent_items_are_stacked_and_each_caller_gets_its_row():
    sizes = []
    gate = threading.Event()

    def infer(batch):
        sizes.append(len(batch))
        gate.wait(1)  # the first run holds while the others queue up behind it
        return batch * 2

    batcher = GreedyBatcher(infer, limit=8)
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(batcher, np.full(3, float(n))) for n in range(12)]
        time.sleep(0.3)
        gate.set()
        results = [future.result(timeout=5) for future in futures]
    for n, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full(3, 2.0 * n))
    assert sum(sizes) == 12 and max(sizes) > 1 and max(sizes) <= 8


def test_a_lone_item_runs_at_once():
    batcher = GreedyBatcher(lambda batch: batch + 1, limit=16)
    started = time.perf_counter()
    assert batcher(np.zeros(2)).tolist() == [1.0, 1.0]
    assert time.perf_counter() - started < 0.5


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    calls = []

    def infer(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise ValueError("bad batch")
        return batch

    batcher = GreedyBatcher(infer, limit=4)
    with pytest.raises(ValueError, match="bad batch"):
        batcher(np.zeros(1))
    assert batcher(np.ones(1)).tolist() == [1.0]
