"""Download the photos of a manifest: concurrent, resumable, verified, from HTTPS or S3.

Every photo is written to a temporary ``.part`` file in its destination
folder, fully decoded with Pillow, optionally resized, and only then moved to
its final name with ``os.replace``. A file under its final name is therefore
always complete, and a rerun skips it. Temporary files left by a killed run
are deleted at the start of the next one. Transient errors (HTTP 429 and 5xx,
timeouts, dropped connections, truncated or undecodable bodies) are retried
with exponential backoff; other HTTP 4xx errors fail at once.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image
from tqdm import tqdm

from species_classifier.inat.licenses import PHOTO_SIZES, photo_s3_key, photo_url_parts, with_photo_size
from species_classifier.inat.manifest import read_manifest, write_failures, write_manifest_rows
from species_classifier.inat.s3 import DEFAULT_BUCKET_URI, make_s3_client, parse_s3_uri

logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("https", "s3")
_RETRY_AFTER_MAX_SECONDS = 60.0
_PERMANENT_HTTP_STATUSES = {400, 401, 403, 404, 405, 410, 451}
_CHUNK_BYTES = 256 * 1024
_JPEG_QUALITY = 90


class PhotoDownloadError(Exception):
    """A photo could not be fetched or verified; ``transient`` errors are worth retrying."""

    def __init__(self, message: str, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


@dataclass
class DownloadOptions:
    """Settings of a download run.

    Attributes:
        dest: Folder that receives ``{species_name}/{photo_id}-{size}.{extension}``.
        size: Photo size to fetch (original, large, medium, small, thumb,
            square); ``None`` keeps the size in the manifest URLs.
        source: ``https`` (the manifest URLs) or ``s3`` (``photos/{photo_id}/{size}.{extension}`` in ``s3_uri``).
        s3_uri: Bucket (and optional prefix) holding the photos when ``source`` is ``s3``.
        s3_endpoint_url: Base URL of an S3-compatible server; ``None`` means AWS.
        workers: Concurrent downloads.
        retries: Retries of a transient failure, after the first attempt.
        backoff_seconds: Delay before the first retry; each further retry doubles it (with up to 50 % jitter).
        timeout_seconds: Connect and read timeout of one HTTP request.
        max_side: If set, photos whose longest side is longer are resized to it (pixels) before saving.
        verify_existing: Decode files that already exist before skipping them, and fetch them again if broken.
        failures_path: CSV report of failures; ``None`` means ``{manifest stem}.failures.csv`` beside the manifest.
        progress: Show a progress bar (only on a terminal).
    """

    dest: Path
    size: str | None = None
    source: str = "https"
    s3_uri: str = DEFAULT_BUCKET_URI
    s3_endpoint_url: str | None = None
    workers: int = 8
    retries: int = 4
    backoff_seconds: float = 1.0
    timeout_seconds: float = 30.0
    max_side: int | None = None
    verify_existing: bool = False
    failures_path: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.size is not None and self.size not in PHOTO_SIZES:
            raise ValueError(f"unknown photo size {self.size!r}; accepted values: {', '.join(PHOTO_SIZES)}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown download source {self.source!r}; accepted values: {', '.join(SOURCES)}")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError("max_side must be at least 1 pixel")


@dataclass
class DownloadReport:
    """Outcome of a download run; ``failures`` contains (photo_id, url, error) rows."""

    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_downloaded: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    failures_path: Path | None = None


@dataclass(frozen=True)
class PhotoTask:
    photo_id: str
    url: str
    s3_key: str | None
    target: Path


def species_folder_name(species_name: str) -> str:
    """Return a folder name for a species: ``Acer rubrum`` becomes ``Acer_rubrum``; unsafe characters become ``_``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", species_name.strip()).strip("._")
    return name or "unknown"


def _stale_temporary_files(dest: Path) -> list[Path]:
    if not dest.is_dir():
        return []
    return [path for pattern in (".*.part", "*/.*.part") for path in dest.glob(pattern) if path.is_file()]


