"""Fixtures for the serving tests: small untrained bundles, real photos, a real server.

Bundles are built from the embedded ImageNet backbone with fresh heads, without
training, so they load in seconds. Their heads are nudged apart so folds disagree.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from species_classifier.model.bundle import Bundle, save_tensors, write_bundle
from species_classifier.model.factory import create_classifier

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_PHOTOS = REPO_ROOT.parent / "shared" / "datasets" / "species-dev"
CLASSES = ["Lycorma delicatula", "Acer rubrum", "other"]
SPECIES_FOLDERS = {"Lycorma delicatula": "Lycorma_delicatula", "Acer rubrum": "Acer_rubrum"}
SERVER_START_TIMEOUT_S = 180


def make_bundle(run_dir: Path, img_size: int, folds: int = 2, model_name: str = "tf_efficientnet_lite0") -> Path:
    """Write an untrained run folder: embedded backbone, one perturbed head per fold."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fold_entries = []
    preprocess = None
    for fold in range(folds):
        torch.manual_seed(fold)
        model, preprocess = create_classifier(model_name, num_classes=len(CLASSES), pretrained="embedded", img_size=img_size)
        with torch.no_grad():
            classifier = model.get_classifier()
            classifier.weight.normal_(0.0, 0.05)
            classifier.bias.normal_(0.0, 0.5)
        save_tensors(model.state_dict(), run_dir / f"fold_{fold}.safetensors")
        fold_entries.append({"fold": fold, "weights": f"fold_{fold}.safetensors"})
    write_bundle(run_dir, Bundle(classes=CLASSES, model_name=model_name, preprocess=preprocess, folds=fold_entries))
    return run_dir


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-fold tf_efficientnet_lite0 bundle at 64 px."""
    return make_bundle(tmp_path_factory.mktemp("small_run"), img_size=64)


@pytest.fixture(scope="session")
def default_size_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-fold tf_efficientnet_lite0 bundle at the default 224 px."""
    return make_bundle(tmp_path_factory.mktemp("run224") / "run", img_size=224)


@pytest.fixture(scope="session")
def dev_photos() -> dict[str, list[Path]]:
    """Real photos of the two target species, a few each."""
    if not DEV_PHOTOS.is_dir():
        pytest.skip(f"dev photos not found at {DEV_PHOTOS} (the shared species-dev data set)")
    photos = {}
    for species, folder in SPECIES_FOLDERS.items():
        files = sorted((DEV_PHOTOS / folder).glob("*.jpg"))[:8]
        if not files:
            pytest.skip(f"no photos in {DEV_PHOTOS / folder}")
        photos[species] = files
    return photos


@pytest.fixture(scope="session")
def photo_bytes(dev_photos: dict[str, list[Path]]) -> bytes:
    return dev_photos["Lycorma delicatula"][0].read_bytes()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A `species-classifier serve` subprocess on loopback."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def start_server(run_dir: Path, log_path: Path, *extra_args: str, wait_ready: bool = True) -> Server:
    """Start the real CLI server and wait until /ping responds (200, or 503 when not waiting for ready)."""
    port = free_port()
    command = [
        sys.executable, "-m", "species_classifier", "serve", str(run_dir),
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", *extra_args,
    ]
    log_file = log_path.open("w")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}:\n{server.log()}")
        try:
            response = httpx.get(f"{server.url}/ping", timeout=2.0)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if response.status_code == 200 or not wait_ready:
            return server
        if response.json().get("status") == "failed":
            return server
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server did not become ready in {SERVER_START_TIMEOUT_S} s:\n{server.log()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Start `serve` subprocesses with given arguments; all are stopped at the end of the session."""
    started: list[Server] = []

    def factory(run_dir: Path, *extra_args: str, wait_ready: bool = True) -> Server:
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        running = start_server(run_dir, log_path, *extra_args, wait_ready=wait_ready)
        started.append(running)
        return running

    yield factory
    for running in started:
        if running.process.poll() is None:
            stop_server(running)


@pytest.fixture(scope="session")
def server(small_run: Path, server_factory: Callable[..., Server]) -> Server:
    """The default server (backend auto) on the small bundle, shared by the HTTP tests.

    Limits are lowered (2 MiB bodies, 16 megapixels) so the oversize tests stay small.
    """
    return server_factory(small_run, "--max-body-mb", "2", "--max-megapixels", "16")


@pytest.fixture(scope="session")
def encode() -> Callable[..., bytes]:
    """Encode a PIL image to bytes in a format, with Pillow save options."""

    def encode_image(image: Image.Image, format: str, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=format, **options)
        return buffer.getvalue()

    return encode_image
