"""A short, bounded load test on loopback: 16 clients for 6 s, zero errors.

Latency and throughput are printed and recorded as test properties, never asserted;
benchmarks/serving measures them properly.
"""

from __future__ import annotations

import threading
import time

import numpy as np

CLIENTS = 16
DURATION_S = 6.0


def test_load_sixteen_clients(server, dev_photos, record_property):
    photos = [path.read_bytes() for paths in dev_photos.values() for path in paths]
    targets = list(dev_photos)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + DURATION_S

    def client_loop(index: int) -> None:
        with server.client(timeout=30) as client:
            count = 0
            while time.monotonic() < stop_at:
                photo = photos[(index + count) % len(photos)]
                started = time.perf_counter()
                if count % 2:
                    response = client.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"})
                else:
                    response = client.post(
                        "/v1/verify",
                        files={"image": ("photo.jpg", photo, "image/jpeg")},
                        data={"species": targets[index % len(targets)]},
                    )
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                count += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DURATION_S + 60)
    wall = time.monotonic() - started

    with server.client() as client:
        stats = client.get("/v1/stats").json()
        ping = client.get("/ping")

    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    rate = len(latencies) / wall
    record_property("requests", len(latencies))
    record_property("requests_per_s", round(rate, 1))
    record_property("p50_ms", round(float(p50), 1))
    record_property("p99_ms", round(float(p99), 1))
    record_property("largest_batch", stats["largest_batch"])
    print(f"\nload: {len(latencies)} requests in {wall:.1f} s, {rate:.1f} req/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms, largest batch {stats['largest_batch']}")

    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert len(latencies) > CLIENTS
    assert stats["largest_batch"] > 1
    assert stats["failed_batches"] == 0
    assert ping.status_code == 200
