"""The S3-compatible surface as a raw ASGI app: ``S3App(state)``.

No framework: a route table (``ROUTES``, one row per operation, looked up by target and
method) picks the handler, so GET and PUT
of an object pay only for SigV4, one engine call and the socket. Path-style addressing
(``/bucket/key``), and virtual-host style (Host ``bucket.DOMAIN``, path ``/key``) when the node
has a ``domain`` (``kvstore serve --domain``). Every failure becomes an S3 XML error through ``kvstore.api.errors`` (the one
mapper); an unexpected exception answers 500 InternalError and is logged, and the server stays
up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from kvstore import limits
from kvstore.api.conn_tenant import bind_connection
from kvstore.api.errors import S3Error, classify, request_ids, s3_error_response
from kvstore.api.s3 import acl, attributes, buckets, copying, md5lanes, multipart, objects, sigv4
from kvstore.api.s3.answer_cache import AnswerCache
from kvstore.api.s3.http import ClientDisconnected, Receive, Request, Scope, Send, respond
from kvstore.auth import Op, Tenant
from kvstore.engine.device import BufferPool
from kvstore.errors import AccessDenied, InvalidKey, NamespaceNotFound

if TYPE_CHECKING:
    from kvstore.service import Node

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
    "metrics", "intelligent-tiering", "ownershipControls", "publicAccessBlock", "session",
    "renameObject",
})
# ... but for these requests, which answer what holds (ACLs disabled, as on AWS by default)
_ANSWERED = frozenset({("GET", "acl"), ("PUT", "acl"), ("GET", "ownershipControls")})


class Call(NamedTuple):
    """Who is calling, and the signing context for aws-chunked chunk signatures (a tuple: one
    is built per request, and a frozen dataclass costs several times as much to build)."""

    tenant: Tenant
    signing: sigv4.SigningContext | None


class S3App:
    """ASGI callable ``async (scope, receive, send)`` serving the S3 API over ``state``."""

    def __init__(self, state: Node) -> None:
        self.state = state
        self.blocks = state.blocks
        self.tenants = state.tenants
        self.region = state.region
        self.domain = state.domain
        self.uploads = multipart.Uploads()
        self.pool = BufferPool()  # request bodies, page-aligned so the engine writes in place
        # ETags: the MD5 of the bytes as S3 has them (what sync tools compare), or, opt-in
        # (--etag xxh3), the block's xxh3 checksum, which costs no extra pass over the bytes
        self.etag_md5 = state.etag == "md5"
        self.write_locks = [threading.Lock() for _ in range(limits.conditional_write_locks)]
        self.answers = AnswerCache()  # GetObject/HeadObject headers per object version
        # PUT bodies are copied and hashed (MD5, SHA-256) here while they arrive (intake.py)
        self.hashers = ThreadPoolExecutor(limits.s3_hash_threads,
                                          thread_name_prefix="kvstore-s3-hash")
        # their MD5s: side by side in SIMD lanes where the CPU has them, else hashlib's
        self.new_md5, self.md5_kind = md5lanes.factory()
        if self.etag_md5:
            log.info("%s", self.md5_kind)

    async def shutdown(self) -> None:
        """Lifespan shutdown (``KVStoreApp``): the hashing threads exit once idle."""
        self.hashers.shutdown(wait=False)
        lanes = getattr(self.new_md5, "__self__", None)
        if isinstance(lanes, md5lanes.Md5Lanes):
            lanes.close()
            if lanes.rounds:
                log.info("MD5 lanes: %d streams in %d rounds (%.1f lanes used a round)",
                         lanes.streams, lanes.rounds, lanes.streams / lanes.rounds)

    def md5_hex(self, data: bytes | bytearray | memoryview) -> str:
        """The MD5 of ``data`` as hex (blocking: from a worker thread), in a lane beside
        concurrent bodies where the CPU has SIMD kernels."""
        h = self.new_md5()
        h.update(data)
        return h.hexdigest()

    @staticmethod
    def access_denied() -> AccessDenied:
        return AccessDenied("Access Denied")

    def check_bucket(self, tenant: Tenant, bucket: str, op: Op = Op.READ) -> None:
        """Ask the one policy (``BlockService.authorize``): the same AccessDenied whether or not
        the bucket or key exists, unless it is the caller's own (or one its credentials may
        create), which answers NoSuchBucket."""
        try:
            self.blocks.authorize(tenant, bucket, op)
        except NamespaceNotFound:
            raise NamespaceNotFound("The specified bucket does not exist") from None

    def bucket_owner(self, tenant: Tenant, bucket: str) -> str:
        """The tenant that owns ``bucket``, for a caller allowed to read it ("": development
        mode)."""
        return self.blocks.namespace(tenant, bucket).owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        req = Request(scope, receive, request_ids.next(), self.domain)
        t0 = time.perf_counter()
        op = "s3"
        try:
            tenant, signing = sigv4.authenticate(self.tenants, req.method, req.raw_path,
                                                 req.query_pairs, req.headers, time.time())
            bind_connection(scope, tenant)  # Busy past --max-connections-per-tenant
            # an object's GET or HEAD with no query (the hot paths) skips the route table;
            # the policy check below is the same either way
            fast = _FAST.get(req.method) if req.key and not req.query_pairs else None
            handler, op, needs = fast if fast is not None else route(req)
            if needs is not None:
                self.check_bucket(tenant, req.bucket, needs)
            if "x-amz-expected-bucket-owner" in req.headers \
                    or "x-amz-source-expected-bucket-owner" in req.headers:
                self._check_expected_owners(tenant, req)
            _status, nbytes = await handler(self, req, Call(tenant, signing), send)
        except ClientDisconnected:
            return
        except Exception as exc:  # every failure answers in S3 XML, never a traceback
            await self._error(req, send, exc, op)
            return
        self.blocks.observe(op, req.tier, nbytes, time.perf_counter() - t0)

    def _check_expected_owners(self, tenant: Tenant, req: Request) -> None:
        """x-amz-expected-bucket-owner (and, for a copy, x-amz-source-expected-bucket-owner):
        AccessDenied unless the bucket's owner has that ID (the Owner ID listings show: the
        tenant name, "kvstore" in development mode). A bucket that is absent, or that the
        caller may not read, is left to the handler's own answer, so the check tells nothing
        about someone else's bucket."""
        checks = [(req.headers.get("x-amz-expected-bucket-owner"), req.bucket)]
        src = req.headers.get("x-amz-copy-source")
        if src is not None:
            checks.append((req.headers.get("x-amz-source-expected-bucket-owner"),
                           copying.parse_copy_source(src)[0]))
        for expected, bucket in checks:
            if expected is None or not bucket:
                continue
            try:
                owner = self.bucket_owner(tenant, bucket) or "kvstore"
            except (NamespaceNotFound, AccessDenied):
                continue
            if expected != owner:
                raise self.access_denied()

    async def _error(self, req: Request, send: Send, exc: Exception, op: str) -> None:
        if isinstance(exc, InvalidKey) and \
                len(req.key.encode("utf-8", "surrogatepass")) > limits.key_bytes_max:
            exc = S3Error("KeyTooLongError", "Your key is too long")  # S3's code for it
        status, headers, body = s3_error_response(exc, req.resource, req.request_id)
        if not req.body_done:  # leftover body bytes must not be parsed as the next request
            # A client that sent Expect: 100-continue waits for 100 before the body, and the
            # first receive() sends it: then the answer is the error alone, and the connection
            # closes (the client may or may not send the body now; RFC 9110 15.2.1).
            ok = False
            if req.headers.get("expect", "").lower() != "100-continue":
                try:
                    ok = await req.drain(limit=_DRAIN_BYTES_MAX)
                except Exception:  # noqa: BLE001 - a broken body only means: close
                    ok = False
            if not ok:
                headers.append((b"connection", b"close"))
        name = classify(exc)[1] if status != 500 else "InternalError"
        if op == "get" and name == "NoSuchKey":
            self.blocks.observe(op, "miss", 0, 0.0)
        else:
            self.blocks.failed(op, name)
        try:
            if req.method == "HEAD":
                await respond(send, status, headers, b"", content_length=0)
            else:
                await respond(send, status, headers, body)
        except Exception:  # response already started, or the client is gone
            log.debug("could not send the error answer for %s", req.request_id, exc_info=True)


