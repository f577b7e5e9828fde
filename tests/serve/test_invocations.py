"""The SageMaker contract against a real server: /ping and /invocations with real photos."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

CLASSES = ["Lycorma delicatula", "Acer rubrum", "other"]


def check_prediction(body: dict) -> None:
    assert body["species"] in CLASSES
    assert set(body["probabilities"]) == set(CLASSES)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    assert body["probabilities"][body["species"]] == body["confidence"]
    assert sum(body["calibrated_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert [vote["fold"] for vote in body["folds"]] == [0, 1]
    for vote in body["folds"]:
        assert vote["species"] == max(vote["probabilities"], key=vote["probabilities"].get)
        assert sum(vote["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    fold_mean = {name: sum(vote["probabilities"][name] for vote in body["folds"]) / 2 for name in CLASSES}
    for name in CLASSES:
        assert body["probabilities"][name] == pytest.approx(fold_mean[name], abs=1e-6)


def test_ping_ready(server):
    with server.client() as client:
        response = client.get("/ping")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/x-image"])
def test_invocations_raw_jpeg(server, photo_bytes, content_type):
    with server.client() as client:
        response = client.post("/invocations", content=photo_bytes, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    check_prediction(response.json())


@pytest.mark.parametrize("format,content_type", [("PNG", "image/png"), ("WEBP", "image/webp")])
def test_invocations_png_and_webp(server, dev_photos, encode, format, content_type):
    image = Image.open(dev_photos["Acer rubrum"][0]).convert("RGB")
    with server.client() as client:
        response = client.post("/invocations", content=encode(image, format), headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    check_prediction(response.json())


def test_invocations_json_forms_agree(server, photo_bytes):
    """Raw bytes, plain base64, a data: URL and unpadded base64 give the same prediction."""
    encoded = base64.b64encode(photo_bytes).decode()
    bodies = {
        "base64": {"image": encoded},
        "data url": {"image": "data:image/jpeg;base64," + encoded},
        "no padding": {"image": encoded.rstrip("=")},
        "line breaks": {"image": "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))},
    }
    with server.client() as client:
        raw = client.post("/invocations", content=photo_bytes, headers={"Content-Type": "image/jpeg"}).json()
        for name, body in bodies.items():
            response = client.post("/invocations", json=body)
            assert response.status_code == 200, f"{name}: {response.text}"
            assert response.json()["probabilities"] == pytest.approx(raw["probabilities"], abs=1e-6), name


def test_invocations_json_charset_header(server, photo_bytes):
    body = json.dumps({"image": base64.b64encode(photo_bytes).decode()})
    with server.client() as client:
        response = client.post("/invocations", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text


def test_invocations_real_photos(server, dev_photos):
    with server.client() as client:
        for paths in dev_photos.values():
            for path in paths[:3]:
                response = client.post("/invocations", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
                assert response.status_code == 200, f"{path}: {response.text}"
                check_prediction(response.json())


@pytest.mark.parametrize(
    "body,content_type,status",
    [
        (b"", "image/jpeg", 400),
        (b"this is not an image", "image/jpeg", 400),
        (b"hello", "text/plain", 415),
        (b'{"image": "%%%not base64%%%"}', "application/json", 400),
        (b'{"picture": "abc"}', "application/json", 422),
        (b"{not json", "application/json", 400),
    ],
    ids=["empty", "not image", "wrong content type", "broken base64", "missing field", "invalid json"],
)
def test_invocations_bad_input(server, body, content_type, status):
    with server.client() as client:
        response = client.post("/invocations", content=body, headers={"Content-Type": content_type})
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert isinstance(response.json()["detail"], str)
        assert client.get("/ping").status_code == 200


def test_invocations_truncated_jpeg(server, photo_bytes):
    with server.client() as client:
        response = client.post("/invocations", content=photo_bytes[: len(photo_bytes) // 2], headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 400
    assert "invalid image" in response.json()["detail"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height greyscale pixels but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height", [(5000, 5000), (100_000, 100_000)], ids=["over server limit", "over pillow limit"])
def test_invocations_huge_dimensions(server, encode, width, height):
    """Huge dimensions in a tiny file get 413 before decoding (the test server allows 16 megapixels)."""
    if width * height < 50_000_000:
        data = encode(Image.new("1", (width, height)), "PNG")
        assert len(data) < 100_000
    else:
        data = png_header_only(width, height)
    with server.client() as client:
        response = client.post("/invocations", content=data, headers={"Content-Type": "image/png"})
        assert response.status_code == 413, response.text
        assert "smaller image" in response.json()["detail"]
        assert client.get("/ping").status_code == 200


def test_invocations_body_too_large(server, photo_bytes):
    """The test server accepts bodies up to 2 MiB."""
    body = photo_bytes + b"\0" * (3 * 2**20)
    with server.client() as client:
        response = client.post("/invocations", content=body, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 413, response.text
        assert "over the limit of 2097152 bytes" in response.json()["detail"]
        assert client.get("/ping").status_code == 200


def test_invocations_body_too_large_chunked(server, photo_bytes):
    """A body without Content-Length is cut off when it grows past the limit."""

    def chunks():
        yield photo_bytes
        for _ in range(12):
            yield b"\0" * 2**18

    with server.client() as client:
        response = client.post("/invocations", content=chunks(), headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 413, response.text
        assert client.get("/ping").status_code == 200


def test_ping_failed_model(tmp_path, small_run, server_factory):
    """A run whose weights are missing starts, responds 503 to /ping and rejects requests with 503."""
    broken = tmp_path / "broken_run"
    broken.mkdir()
    shutil.copy(small_run / "model.json", broken / "model.json")
    server = server_factory(broken, "--backend", "pytorch", wait_ready=False)
    with server.client() as client:
        ping = client.get("/ping")
        deadline = time.monotonic() + 120
        while ping.json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
            ping = client.get("/ping")
        invocation = client.post("/invocations", content=b"x", headers={"Content-Type": "image/jpeg"})
    assert ping.status_code == 503
    assert ping.json()["status"] == "failed"
    assert "fold_0.safetensors" in ping.json()["detail"]
    assert invocation.status_code == 503
    assert "failed to load" in invocation.json()["detail"]


def test_serve_rejects_folder_without_model(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "species_classifier", "serve", str(tmp_path), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "model.json not found" in result.stderr
