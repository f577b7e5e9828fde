"""Odd and bad uploads against a running server: right status, JSON detail, server keeps serving."""

from __future__ import annotations

import base64
import io
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def photo(dev_photos) -> Image.Image:
    return Image.open(dev_photos["Lycorma delicatula"][3]).convert("RGB")


def post_image(client, data: bytes, content_type: str):
    return client.post("/v1/predict", content=data, headers={"Content-Type": content_type})


def test_exif_rotation_applied(server, photo, encode):
    """A sideways-stored PNG with EXIF orientation 6 predicts like the upright image."""
    upright = encode(photo, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    sideways = encode(photo.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)
    with server.client() as client:
        expected = post_image(client, upright, "image/png").json()["probabilities"]
        rotated = post_image(client, sideways, "image/png").json()["probabilities"]
        unrotated = post_image(client, encode(photo.transpose(Image.Transpose.ROTATE_90), "PNG"), "image/png").json()["probabilities"]
    assert rotated == pytest.approx(expected, abs=1e-6)
    assert unrotated != pytest.approx(expected, abs=1e-6)


def odd_images(photo: Image.Image, encode) -> dict[str, tuple[bytes, str]]:
    small = photo.resize((320, 240))
    rgba = small.convert("RGBA")
    rgba.putalpha(128)
    sixteen_bit = Image.fromarray(np.asarray(small.convert("L"), dtype=np.uint16) * 257)
    assert sixteen_bit.mode == "I;16"
    palette = small.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    return {
        "RGBA PNG": (encode(rgba, "PNG"), "image/png"),
        "16-bit PNG": (encode(sixteen_bit, "PNG"), "image/png"),
        "CMYK JPEG": (encode(small.convert("CMYK"), "JPEG"), "image/jpeg"),
        "greyscale JPEG": (encode(small.convert("L"), "JPEG"), "image/jpeg"),
        "palette GIF with transparency": (encode(palette, "GIF"), "image/gif"),
        "BMP": (encode(small, "BMP"), "image/bmp"),
        "TIFF": (encode(small, "TIFF"), "image/tiff"),
        "lossless WebP": (encode(small, "WEBP", lossless=True), "image/webp"),
        "PNG sent as image/jpeg": (encode(small, "PNG"), "image/jpeg"),
        "tiny 1x1 JPEG": (encode(small.resize((1, 1)), "JPEG"), "image/jpeg"),
    }


def test_odd_images_accepted(server, photo, encode):
    with server.client() as client:
        for name, (data, content_type) in odd_images(photo, encode).items():
            response = post_image(client, data, content_type)
            assert response.status_code == 200, f"{name}: {response.text}"
            assert sum(response.json()["probabilities"].values()) == pytest.approx(1.0, abs=1e-5), name


def bad_requests(photo_bytes: bytes) -> dict[str, tuple[dict, int, str]]:
    """Case name to (httpx request arguments, expected status, text expected in the detail)."""
    encoded = base64.b64encode(photo_bytes).decode()
    return {
        "empty body": ({"content": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty"),
        "non-image bytes": ({"content": b"GIF89a but not really" * 10, "headers": {"Content-Type": "image/gif"}}, 400, "invalid image"),
        "truncated JPEG": ({"content": photo_bytes[:2000], "headers": {"Content-Type": "image/jpeg"}}, 400, "invalid image"),
        "wrong content type": ({"content": photo_bytes, "headers": {"Content-Type": "text/plain"}}, 415, "image/jpeg"),
        "no content type": ({"content": photo_bytes}, 415, "missing"),
        "broken base64": ({"json": {"image": encoded[:101] + "!!!"}}, 400, "not valid base64"),
        "base64 of text": ({"json": {"image": base64.b64encode(b"hello world").decode()}}, 400, "invalid image"),
        "empty base64": ({"json": {"image": ""}}, 400, "empty"),
        "image is a number": ({"json": {"image": 12}}, 422, "base64 string"),
        "JSON array": ({"json": [encoded]}, 422, "object"),
        "multipart without image": (
            {"data": {"species": "Acer rubrum"}, "files": {"photo": ("a.jpg", photo_bytes, "image/jpeg")}}, 422, "'image'"
        ),
        "form without file": ({"data": {"image": "abc"}}, 415, "not supported"),
    }


BAD_REQUEST_NAMES = list(bad_requests(b"\xff\xd8"))


@pytest.mark.parametrize("name", BAD_REQUEST_NAMES)
def test_bad_request(server, photo_bytes, name):
    arguments, status, text = bad_requests(photo_bytes)[name]
    with server.client() as client:
        response = client.post("/v1/predict", **arguments)
        assert response.status_code == status, f"{name}: {response.text}"
        assert response.headers["content-type"] == "application/json"
        assert text in response.json()["detail"]
        assert client.get("/ping").status_code == 200


def test_data_url_prefix_accepted(server, photo_bytes):
    body = {"image": "data:image/jpeg;base64," + base64.b64encode(photo_bytes).decode(), "species": "Acer rubrum"}
    with server.client() as client:
        response = client.post("/v1/verify", json=body)
    assert response.status_code == 200, response.text


def test_concurrent_mixed_requests(server, dev_photos, photo_bytes):
    """Good and bad requests at once each get their own status; the server serves on."""
    good = [path.read_bytes() for paths in dev_photos.values() for path in paths[:4]]
    cases = []
    for index in range(48):
        kind = index % 4
        if kind == 0:
            cases.append(({"content": good[index % len(good)], "headers": {"Content-Type": "image/jpeg"}}, 200))
        elif kind == 1:
            cases.append(({"content": photo_bytes[: 1000 + index], "headers": {"Content-Type": "image/jpeg"}}, 400))
        elif kind == 2:
            cases.append(({"json": {"image": "%%%", "species": "Acer rubrum"}}, 400))
        else:
            body = {"image": base64.b64encode(good[index % len(good)]).decode(), "species": "Pinus strobus"}
            cases.append(({"json": body, "path": "/v1/verify"}, 422))

    def send(case):
        arguments, status = case
        arguments = dict(arguments)
        path = arguments.pop("path", "/v1/predict")
        with server.client() as client:
            return client.post(path, **arguments).status_code, status

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, cases))
    assert [actual for actual, _ in results] == [expected for _, expected in results]
    with server.client() as client:
        assert client.get("/ping").status_code == 200
        assert post_image(client, good[0], "image/jpeg").status_code == 200


@pytest.fixture(scope="module")
def strict_server(small_run: Path, server, server_factory, tmp_path_factory):
    """A server with a 1 s request timeout and one image request at a time."""
    run = tmp_path_factory.mktemp("strict") / "run"
    shutil.copytree(small_run, run)
    return server_factory(run, "--request-timeout", "1", "--max-concurrency", "1")


def start_slow_upload(url: str, declared_length: int) -> socket.socket:
    """Open a request that declares a body but sends only its first bytes, like a stalled phone upload."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {declared_length}\r\n\r\n"
    )
    connection.sendall(head.encode() + b"\xff\xd8\xff")
    return connection


def read_response(connection: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if b"\r\n\r\n" in b"".join(chunks) and b'"}' in chunks[-1]:
            break
    return b"".join(chunks)


def test_stalled_upload_times_out(strict_server, photo_bytes):
    with strict_server.client() as client:
        slow = start_slow_upload(strict_server.url, 100_000)
        try:
            time.sleep(0.3)
            busy = post_image(client, photo_bytes, "image/jpeg")
            response = read_response(slow)
        finally:
            slow.close()
        after = post_image(client, photo_bytes, "image/jpeg")
        stats = client.get("/v1/stats").json()

    assert busy.status_code == 503
    assert "server busy" in busy.json()["detail"]
    assert busy.headers["retry-after"] == "1"
    assert response.startswith(b"HTTP/1.1 503")
    assert b"timed out after 1 s" in response
    assert after.status_code == 200
    assert stats["rejected_busy"] == 1
    assert stats["timed_out"] == 1
    assert stats["in_progress"] == 0


def test_client_disconnect_mid_upload(server, photo_bytes):
    connection = start_slow_upload(server.url, 100_000)
    time.sleep(0.2)
    connection.close()

    deadline = time.monotonic() + 10
    while "client disconnected" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    with server.client() as client:
        response = post_image(client, photo_bytes, "image/jpeg")

    assert response.status_code == 200
    assert "client disconnected before the body was received" in server.log()
    assert "Traceback" not in server.log()
