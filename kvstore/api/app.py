"""The one ASGI app a kvstore server runs: a tiny dispatcher in front of two apps.

- ``/healthz``, ``/readyz``, ``/metrics``, ``/docs``, ``/redoc``, ``/openapi.json``, ``/ui``
  (and its assets) and ``/v1/*`` go to the FastAPI control plane (``kvstore.api.control``).
- Everything else is the S3 surface: ``kvstore.api.s3.app.S3App``, a raw ASGI app, so the hot
  object routes pay no per-request framework cost. Until that module exists the S3 paths answer
  ``501 NotImplemented`` in S3 XML.

Bucket names of 3+ characters cannot collide with ``/v1``; the exact paths above shadow only
bucket-level requests on buckets named ``healthz``, ``readyz``, ``metrics``, ``docs`` or ``redoc``.
A virtual-host-style request (Host ``bucket.DOMAIN`` under ``--domain``) always goes to S3: its
path is a key.

Lifespan is handled here, once: startup marks the server ready (the engine in ``Node`` has
already finished recovery), shutdown marks it draining.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from kvstore import errors as E
from kvstore import limits
from kvstore.api.control import ServerHealth, create_control_app
from kvstore.api.errors import json_error_bytes, request_ids
from kvstore.api.metrics import Metrics
from kvstore.api.s3.app import S3App
from kvstore.api.s3.http import host_bucket
from kvstore.api.ui import ASSETS as UI_ASSETS
from kvstore.service import Node

log = logging.getLogger("kvstore.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTROL_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json",
                           "/v1", "/ui", *(f"/ui/{name}" for name in UI_ASSETS)})
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# After a 413, read at most this much more of the body so the connection can stay open.
_DRAIN_BYTES_MAX = 1 * limits.MiB


def is_control_path(path: str) -> bool:
    return path in CONTROL_PATHS or path.startswith("/v1/")


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]],
                   body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, limit: int, last: Message) -> bool:
    """Read and drop the rest of a rejected body, up to ``limit`` bytes; True when it ended."""
    seen = 0
    while last.get("more_body", False):
        last = await receive()
        if last["type"] != "http.request":
            return False
        seen += len(last.get("body", b""))
        if seen > limit:
            return False
    return True


class KVStoreApp:
    """Routes by path prefix; no framework on the S3 path."""

    def __init__(self, state: Node, control: ASGIApp, s3: ASGIApp,
                 health: ServerHealth) -> None:
        self.state = state
        self.control = control
        self.s3 = s3
        self.health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if is_control_path(scope["path"]) and not self._virtual_host(scope):
                await self._control(scope, receive, send)
            else:
                await self.s3(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    def _virtual_host(self, scope: Scope) -> bool:
        """A virtual-host-style S3 request (Host ``bucket.DOMAIN``): its path is an object key,
        even one that reads like a control path (``/v1/...``, ``/metrics``)."""
        domain = self.state.domain
        if not domain:
            return False
        for name, value in scope.get("headers", ()):
            if name == b"host":
                return host_bucket(value.decode("latin-1"), domain) is not None
        return False

    async def _control(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bound the JSON body before FastAPI buffers it, then hand it over already read."""
        if scope.get("method", "GET") in _NO_BODY_METHODS:
            await self.control(scope, receive, send)
            return
        cap = limits.control_body_bytes_max
        for name, value in scope.get("headers", ()):
            # bytes.isdigit is ASCII-only; more digits than 2**63 has is past any cap
            if name == b"content-length" and value.isdigit() and (
                    len(value) > 19 or int(value) > cap):
                await self._too_large(send, cap)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # client went away
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > cap:
                await self._too_large(send, cap, drained=await _drain(receive, _DRAIN_BYTES_MAX,
                                                                      msg))
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.control(scope, replay, send)

    async def _too_large(self, send: Send, cap: int, drained: bool = False) -> None:
        """413; the connection stays open only when the rest of the body was read."""
        exc = E.EntityTooLarge(f"control request bodies are limited to {cap} bytes")
        status, body = json_error_bytes(exc, request_ids.next())
        self.state.blocks.failed("v1", exc.name)
        headers = [(b"content-type", b"application/json")]
        if not drained:
            headers.append((b"connection", b"close"))
        await _respond(send, 413 if status == 400 else status, headers, body)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    start = getattr(self.s3, "startup", None)
                    if start is not None:
                        await start()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                self.health.set_ready()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                self.health.set_draining()
                stop = getattr(self.s3, "shutdown", None)
                if stop is not None:
                    try:
                        await stop()
                    except Exception:  # noqa: BLE001 - shutdown continues regardless
                        log.exception("S3 shutdown hook failed")
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(state: Node, health: ServerHealth | None = None) -> KVStoreApp:
    """Build the server's single ASGI app. Fills ``state.metrics`` if the caller did not."""
    if state.metrics is None:
        state.metrics = Metrics(state.engine)
    health = health or ServerHealth()
    control = create_control_app(state, health)
    return KVStoreApp(state, control, S3App(state), health)
