"""The S3-compatible surface as a raw ASGI app: ``S3App(state)``.

No framework: one dict look-up of the method and sub-resource picks the handler, so GET and PUT
of an object pay only for SigV4, one engine call and the socket. Path-style addressing
(``/bucket/key``). Every failure becomes an S3 XML error through ``kvstore.api.errors`` (the one
mapper); an unexpected exception answers 500 InternalError and is logged, and the server stays
up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvstore.api.errors import S3Error, classify, request_ids, s3_error_response
from kvstore.api.s3 import buckets, multipart, objects, sigv4
from kvstore.api.s3.http import ClientDisconnected, Receive, Request, Scope, Send, respond
from kvstore.engine.device import BufferPool
from kvstore.errors import AccessDenied
from kvstore.tenants import Tenant

if TYPE_CHECKING:
    from kvstore.api.state import AppState

log = logging.getLogger("kvstore.api.s3")

# An error answer swallows an unread request body up to this size to keep the connection;
# past it the connection is closed instead (reading 64 MiB only to refuse it is a waste).
_DRAIN_BYTES_MAX = 1 << 20

Handler = Callable[["S3App", Request, "Call", Send], Awaitable[tuple[int, int]]]

# Sub-resources this store does not implement: 501 NotImplemented, never a 500 or a wrong answer.
UNSUPPORTED = frozenset({
    "acl", "tagging", "lifecycle", "policy", "policyStatus", "cors", "website", "logging",
    "notification", "replication", "encryption", "object-lock", "retention", "legal-hold",
    "torrent", "restore", "select", "accelerate", "requestPayment", "analytics", "inventory",
    "metrics", "intelligent-tiering", "ownershipControls", "publicAccessBlock", "attributes",
    "session", "renameObject",
})


@dataclass(frozen=True, slots=True)
class Call:
    """Who is calling, and the signing context for aws-chunked chunk signatures."""

    tenant: Tenant
    signing: sigv4.SigningContext | None


class S3App:
    """ASGI callable ``async (scope, receive, send)`` serving the S3 API over ``state``."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.engine = state.engine
        self.runner = state.runner
        self.tenants = state.tenants
        self.metrics = state.metrics
        self.region = state.region
        self.uploads = multipart.Uploads()
        self.pool = BufferPool()  # request bodies, page-aligned so the engine writes in place

    @staticmethod
    def access_denied() -> AccessDenied:
        return AccessDenied("Access Denied")

    def check_bucket(self, tenant: Tenant, bucket: str) -> None:
        """The same AccessDenied whether or not the bucket or key exists, unless it is the
        caller's own (or one its credentials may create)."""
        if not self.tenants.dev and not tenant.may_use(bucket):
            raise self.access_denied()
        buckets.check_owner(self, tenant.name, bucket)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        req = Request(scope, receive, request_ids.next())
        t0 = time.perf_counter()
        op = "s3"
        try:
            tenant, signing = sigv4.authenticate(self.tenants, req.method, req.raw_path,
                                                 req.query_pairs, req.headers, time.time())
            handler, op, needs_bucket = self._route(req)
            if needs_bucket:
                self.check_bucket(tenant, req.bucket)
            _status, nbytes = await handler(self, req, Call(tenant, signing), send)
        except ClientDisconnected:
            return
        except Exception as exc:  # every failure answers in S3 XML, never a traceback
            await self._error(req, send, exc, op)
            return
        if self.metrics is not None:
            self.metrics.observe(op, req.tier, nbytes, time.perf_counter() - t0)

    async def _error(self, req: Request, send: Send, exc: Exception, op: str) -> None:
        status, headers, body = s3_error_response(exc, req.resource, req.request_id)
        if not req.body_done:  # leftover body bytes must not be parsed as the next request
            try:
                ok = await req.drain(limit=_DRAIN_BYTES_MAX)
            except Exception:  # noqa: BLE001 - a broken body only means: close
                ok = False
            if not ok:
                headers.append((b"connection", b"close"))
        if self.metrics is not None:
            name = classify(exc)[1] if status != 500 else "InternalError"
            if op == "get" and name == "NoSuchKey":
                self.metrics.observe(op, "miss", 0, 0.0)
            else:
                self.metrics.error(op, name)
        try:
            if req.method == "HEAD":
                await respond(send, status, headers, b"", content_length=0)
            else:
                await respond(send, status, headers, body)
        except Exception:  # response already started, or the client is gone
            log.debug("could not send the error answer for %s", req.request_id, exc_info=True)

    def _route(self, req: Request) -> tuple[Handler, str, bool]:
        """(handler, metrics op name, whether the bucket must exist and be the caller's)."""
        m, q = req.method, req.query
        if not req.bucket:
            if m == "GET":
                return buckets.list_buckets, "list_buckets", False
            raise S3Error("MethodNotAllowed", "The specified method is not allowed against "
                          "this resource.")
        for name in q:
            if name in UNSUPPORTED:
                raise S3Error("NotImplemented", f"the ?{name} sub-resource is not supported")
        if not req.key:
            return self._route_bucket(req, m, q)
        if m == "GET":
            if "uploadId" in q:
                return multipart.list_parts, "list_parts", True
            return objects.get_object, "get", True
        if m == "PUT":
            if "uploadId" in q or "partNumber" in q:
                if "uploadId" not in q:
                    raise S3Error("InvalidArgument", "uploadId is required with partNumber")
                return multipart.upload_part, "upload_part", True
            if "x-amz-copy-source" in req.headers:
                return objects.copy_object, "copy", True
            return objects.put_object, "put", True
        if m == "HEAD":
            return objects.head_object, "head", True
        if m == "DELETE":
            if "uploadId" in q:
                return multipart.abort, "abort_multipart", True
            return objects.delete_object, "delete", True
        if m == "POST":
            if "uploads" in q:
                return multipart.create, "create_multipart", True
            if "uploadId" in q:
                return multipart.complete, "complete_multipart", True
        raise S3Error("NotImplemented" if m == "POST" else "MethodNotAllowed",
                      f"{m} is not supported on an object here")

    def _route_bucket(self, req: Request, m: str, q: dict[str, str]) -> tuple[Handler, str, bool]:
        if m == "PUT":
            if q:
                raise S3Error("NotImplemented", "bucket configuration is not supported")
            return buckets.create_bucket, "create_bucket", False
        if m == "GET":
            if "location" in q:
                return buckets.get_location, "get_bucket_location", True
            if "versioning" in q:
                return buckets.get_versioning, "get_bucket_versioning", True
            if "uploads" in q:
                return multipart.list_uploads, "list_multipart", True
            return buckets.list_objects, "list", True
        if m == "HEAD":
            return buckets.head_bucket, "head_bucket", True
        if m == "DELETE":
            if q:
                raise S3Error("NotImplemented", "bucket configuration is not supported")
            return buckets.delete_bucket, "delete_bucket", True
        if m == "POST" and "delete" in q:
            return objects.delete_objects, "delete_objects", True
        raise S3Error("NotImplemented" if m == "POST" else "MethodNotAllowed",
                      f"{m} is not supported on a bucket here")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
