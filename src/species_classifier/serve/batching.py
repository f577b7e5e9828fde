"""Gather concurrent requests into batches for one inference backend.

One worker thread owns the backend. It takes the first queued request, waits up to
`max_wait_s` for more (or until `max_batch_size` are queued), runs them as one batch and
hands each request its own slice of the result. Requests that arrive while a batch runs
queue up and form the next batch, so batches grow with load. A lone request waits at
most `max_wait_s` extra.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_STOP = object()


class BatcherStoppedError(RuntimeError):
    """A request submitted to a batcher that is not running."""


@dataclass
class BatchStats:
    """Counts since start: batches run, images in them, the largest batch, failed batches."""

    batches: int = 0
    images: int = 0
    largest_batch: int = 0
    failed_batches: int = 0


class MicroBatcher:
    """Run `run_batch` on stacked inputs from many callers.

    `run_batch` takes an (N, ...) array and returns an array whose axis `output_axis`
    has length N; each caller gets its own slice along that axis.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 16,
        max_wait_s: float = 0.002,
        output_axis: int = 0,
        name: str = "batcher",
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.output_axis = output_axis
        self.name = name
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._running = False

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in progress, fail the requests still queued, and end the thread."""
        if not self._running:
            return
        self._running = False
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout_s)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item[1].set_exception(BatcherStoppedError("the server is shutting down"))

    def submit(self, item: np.ndarray) -> Future:
        """Queue one input; the future resolves to its slice of the batch output."""
        if not self._running:
            raise BatcherStoppedError("the inference worker is not running")
        future: Future = Future()
        self._queue.put((item, future))
        return future

    async def infer(self, item: np.ndarray) -> np.ndarray:
        """Queue one input and await its output; cancelling the await drops a queued input."""
        return await asyncio.wrap_future(self.submit(item))

    def _collect(self, first: tuple[np.ndarray, Future]) -> tuple[list[tuple[np.ndarray, Future]], bool]:
        batch = [first]
        stop = False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _work(self) -> None:
        log.debug("%s started: batch size up to %d, wait %.1f ms", self.name, self.max_batch_size, self.max_wait_s * 1000)
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            collected, stop = self._collect(first)
            # A request whose caller gave up (timeout, disconnect) is cancelled: skip it.
            batch = [(item, future) for item, future in collected if future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)
            if stop:
                break
        log.debug("%s stopped", self.name)

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            outputs = self.run_batch(np.stack([item for item, _ in batch]))
        except Exception as error:  # any backend failure fails this batch's requests, not the worker
            self.stats.failed_batches += 1
            log.exception("%s: inference failed on a batch of %d", self.name, len(batch))
            for _, future in batch:
                future.set_exception(error)
            return

        self.stats.batches += 1
        self.stats.images += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for index, (_, future) in enumerate(batch):
            future.set_result(np.take(outputs, index, axis=self.output_axis).copy())
