"""ASGI middleware that bounds request bodies, concurrency and time per request.

Pure ASGI (not Starlette's BaseHTTPMiddleware), so the limits apply while the body is
still being received and cost nothing on the response path.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# How much of an oversized body is read and dropped before the 413 goes out, as a
# multiple of the limit. Reading it lets the client finish sending and read the 413,
# instead of seeing the connection reset; past this the connection is just closed.
_DRAIN_FACTOR = 4


@dataclass
class GuardCounters:
    """Image requests in progress now, and rejected or timed out since start."""

    in_progress: int = 0
    rejected_busy: int = 0
    timed_out: int = 0


class RequestBodyTooLargeError(Exception):
    """A request body that grew past the limit while it was being received."""

    def __init__(self, max_bytes: int):
        super().__init__(f"request body is over the limit of {max_bytes} bytes; send a smaller image")
        self.max_bytes = max_bytes


async def send_json_error(send: Send, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status_code, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def drain_body(receive: Receive, max_bytes: int) -> None:
    """Read and drop the rest of a request body, up to `max_bytes`."""
    received = 0
    while received <= max_bytes:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodySizeLimitMiddleware:
    """Respond 413 to a body over `max_bytes`, at once when Content-Length declares it, else when it grows past it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            log.info("Rejected %s %s: Content-Length %d over %d bytes", scope["method"], scope["path"], declared, self.max_bytes)
            await drain_body(receive, self.max_bytes * _DRAIN_FACTOR)
            await send_json_error(
                send,
                413,
                f"request body is {declared} bytes, over the limit of {self.max_bytes} bytes; send a smaller image",
            )
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestBodyTooLargeError(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class RequestGuardMiddleware:
    """Bound the image requests in progress and the time each may take.

    A request to a guarded path beyond `max_concurrency` in progress gets 503 at once
    (with Retry-After), so an overloaded server sheds load instead of queueing without
    bound. A guarded request that takes longer than `timeout_s`, body upload included,
    gets 503; its inference may still finish in the background but is not waited for.
    Other paths (/ping, /, /docs) pass through, so health checks respond under load.
    A rejected request's body is read and dropped up to `drain_bytes` first, so the
    client can read the 503.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_concurrency: int,
        timeout_s: float,
        guarded_prefixes: tuple[str, ...],
        drain_bytes: int = 0,
        counters: GuardCounters | None = None,
    ):
        self.app = app
        self.drain_bytes = drain_bytes
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.guarded_prefixes = guarded_prefixes
        self.counters = counters or GuardCounters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.guarded_prefixes):
            await self.app(scope, receive, send)
            return

        counters = self.counters
        if counters.in_progress >= self.max_concurrency:
            counters.rejected_busy += 1
            # Counted, and logged once per 100 rejections, since a burst can produce thousands.
            if counters.rejected_busy % 100 == 1:
                log.warning(
                    "Server busy: %d requests in progress (limit %d); %d requests rejected with 503 so far",
                    counters.in_progress, self.max_concurrency, counters.rejected_busy,
                )
            await drain_body(receive, self.drain_bytes)
            await send_json_error(
                send,
                503,
                f"server busy: {self.max_concurrency} requests already in progress; retry shortly",
                {"Retry-After": "1"},
            )
            return

        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        counters.in_progress += 1
        deadline = asyncio.timeout(self.timeout_s)
        try:
            async with deadline:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not deadline.expired():
                raise
            counters.timed_out += 1
            log.warning("%s %s timed out after %.1f s", scope["method"], scope["path"], self.timeout_s)
            if not response_started:
                await send_json_error(
                    send, 503, f"request timed out after {self.timeout_s:g} s; retry, or send a smaller image"
                )
        finally:
            counters.in_progress -= 1
