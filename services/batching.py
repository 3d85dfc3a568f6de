"""Server-side batching of concurrent requests, in the one-process service.

Requests that arrive while a batch runs are stacked into the next ONNX Runtime run: greedy batching, so a
request that arrives alone runs at once (no waiting window, no added latency at low load), while under
concurrent load the model runs at batch sizes where it is several times more efficient per item.
Whether a task batches is measured, per task (README, results log): `PIPELINES_BATCHING=auto` (default)
takes the task's measured choice, `off` never batches.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable

import numpy as np

from services.runtime import configured_choice, configured_count

BATCHING_CHOICES = ("auto", "off")


def configured_batching() -> str:
    return configured_choice("PIPELINES_BATCHING", BATCHING_CHOICES, "auto")


def max_batch() -> int:
    return configured_count("PIPELINES_MAX_BATCH", 16, minimum=1)


class GreedyBatcher:
    """Calls `infer` on stacks of the items submitted concurrently (at most `limit` at a time) from one
    thread; each caller gets its own row back, or the exception the batch raised."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], limit: int):
        self.infer, self.limit = infer, limit
        self.pending: queue.SimpleQueue = queue.SimpleQueue()
        self.worker = threading.Thread(target=self.serve, name="greedy-batcher", daemon=True)
        self.worker.start()

    def __call__(self, item: np.ndarray) -> np.ndarray:
        future: Future = Future()
        self.pending.put((item, future))
        return future.result()

    def serve(self) -> None:
        while True:
            batch = [self.pending.get()]
            while len(batch) < self.limit:
                try:
                    batch.append(self.pending.get_nowait())
                except queue.Empty:
                    break
            try:
                outputs = self.infer(np.stack([item for item, _ in batch]))
            except Exception as error:  # each waiting request gets the failure, the batcher goes on
                for _, future in batch:
                    future.set_exception(error)
                continue
            for (_, future), output in zip(batch, outputs):
                future.set_result(output)
