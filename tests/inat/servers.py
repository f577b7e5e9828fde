"""Loopback HTTP servers for the tests: a photo host and a fake iNaturalist API v1."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.inat.synthetic import OBSERVERS, TAXA, Dump

_PHOTO_PATH = re.compile(r"^/photos/(\d+)/(\w+)\.(\w+)$")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that are killed or time out on purpose break connections; that is expected here.
        return


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        return


class PhotoServer:
    """Serve ``/photos/{id}/{size}.{ext}`` from real JPEG files, with optional misbehaviour per photo id.

    ``behaviours[photo_id]`` selects one of:

    * ``flaky``: HTTP 503 twice, then the photo;
    * ``truncated``: the first 60 % of the file, with a matching Content-Length;
    * ``short``: a Content-Length larger than the body, then the connection closes;
    * ``missing``: HTTP 404;
    * ``slow``: the photo after ``slow_seconds``.
    """

    def __init__(self, photos: list[Path]) -> None:
        self.photos = [path.read_bytes() for path in photos]
        self.behaviours: dict[int, str] = {}
        self.slow_seconds = 0.2
        self.requests: Counter[int] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(_QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                match = _PHOTO_PATH.match(self.path.split("?")[0])
                if not match:
                    self._send(404, b"not found")
                    return
                photo_id = int(match.group(1))
                with server._lock:
                    server.requests[photo_id] += 1
                    count = server.requests[photo_id]
                behaviour = server.behaviours.get(photo_id)
                body = server.photos[photo_id % len(server.photos)]
                if behaviour == "missing":
                    self._send(404, b"not found")
                elif behaviour == "flaky" and count <= 2:
                    self._send(503, b"try again")
                elif behaviour == "truncated":
                    self._send(200, body[: int(len(body) * 0.6)])
                elif behaviour == "short":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    if behaviour == "slow":
                        time.sleep(server.slow_seconds)
                    self._send(200, body, "image/jpeg")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> PhotoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeInatApi:
    """Serve ``/v1/taxa``, ``/v1/taxa/{ids}`` and ``/v1/observations`` from a synthetic dump, like the iNaturalist API v1."""

    def __init__(self, dump: Dump, photo_base_url: str) -> None:
        self.taxa = {
            taxon_id: {
                "id": taxon_id,
                "name": name,
                "rank": rank,
                "rank_level": rank_level,
                "is_active": active,
                "ancestor_ids": [int(part) for part in ancestry.split("/") if part] + [taxon_id],
            }
            for taxon_id, ancestry, rank_level, rank, name, active in TAXA
        }
        for taxon in self.taxa.values():
            if taxon["rank_level"] < 10:
                taxon["min_species_taxon_id"] = next(
                    ancestor for ancestor in taxon["ancestor_ids"] if self.taxa[ancestor]["rank"] == "species"
                )
            elif taxon["rank"] == "species":
                taxon["min_species_taxon_id"] = taxon["id"]
        observers = {observer_id: {"id": observer_id, "login": login, "name": name or None} for observer_id, login, name in OBSERVERS}
        self.observations: list[dict[str, Any]] = []
        for index, item in enumerate(dump.observations):
            photos = sorted((photo for photo in dump.photos if photo.observation_key == item.key), key=lambda photo: photo.position)
            self.observations.append(
                {
                    "id": 10_000 + index,
                    "uuid": item.uuid,
                    "quality_grade": item.quality_grade,
                    "observed_on": item.observed_on,
                    "location": f"{item.point[0]},{item.point[1]}",
                    "user": observers.get(item.observer_id, {"id": item.observer_id, "login": f"user{item.observer_id}", "name": None}),
                    "taxon": self.taxa.get(item.taxon_id) if item.taxon_id else None,
                    "observation_photos": [
                        {
                            "position": photo.position,
                            "photo": {
                                "id": photo.photo_id,
                                "license_code": photo.license.lower(),
                                "url": f"{photo_base_url}/photos/{photo.photo_id}/square.{photo.extension}",
                            },
                        }
                        for photo in photos
                    ],
                }
            )
        self.request_log: list[tuple[str, dict[str, list[str]]]] = []
        api = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                parsed = urlparse(self.path)
                params = parse_qs(parsed.query)
                api.request_log.append((parsed.path, params))
                if parsed.path == "/v1/taxa":
                    body = api._search_taxa(params)
                elif parsed.path.startswith("/v1/taxa/"):
                    ids = [int(part) for part in parsed.path.rsplit("/", 1)[1].split(",") if part]
                    body = {"results": [api.taxa[taxon_id] for taxon_id in ids if taxon_id in api.taxa]}
                elif parsed.path == "/v1/observations":
                    body = api._search_observations(params)
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> FakeInatApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _search_taxa(self, params: dict[str, list[str]]) -> dict[str, Any]:
        text = params.get("q", [""])[0].lower()
        words = text.split()
        results = [taxon for taxon in self.taxa.values() if words and all(word[:4] in taxon["name"].lower() for word in words)]
        return {"total_results": len(results), "results": results[:30]}

    def _search_observations(self, params: dict[str, list[str]]) -> dict[str, Any]:
        def values(name: str) -> list[str]:
            return [item for value in params.get(name, []) for item in value.split(",") if item]

        taxon_ids = {int(value) for value in values("taxon_id")}
        without = {int(value) for value in values("without_taxon_id")}
        grades = set(values("quality_grade"))
        months = {int(value) for value in values("month")}
        licenses = {value.upper() for value in values("photo_license")}
        per_page = int(params.get("per_page", ["30"])[0])
        id_below = int(params["id_below"][0]) if "id_below" in params else None
        box = [float(params[name][0]) for name in ("swlat", "swlng", "nelat", "nelng")] if "swlat" in params else None

        results = []
        for observation in sorted(self.observations, key=lambda item: -item["id"]):
            taxon = observation["taxon"]
            ancestors = set(taxon["ancestor_ids"]) if taxon else set()
            if id_below is not None and observation["id"] >= id_below:
                continue
            if taxon_ids and not ancestors & taxon_ids:
                continue
            if without and ancestors & without:
                continue
            if params.get("hrank") == ["species"] and (not taxon or taxon["rank_level"] > 10):
                continue
            if grades and observation["quality_grade"] not in grades:
                continue
            if months and int(observation["observed_on"][5:7]) not in months:
                continue
            if "d1" in params and observation["observed_on"] < params["d1"][0]:
                continue
            if "d2" in params and observation["observed_on"] > params["d2"][0]:
                continue
            if params.get("photos") == ["true"] and not observation["observation_photos"]:
                continue
            if licenses and not any(item["photo"]["license_code"].upper() in licenses for item in observation["observation_photos"]):
                continue
            if box is not None:
                latitude, longitude = (float(part) for part in observation["location"].split(","))
                if not (box[0] <= latitude <= box[2] and box[1] <= longitude <= box[3]):
                    continue
            results.append(observation)
        return {"total_results": len(results), "page": 1, "per_page": per_page, "results": results[:per_page]}
