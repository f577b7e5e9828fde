"""Benchmark serving: backends side by side, decode cost, and the HTTP server under load.

Run from the repository root:

    python benchmarks/serving/bench_serving.py --duration 30 --clients 16

Without `--run`, it builds an untrained 3-fold tf_efficientnet_lite0 bundle at 224 px
(the `train` defaults; untrained heads cost the same as trained ones). Sections:

1. Backends in-process: single-image latency (batch 1) and images/s at batch 32, for
   PyTorch eager, ONNX Runtime, OpenVINO fp32 and OpenVINO reduced precision.
2. Decoding: decode + preprocess time of a dev photo and of a 12-megapixel JPEG, with and
   without JPEG draft mode.
3. Reduced-precision check on dev photos (the gate `serve --precision auto` reads).
4. The real server per backend: one client sending one request at a time, then
   `--clients` concurrent clients for `--duration` seconds (requests/s, p50, p99, errors).

Results go to stdout as Markdown tables and to `--out` as JSON. Every request loop is
bounded in time and sends traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from species_classifier.data.images import load_image_bytes
from species_classifier.data.transforms import preprocess_image
from species_classifier.model.bundle import Bundle, read_bundle, save_tensors, write_bundle
from species_classifier.model.factory import create_classifier
from species_classifier.predict import expand_image_paths
from species_classifier.serve.backends import OnnxRuntimeBackend, OpenVinoBackend, PyTorchBackend
from species_classifier.serve.export import current_export, export_onnx
from species_classifier.serve.payloads import decode_pixels
from species_classifier.serve.precision import check_reduced_precision

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_PHOTOS = REPO_ROOT.parent / "shared" / "datasets" / "species-dev"
CLASSES = ["Lycorma delicatula", "Acer rubrum", "other"]
SERVED_BACKENDS = {
    "pytorch": ["--backend", "pytorch"],
    "onnxruntime": ["--backend", "onnxruntime"],
    "openvino-fp32": ["--backend", "openvino", "--precision", "fp32"],
    "openvino-reduced": ["--backend", "openvino", "--precision", "reduced"],
}


def build_untrained_run(run_dir: Path, folds: int, img_size: int, model_name: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    preprocess = None
    for fold in range(folds):
        torch.manual_seed(fold)
        model, preprocess = create_classifier(model_name, len(CLASSES), pretrained="embedded", img_size=img_size)
        save_tensors(model.state_dict(), run_dir / f"fold_{fold}.safetensors")
        entries.append({"fold": fold, "weights": f"fold_{fold}.safetensors"})
    write_bundle(run_dir, Bundle(classes=CLASSES, model_name=model_name, preprocess=preprocess, folds=entries))
    return run_dir


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def percentiles_ms(values: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(values, [50, 90, 99]) * 1000
    return {"p50_ms": round(float(p50), 1), "p90_ms": round(float(p90), 1), "p99_ms": round(float(p99), 1)}


# 1. Backends in-process


def bench_backend(backend, pixels: np.ndarray, folds: int, seconds: float) -> dict:
    single = pixels[:1]
    batch = pixels[:32]
    for _ in range(3):
        backend.run(single)
        backend.run(batch)

    latencies = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(latencies) < 10:
        started = time.perf_counter()
        backend.run(single)
        latencies.append(time.perf_counter() - started)

    batches = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or batches < 3:
        backend.run(batch)
        batches += 1
    elapsed = time.perf_counter() - started
    images_per_s = batches * len(batch) / elapsed
    return {
        "single_image": percentiles_ms(latencies),
        "batch32_images_per_s": round(images_per_s, 1),
        "batch32_model_images_per_s": round(images_per_s * folds, 1),
        "load_average": load_average(),
    }


def section_backends(run_dir: Path, photos: list[Path], seconds: float) -> dict:
    bundle = read_bundle(run_dir)
    pixels = np.stack([decode_pixels(path.read_bytes(), bundle.preprocess, 10**8) for path in (photos * 4)[:32]])
    onnx_file = current_export(run_dir, bundle)
    backends = {
        "pytorch": lambda: PyTorchBackend(run_dir),
        "onnxruntime": lambda: OnnxRuntimeBackend(onnx_file),
        "openvino-fp32": lambda: OpenVinoBackend(onnx_file, reduced_precision=False),
        "openvino-reduced": lambda: OpenVinoBackend(onnx_file, reduced_precision=True),
    }
    results = {}
    for name, make in backends.items():
        backend = make()
        results[name] = {"precision": backend.precision, **bench_backend(backend, pixels, len(bundle.folds), seconds)}
        del backend
        print(f"  {name}: {results[name]}", flush=True)
    return results


# 2. Decoding


def time_decode(data: bytes, config, draft: bool, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        image = load_image_bytes(data, draft_size=config.resize_size if draft else None, max_pixels=10**9)
        preprocess_image(image, config)
        timings.append(time.perf_counter() - started)
    return round(statistics.median(timings) * 1000, 1)


def section_decode(run_dir: Path, photos: list[Path]) -> dict:
    config = read_bundle(run_dir).preprocess
    photo = photos[0].read_bytes()
    large_image = Image.open(io.BytesIO(photo)).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    large_image.save(buffer, "JPEG", quality=90)
    large = buffer.getvalue()
    width, height = Image.open(io.BytesIO(photo)).size
    return {
        "dev_photo": {"size": f"{width}x{height}", "bytes": len(photo), "full_ms": time_decode(photo, config, False, 20), "draft_ms": time_decode(photo, config, True, 20)},
        "jpeg_12mp": {"size": "4000x3000", "bytes": len(large), "full_ms": time_decode(large, config, False, 5), "draft_ms": time_decode(large, config, True, 5)},
    }


# 4. The server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run_dir: Path, arguments: list[str], log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "species_classifier", "-q", "serve", str(run_dir), "--port", str(port), "--no-access-log", "--no-export", *arguments]
    process = subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ping")
            status = connection.getresponse().status
            connection.close()
            if status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server did not become ready: {log_path.read_text()}")


def run_clients(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        count = 0
        while time.monotonic() < stop_at:
            body = bodies[(index * 7 + count) % len(bodies)]
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except OSError as error:
                status = f"{type(error).__name__}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    errors.append(str(status))
            count += 1
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(latencies),
        "errors": len(errors),
        "requests_per_s": round(len(latencies) / wall, 1),
        **percentiles_ms(latencies),
        "load_average": load_average(),
    }


def server_stats(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/v1/stats")
    stats = json.loads(connection.getresponse().read())
    connection.close()
    return stats


def section_served(run_dir: Path, photos: list[Path], backends: list[str], clients: int, seconds: float, sequential_seconds: float, work: Path) -> dict:
    bodies = [path.read_bytes() for path in photos]
    results = {}
    for name in backends:
        process, port = start_server(run_dir, SERVED_BACKENDS[name], work / f"server-{name}.log")
        try:
            run_clients(port, bodies, 2, 2.0)  # warm-up
            sequential = run_clients(port, bodies, 1, sequential_seconds)
            loaded = run_clients(port, bodies, clients, seconds)
            loaded["largest_batch"] = server_stats(port)["largest_batch"]
        finally:
            process.terminate()
            process.wait(30)
        results[name] = {"one_at_a_time": sequential, "under_load": loaded}
        print(f"  {name}: one at a time {sequential}\n  {name}: {clients} clients {loaded}", flush=True)
    return results


def markdown(results: dict) -> str:
    lines = ["### Backends in-process (3 folds per image)", "",
             "| backend | precision | single image p50 (ms) | p90 (ms) | batch 32 images/s | per-model images/s |",
             "|---|---|---|---|---|---|"]
    for name, row in results["backends"].items():
        single = row["single_image"]
        lines.append(f"| {name} | {row['precision']} | {single['p50_ms']} | {single['p90_ms']} | {row['batch32_images_per_s']} | {row['batch32_model_images_per_s']} |")
    lines += ["", "### Served over HTTP", "",
              "| backend | 1 client req/s | 1 client p50 (ms) | p99 (ms) | "
              f"{results['config']['clients']} clients req/s | p50 (ms) | p99 (ms) | errors | largest batch |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["served"].items():
        one, many = row["one_at_a_time"], row["under_load"]
        lines.append(
            f"| {name} | {one['requests_per_s']} | {one['p50_ms']} | {one['p99_ms']} | {many['requests_per_s']} | "
            f"{many['p50_ms']} | {many['p99_ms']} | {many['errors']} | {many['largest_batch']} |"
        )
    decode = results["decode"]
    lines += ["", "### Decode + preprocess (median ms)", "", "| image | bytes | full decode | draft decode |", "|---|---|---|---|"]
    for name, row in decode.items():
        lines.append(f"| {name} {row['size']} | {row['bytes']} | {row['full_ms']} | {row['draft_ms']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run folder to benchmark; default: an untrained bundle built in --work")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "benchmarks" / "out" / "serving", help="scratch folder")
    parser.add_argument("--folds", type=int, default=3, help="folds of the untrained bundle")
    parser.add_argument("--img-size", type=int, default=224, help="input size of the untrained bundle, in pixels")
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="timm model of the untrained bundle")
    parser.add_argument("--photos", type=Path, default=DEV_PHOTOS, help="folder of real photos")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients in the load phase")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of the load phase per backend")
    parser.add_argument("--sequential-duration", type=float, default=10.0, help="seconds of the one-client phase per backend")
    parser.add_argument("--backend-seconds", type=float, default=4.0, help="seconds per in-process measurement")
    parser.add_argument("--check-photos", type=int, default=300, help="dev photos in the reduced-precision check")
    parser.add_argument("--served", default=",".join(SERVED_BACKENDS), help="comma-separated backends to serve")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "out" / "serving.json", help="JSON results")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    run_dir = args.run or build_untrained_run(args.work / "run", args.folds, args.img_size, args.model)
    if current_export(run_dir) is None:
        export_onnx(run_dir)
    all_photos = expand_image_paths([str(args.photos)])
    random.Random(0).shuffle(all_photos)
    photos = all_photos[:64]

    results: dict = {
        "config": {
            "run": str(run_dir), "model": read_bundle(run_dir).model_name, "folds": len(read_bundle(run_dir).folds),
            "input_size": read_bundle(run_dir).preprocess.input_size, "clients": args.clients, "duration_s": args.duration,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        }
    }
    print("Backends in-process", flush=True)
    results["backends"] = section_backends(run_dir, photos, args.backend_seconds)
    print("Decoding", flush=True)
    results["decode"] = section_decode(run_dir, photos)
    print(f"Reduced-precision check on {args.check_photos} dev photos", flush=True)
    results["precision_check"] = check_reduced_precision(run_dir, all_photos[: args.check_photos])
    served = [name for name in args.served.split(",") if name]
    if not results["precision_check"]["passed"] and "openvino-reduced" in served:
        print("  the check failed: openvino-reduced is not served", flush=True)
        served.remove("openvino-reduced")
    print("Served", flush=True)
    results["served"] = section_served(run_dir, photos, served, args.clients, args.duration, args.sequential_duration, args.work)

    baseline = results["served"].get("pytorch", {}).get("one_at_a_time", {}).get("requests_per_s")
    if baseline:
        results["speedup_under_load_vs_pytorch_one_at_a_time"] = {
            name: round(row["under_load"]["requests_per_s"] / baseline, 2) for name, row in results["served"].items()
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(markdown(results))
    print()
    print("Speed-up under load vs PyTorch one request at a time:", results.get("speedup_under_load_vs_pytorch_one_at_a_time"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
