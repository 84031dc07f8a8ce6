"""The access log (``kvstore serve --access-log``): one line per HTTP request, on one logger.

An ASGI wrapper around the whole app (S3 and /v1 alike). Each line says who asked, the method and
path, the status, the body bytes sent and received, and how long the request took from its first
byte in to its last byte out::

    127.0.0.1:50312 "PUT /bucket/key" 200 sent=0 received=1048576 3.412ms

The status is ``-`` when no answer was sent (the client went away first). The query string is
left out: presigned URLs carry their signature there. The path is logged as the client sent it
(percent-encoded), with anything outside printable ASCII escaped, so a path cannot forge lines.
uvicorn's own access log stays off (it has neither bytes nor durations).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOGGER_NAME = "kvstore.access"
log = logging.getLogger(LOGGER_NAME)


def _printable(raw: bytes) -> str:
    """``raw`` with every byte outside printable ASCII (and space, quote, backslash) as \\xNN."""
    return "".join(chr(b) if 0x20 < b < 0x7F and b not in b'"\\' else f"\\x{b:02x}"
                   for b in raw)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return "-"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class AccessLog:
    """ASGI middleware: ``AccessLog(app)`` logs one INFO line on ``kvstore.access`` per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0
        sent = received = 0

        async def counting_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
            return msg

        async def counting_send(msg: Message) -> None:
            nonlocal status, sent
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
            elif msg["type"] == "http.response.body":
                sent += len(msg.get("body", b""))
            await send(msg)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            raw = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "replace")
            log.info('%s "%s %s" %s sent=%d received=%d %.3fms', _client(scope),
                     _printable(scope.get("method", "-").encode()), _printable(raw),
                     status or "-", sent, received, (time.perf_counter() - t0) * 1000.0)
