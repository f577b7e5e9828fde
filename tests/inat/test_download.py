"""The downloader against a loopback HTTP server and a moto S3 server, with real photos."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from species_classifier.inat.download import DownloadOptions, download_manifest
from species_classifier.inat.manifest import MANIFEST_COLUMNS, read_manifest
from tests.inat.conftest import upload_public
from tests.inat.servers import PhotoServer

REPO = Path(__file__).resolve().parents[2]


def write_test_manifest(path: Path, base_url: str, photo_ids: list[int], size: str = "medium") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for photo_id in photo_ids:
            species = "Acer rubrum" if photo_id % 2 else "Lycorma delicatula"
            writer.writerow(
                {
                    "photo_id": str(photo_id),
                    "observation_uuid": f"00000000-0000-4000-a000-{photo_id:012d}",
                    "observer_id": "11",
                    "species_name": species,
                    "taxon_id": "47728" if photo_id % 2 else "200001",
                    "role": "target",
                    "latitude": "38.5",
                    "longitude": "-77.0",
                    "observed_on": "2021-06-10",
                    "license": "CC-BY",
                    "attribution": "(c) Jane, some rights reserved (CC-BY)",
                    "url": f"{base_url}/photos/{photo_id}/{size}.jpg",
                    "path": "",
                }
            )


def fast_options(dest: Path, **overrides: object) -> DownloadOptions:
    settings: dict[str, object] = {"dest": dest, "workers": 4, "retries": 3, "backoff_seconds": 0.01, "timeout_seconds": 5, "progress": False}
    settings.update(overrides)
    return DownloadOptions(**settings)  # type: ignore[arg-type]


def assert_all_decode(folder: Path, allow_unfinished: bool = False) -> list[Path]:
    """Decode every photo under its final name; unfinished ``.part`` files fail the test unless allowed."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if not allow_unfinished:
        assert not [path for path in files if path.name.endswith(".part")], "unfinished downloads left behind"
    files = [path for path in files if not path.name.endswith(".part")]
    for path in files:
        with Image.open(path) as image:
            image.load()
    return files


def test_download_retries_and_reports(photo_server: PhotoServer, tmp_path: Path) -> None:
    photo_server.behaviours.update({3: "flaky", 5: "truncated", 7: "missing", 9: "short"})
    manifest = tmp_path / "data" / "manifest.csv"
    write_test_manifest(manifest, photo_server.url, list(range(1, 13)))
    report = download_manifest(manifest, fast_options(tmp_path / "data" / "photos"))

    assert report.downloaded == 9
    assert report.failed == 3
    failures = {row["photo_id"]: row["error"] for row in csv.DictReader(open(report.failures_path, encoding="utf-8"))}
    assert set(failures) == {"5", "7", "9"}
    assert "HTTP 404" in failures["7"]
    assert "invalid image" in failures["5"]
    assert photo_server.requests[3] == 3  # two 503 responses, then the photo
    assert photo_server.requests[7] == 1  # a 404 is not retried
    assert photo_server.requests[5] == 4  # first attempt and 3 retries

    rows = {row["photo_id"]: row for row in read_manifest(manifest)}
    assert rows["1"]["path"] == "photos/Acer_rubrum/1-medium.jpg"
    assert rows["2"]["path"] == "photos/Lycorma_delicatula/2-medium.jpg"
    assert rows["5"]["path"] == ""
    assert rows["7"]["path"] == ""
    for row in rows.values():
        if row["path"]:
            assert (manifest.parent / row["path"]).is_file()
    files = assert_all_decode(tmp_path / "data" / "photos")
    assert len(files) == 9


def test_download_rerun_skips_verified_files(photo_server: PhotoServer, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    write_test_manifest(manifest, photo_server.url, [1, 2, 3, 4])
    first = download_manifest(manifest, fast_options(tmp_path / "photos"))
    assert first.downloaded == 4
    second = download_manifest(manifest, fast_options(tmp_path / "photos"))
    assert second.downloaded == 0
    assert second.skipped == 4
    assert sum(photo_server.requests.values()) == 4
    assert all(row["path"] for row in read_manifest(manifest))


def test_download_verify_existing_replaces_broken(photo_server: PhotoServer, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    write_test_manifest(manifest, photo_server.url, [1, 2])
    download_manifest(manifest, fast_options(tmp_path / "photos"))
    broken = tmp_path / "photos" / "Acer_rubrum" / "1-medium.jpg"
    broken.write_bytes(broken.read_bytes()[:500])
    report = download_manifest(manifest, fast_options(tmp_path / "photos", verify_existing=True))
    assert report.downloaded == 1
    assert report.skipped == 1
    assert_all_decode(tmp_path / "photos")


def test_download_size_and_resize(photo_server: PhotoServer, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    write_test_manifest(manifest, photo_server.url, [1, 2], size="original")
    report = download_manifest(manifest, fast_options(tmp_path / "photos", size="small", max_side=100))
    assert report.downloaded == 2
    for row in read_manifest(manifest):
        assert row["path"].endswith("-small.jpg")
        with Image.open(manifest.parent / row["path"]) as image:
            assert max(image.size) == 100


def test_download_from_s3(moto_endpoint: str, real_photos: list[Path], tmp_path: Path) -> None:
    upload_public(moto_endpoint, "photos/101/medium.jpg", real_photos[0].read_bytes())
    upload_public(moto_endpoint, "photos/102/medium.jpg", real_photos[1].read_bytes())
    manifest = tmp_path / "manifest.csv"
    write_test_manifest(manifest, "https://inaturalist-open-data.s3.amazonaws.com", [101, 102, 103])
    options = fast_options(tmp_path / "photos", source="s3", s3_endpoint_url=moto_endpoint)
    report = download_manifest(manifest, options)
    assert report.downloaded == 2
    assert [failure[0] for failure in report.failures] == ["103"]
    assert "404" in report.failures[0][2]
    assert (tmp_path / "photos" / "Acer_rubrum" / "101-medium.jpg").read_bytes() == real_photos[0].read_bytes()


def test_download_killed_then_resumed(photo_server: PhotoServer, tmp_path: Path) -> None:
    photo_ids = list(range(1, 41))
    photo_server.behaviours.update({photo_id: "slow" for photo_id in photo_ids})
    photo_server.slow_seconds = 0.25
    manifest = tmp_path / "manifest.csv"
    dest = tmp_path / "photos"
    write_test_manifest(manifest, photo_server.url, photo_ids)
    command = [
        sys.executable, "-c",
        "import sys; from species_classifier.inat.cli import main; sys.exit(main(sys.argv[1:]))",
        "download", str(manifest), "--dest", str(dest), "--workers", "2", "--no-progress",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            finished = [path for path in dest.rglob("*.jpg")] if dest.exists() else []
            if len(finished) >= 6:
                break
            assert process.poll() is None, "the download ended before it could be killed"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)

    present_before = {path.name for path in assert_all_decode(dest, allow_unfinished=True)}
    assert 6 <= len(present_before) < len(photo_ids)
    assert all(row["path"] == "" for row in read_manifest(manifest))
    requests_before = dict(photo_server.requests)

    report = download_manifest(manifest, fast_options(dest))
    assert report.skipped == len(present_before)
    assert report.downloaded == len(photo_ids) - len(present_before)
    assert report.failed == 0
    assert len(assert_all_decode(dest)) == len(photo_ids)
    assert all(row["path"] for row in read_manifest(manifest))
    for name in present_before:
        photo_id = int(name.split("-")[0])
        assert photo_server.requests[photo_id] == requests_before[photo_id]