def verify_image(path: Path) -> None:
    """Decode the whole image; raise PhotoDownloadError if it is truncated or not an image."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise PhotoDownloadError(f"invalid image: {error}", transient=True) from error


def _resize_in_place(path: Path, max_side: int) -> None:
    with Image.open(path) as image:
        if max(image.size) <= max_side:
            return
        image_format = image.format or "JPEG"
        resized = image.copy()
    resized.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    save_options: dict[str, Any] = {}
    if image_format == "JPEG":
        if resized.mode not in ("RGB", "L"):
            resized = resized.convert("RGB")
        save_options["quality"] = _JPEG_QUALITY
    resized.save(path, format=image_format, **save_options)


class PhotoDownloader:
    """Fetch, verify and store single photos; safe to call from several threads."""

    def __init__(self, options: DownloadOptions) -> None:
        self.options = options
        self._local = threading.local()
        self._bytes_lock = threading.Lock()
        self.bytes_downloaded = 0
        self._s3_client: Any = None
        self._bucket = ""
        if options.source == "s3":
            self._bucket, _ = parse_s3_uri(options.s3_uri)
            self._s3_client = make_s3_client(options.s3_endpoint_url, max_pool_connections=options.workers + 2)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def _add_bytes(self, count: int) -> None:
        with self._bytes_lock:
            self.bytes_downloaded += count

    def _fetch_https(self, task: PhotoTask, handle: Any) -> None:
        try:
            response = self._session().get(
                task.url, stream=True, timeout=(self.options.timeout_seconds, self.options.timeout_seconds)
            )
        except (requests.Timeout, requests.ConnectionError) as error:
            raise PhotoDownloadError(f"request failed: {error}", transient=True) from error
        with response:
            if response.status_code != 200:
                retry_after = _parse_retry_after(response.headers.get("Retry-After"))
                transient = response.status_code not in _PERMANENT_HTTP_STATUSES and (
                    response.status_code >= 500 or response.status_code in (408, 429)
                )
                raise PhotoDownloadError(f"HTTP {response.status_code}", transient=transient, retry_after=retry_after)
            expected = response.headers.get("Content-Length")
            received = 0
            try:
                for chunk in response.iter_content(_CHUNK_BYTES):
                    handle.write(chunk)
                    received += len(chunk)
                    self._add_bytes(len(chunk))
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
                raise PhotoDownloadError(f"download interrupted after {received} bytes: {error}", transient=True) from error
            if expected is not None and expected.isdigit() and int(expected) != received:
                raise PhotoDownloadError(f"received {received} bytes, Content-Length is {expected}", transient=True)

    def _fetch_s3(self, task: PhotoTask, handle: Any) -> None:
        try:
            response = self._s3_client.get_object(Bucket=self._bucket, Key=task.s3_key)
            body = response["Body"]
            for chunk in body.iter_chunks(_CHUNK_BYTES):
                handle.write(chunk)
                self._add_bytes(len(chunk))
        except ClientError as error:
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            code = error.response.get("Error", {}).get("Code", "")
            transient = status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout")
            raise PhotoDownloadError(f"S3 {status} {code} for s3://{self._bucket}/{task.s3_key}", transient=transient) from error
        except BotoCoreError as error:
            raise PhotoDownloadError(f"S3 request failed: {error}", transient=True) from error

    def fetch_once(self, task: PhotoTask) -> None:
        """Make one attempt: download to a temporary file, verify, resize if asked, then move into place."""
        task.target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary_name = tempfile.mkstemp(dir=task.target.parent, prefix=f".{task.target.name}.", suffix=".part")
        temporary = Path(temporary_name)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                if self.options.source == "s3":
                    self._fetch_s3(task, handle)
                else:
                    self._fetch_https(task, handle)
            verify_image(temporary)
            if self.options.max_side is not None:
                _resize_in_place(temporary, self.options.max_side)
            os.replace(temporary, task.target)
        finally:
            temporary.unlink(missing_ok=True)

    def fetch(self, task: PhotoTask) -> None:
        """Fetch one photo, retrying transient failures with exponential backoff; raise the last error."""
        attempt = 0
        while True:
            try:
                self.fetch_once(task)
                return
            except PhotoDownloadError as error:
                if not error.transient or attempt >= self.options.retries:
                    raise
                delay = self.options.backoff_seconds * (2**attempt) * (1 + random.random() / 2)
                if error.retry_after is not None:
                    delay = max(delay, min(error.retry_after, _RETRY_AFTER_MAX_SECONDS))
                logger.info("photo %s: %s; retry %d of %d in %.1f s", task.photo_id, error, attempt + 1, self.options.retries, delay)
                time.sleep(delay)
                attempt += 1


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _build_tasks(rows: list[dict[str, str]], options: DownloadOptions) -> tuple[list[PhotoTask | None], list[tuple[str, str, str]]]:
    """Return one task per manifest row (``None`` for rows that cannot be fetched) and the failures found."""
    _, s3_prefix = parse_s3_uri(options.s3_uri) if options.source == "s3" else ("", "")
    tasks: list[PhotoTask | None] = []
    failures: list[tuple[str, str, str]] = []
    for row in rows:
        photo_id = row["photo_id"].strip()
        url = row["url"].strip()
        if options.size is not None and url:
            url = with_photo_size(url, options.size)
        parts = photo_url_parts(url) if url else None
        if not photo_id.isdigit():
            failures.append((photo_id, url, f"invalid photo_id {photo_id!r}"))
            tasks.append(None)
            continue
        if parts is None:
            failures.append((photo_id, url, "the URL does not end in /{size}.{extension}" if url else "no URL"))
            tasks.append(None)
            continue
        size, extension = parts
        folder = options.dest / species_folder_name(row["species_name"])
        target = folder / f"{photo_id}-{size}.{extension.lower()}"
        s3_key = photo_s3_key(photo_id, size, extension, s3_prefix) if options.source == "s3" else None
        tasks.append(PhotoTask(photo_id=photo_id, url=url, s3_key=s3_key, target=target))
    return tasks, failures


def download_manifest(manifest_path: Path, options: DownloadOptions) -> DownloadReport:
    """Download every photo of a manifest and record where each verified file is.

    The manifest's ``path`` column is rewritten (atomically) with each
    verified file's path relative to the manifest's folder, and left empty for
    failures, which are written to ``options.failures_path``. Photos already
    present under their final name are skipped. On KeyboardInterrupt the
    manifest is still rewritten with the photos finished so far.
    """
    manifest_path = Path(manifest_path)
    rows = read_manifest(manifest_path)
    failures_path = options.failures_path or manifest_path.with_name(f"{manifest_path.stem}.failures.csv")
    report = DownloadReport(failures_path=failures_path)

    for stale in _stale_temporary_files(options.dest):
        logger.info("removing the unfinished download %s", stale)
        stale.unlink(missing_ok=True)

    tasks, build_failures = _build_tasks(rows, options)
    failed: dict[str, tuple[str, str, str]] = {failure[0]: failure for failure in build_failures}
    done: set[Path] = set()
    pending: dict[Path, PhotoTask] = {}
    for task in tasks:
        if task is None or task.target in done or task.target in pending:
            continue
        if task.target.is_file():
            if options.verify_existing:
                try:
                    verify_image(task.target)
                except PhotoDownloadError as error:
                    logger.warning("%s is broken (%s); downloading it again", task.target, error)
                    task.target.unlink()
                    pending[task.target] = task
                    continue
            done.add(task.target)
            report.skipped += 1
        else:
            pending[task.target] = task

    downloader = PhotoDownloader(options)
    logger.info(
        "%d photos in the manifest: %d already present, %d to download, %d without a usable URL",
        len(rows), report.skipped, len(pending), len(build_failures),
    )
    progress = tqdm(total=len(pending), unit="photo", desc="download", disable=None if options.progress else True)
    try:
        with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="download") as executor:
            futures: dict[Future[None], PhotoTask] = {}
            queue_iter = iter(pending.values())
            # Keep a bounded number of futures in flight so that a large manifest does not create them all at once.
            for task in queue_iter:
                futures[executor.submit(downloader.fetch, task)] = task
                if len(futures) >= options.workers * 4:
                    break
            try:
                while futures:
                    finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for future in finished:
                        task = futures.pop(future)
                        error = future.exception()
                        if error is None:
                            done.add(task.target)
                            report.downloaded += 1
                        else:
                            failed[task.photo_id] = (task.photo_id, task.url, str(error))
                            logger.warning("photo %s failed: %s", task.photo_id, error)
                        next_task = next(queue_iter, None)
                        if next_task is not None:
                            futures[executor.submit(downloader.fetch, next_task)] = next_task
                        progress.update(1)
                        progress.set_postfix(MB=f"{downloader.bytes_downloaded / 1e6:.1f}", failed=len(failed), refresh=False)
            except KeyboardInterrupt:
                for future in futures:
                    future.cancel()
                raise
    finally:
        progress.close()
        report.bytes_downloaded = downloader.bytes_downloaded
        _record_results(manifest_path, rows, tasks, done, failed, report)
    return report


def _record_results(
    manifest_path: Path,
    rows: list[dict[str, str]],
    tasks: list[PhotoTask | None],
    done: set[Path],
    failed: dict[str, tuple[str, str, str]],
    report: DownloadReport,
) -> None:
    manifest_folder = manifest_path.resolve().parent
    for row, task in zip(rows, tasks):
        if task is not None and task.target in done:
            row["path"] = Path(os.path.relpath(task.target.resolve(), manifest_folder)).as_posix()
        else:
            row["path"] = ""
    write_manifest_rows(rows, manifest_path)
    report.failures = sorted(failed.values())
    report.failed = len(report.failures)
    if report.failures_path is not None:
        write_failures(report.failures, report.failures_path)