def route(req: Request) -> tuple[Handler, str, Op | None]:
    """(handler, metrics op name, what the caller must be allowed to do to the bucket; None:
    the handler asks the policy itself), from ``ROUTES``; an S3Error when no row takes it."""
    m = req.method
    if not req.bucket:
        target = "service"
    else:
        for name in req.query:
            if name in UNSUPPORTED and (m, name) not in _ANSWERED:
                raise S3Error("NotImplemented", f"the ?{name} sub-resource is not supported")
        target = "object" if req.key else "bucket"
    for row in ROUTE_TABLE.get((target, m), ()):
        if row.when(req):
            if row.handler is None:
                assert row.refuse is not None
                raise S3Error(*row.refuse)
            return row.handler, row.op, row.needs
    if target == "service":
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against "
                      "this resource.")
    raise S3Error("NotImplemented" if m == "POST" else "MethodNotAllowed",
                  f"{m} is not supported on {'an object' if req.key else 'a bucket'} here")


def _always(req: Request) -> bool:
    return True


def _query(*names: str) -> Callable[[Request], bool]:
    def when(req: Request) -> bool:
        return any(n in req.query for n in names)
    return when


def _any_query(req: Request) -> bool:
    return bool(req.query)


def _header(name: str) -> Callable[[Request], bool]:
    def when(req: Request) -> bool:
        return name in req.headers
    return when


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the S3 route table: a request on ``target`` (the service, a bucket or an
    object) with ``method`` for which ``when`` holds goes to ``handler``, counted as ``op``,
    after the policy allowed ``needs`` on the bucket (None: the handler asks it). A row without
    a handler refuses the request with ``refuse`` (S3 code, message)."""

    target: str
    method: str
    when: Callable[[Request], bool]
    handler: Handler | None
    op: str
    needs: Op | None
    refuse: tuple[str, str] | None = None


_NO_BUCKET_CONFIG = ("NotImplemented", "bucket configuration is not supported")

# Rows are tried in order within one (target, method); the first whose ``when`` holds wins.
ROUTES: tuple[Route, ...] = (
    Route("service", "GET", _always, buckets.list_buckets, "list_buckets", None),
    # buckets
    Route("bucket", "PUT", _query("acl"), acl.put_acl, "put_acl", Op.WRITE),
    Route("bucket", "PUT", _any_query, None, "create_bucket", None, _NO_BUCKET_CONFIG),
    Route("bucket", "PUT", _always, buckets.create_bucket, "create_bucket", None),
    Route("bucket", "GET", _query("location"), buckets.get_location, "get_bucket_location",
          Op.READ),
    Route("bucket", "GET", _query("versioning"), buckets.get_versioning,
          "get_bucket_versioning", Op.READ),
    Route("bucket", "GET", _query("acl"), acl.get_acl, "get_acl", Op.READ),
    Route("bucket", "GET", _query("ownershipControls"), acl.get_ownership,
          "get_ownership_controls", Op.READ),
    Route("bucket", "GET", _query("uploads"), multipart.list_uploads, "list_multipart",
          Op.READ),
    Route("bucket", "GET", _always, buckets.list_objects, "list", Op.READ),
    Route("bucket", "HEAD", _always, buckets.head_bucket, "head_bucket", Op.READ),
    Route("bucket", "DELETE", _any_query, None, "delete_bucket", None, _NO_BUCKET_CONFIG),
    Route("bucket", "DELETE", _always, buckets.delete_bucket, "delete_bucket", Op.DELETE),
    Route("bucket", "POST", _query("delete"), objects.delete_objects, "delete_objects",
          Op.DELETE),
    # objects
    Route("object", "GET", _query("uploadId"), multipart.list_parts, "list_parts", Op.READ),
    Route("object", "GET", _query("acl"), acl.get_acl, "get_acl", Op.READ),
    Route("object", "GET", _query("attributes"), attributes.get_object_attributes,
          "get_attributes", Op.READ),
    Route("object", "GET", _always, objects.get_object, "get", Op.READ),
    Route("object", "PUT", _query("acl"), acl.put_acl, "put_acl", Op.WRITE),
    Route("object", "PUT", _query("uploadId"), multipart.upload_part, "upload_part", Op.WRITE),
    Route("object", "PUT", _query("partNumber"), None, "upload_part", Op.WRITE,
          ("InvalidArgument", "uploadId is required with partNumber")),
    Route("object", "PUT", _header("x-amz-copy-source"), copying.copy_object, "copy",
          Op.WRITE),
    Route("object", "PUT", _always, objects.put_object, "put", Op.WRITE),
    Route("object", "HEAD", _always, objects.head_object, "head", Op.READ),
    Route("object", "DELETE", _query("uploadId"), multipart.abort, "abort_multipart",
          Op.WRITE),
    Route("object", "DELETE", _always, objects.delete_object, "delete", Op.DELETE),
    Route("object", "POST", _query("uploads"), multipart.create, "create_multipart", Op.WRITE),
    Route("object", "POST", _query("uploadId"), multipart.complete, "complete_multipart",
          Op.WRITE),
)

# What ``route`` answers for an object's GET and HEAD without a query (the first matching row).
_FAST: dict[str, tuple[Handler, str, Op | None]] = {
    "GET": (objects.get_object, "get", Op.READ),
    "HEAD": (objects.head_object, "head", Op.READ),
}

ROUTE_TABLE: dict[tuple[str, str], tuple[Route, ...]] = {}
for _r in ROUTES:
    ROUTE_TABLE[(_r.target, _r.method)] = (*ROUTE_TABLE.get((_r.target, _r.method), ()), _r)
del _r


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
