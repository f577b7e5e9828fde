"""MicroBatcher: batches concurrent requests, returns each its own slice, survives failures."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from species_classifier.serve.batching import BatcherStoppedError, MicroBatcher


class RecordingModel:
    """Doubles its input (N, 2) into (3, N, 2), like fold logits, and records batch sizes."""

    def __init__(self, delay_s: float = 0.02, fail_on: float | None = None):
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batch_sizes.append(len(batch))
        if self.fail_on is not None and np.any(batch == self.fail_on):
            raise RuntimeError("backend failure")
        time.sleep(self.delay_s)
        return np.stack([batch * 2, batch * 3, batch * 4])


def test_concurrent_requests_batched():
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.005, output_axis=1)
    batcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(lambda value: batcher.submit(np.full(2, value, np.float32)).result(10), value) for value in range(64)]
            results = [future.result() for future in futures]
    finally:
        batcher.stop()
    for value, result in enumerate(results):
        assert result.shape == (3, 2)
        np.testing.assert_array_equal(result[:, 0], [value * 2, value * 3, value * 4])
    assert sum(model.batch_sizes) == 64
    assert max(model.batch_sizes) > 1
    assert max(model.batch_sizes) <= 8
    assert batcher.stats.images == 64
    assert batcher.stats.largest_batch == max(model.batch_sizes)


def test_lone_request_runs_alone():
    model = RecordingModel(delay_s=0)
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.001, output_axis=1)
    batcher.start()
    try:
        result = batcher.submit(np.ones(2, np.float32)).result(5)
    finally:
        batcher.stop()
    assert model.batch_sizes == [1]
    np.testing.assert_array_equal(result[:, 1], [2, 3, 4])


def test_failure_fails_batch_only():
    model = RecordingModel(delay_s=0, fail_on=-1.0)
    batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0, output_axis=1)
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="backend failure"):
            batcher.submit(np.full(2, -1.0, np.float32)).result(5)
        good = batcher.submit(np.ones(2, np.float32)).result(5)
    finally:
        batcher.stop()
    np.testing.assert_array_equal(good[:, 0], [2, 3, 4])
    assert batcher.stats.failed_batches == 1


def test_cancelled_request_skipped():
    model = RecordingModel(delay_s=0.2)
    batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0, output_axis=1)
    batcher.start()
    try:
        first = batcher.submit(np.zeros(2, np.float32))
        time.sleep(0.05)  # the worker is now busy with `first`
        abandoned = batcher.submit(np.ones(2, np.float32))
        assert abandoned.cancel()
        first.result(5)
        last = batcher.submit(np.full(2, 5.0, np.float32)).result(5)
    finally:
        batcher.stop()
    assert model.batch_sizes == [1, 1]
    np.testing.assert_array_equal(last[:, 0], [10, 15, 20])


def test_async_infer():
    model = RecordingModel(delay_s=0.01)
    batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.01, output_axis=1)
    batcher.start()

    async def run_all():
        return await asyncio.gather(*(batcher.infer(np.full(2, value, np.float32)) for value in range(10)))

    try:
        results = asyncio.run(run_all())
    finally:
        batcher.stop()
    assert [float(result[0, 0]) for result in results] == [value * 2.0 for value in range(10)]
    assert max(model.batch_sizes) > 1


def test_submit_after_stop_raises():
    batcher = MicroBatcher(RecordingModel(), output_axis=1)
    batcher.start()
    batcher.stop()
    with pytest.raises(BatcherStoppedError):
        batcher.submit(np.zeros(2, np.float32))
