"""Request bodies of the object writes (PutObject, UploadPart): received into one pooled,
page-aligned buffer, whatever the framing: ``Content-Length``, ``aws-chunked`` (SigV4 streaming,
its chunk signatures checked as they arrive) or plain ``Transfer-Encoding: chunked`` with no
length (bounded by the room the object has left, EntityTooLarge past it). Also the refusal of
write headers that ask for features this store does not have."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.api.errors import S3Error
from kvstore.api.s3 import acl, checksums, chunked, sigv4
from kvstore.api.s3.http import Request
from kvstore.api.s3.intake import Intake
from kvstore.api.s3.numbers import ascii_uint
from kvstore.engine.device import AlignedBuffer, BufferPool, StagedPayload, align_up, copy_into
from kvstore.errors import EntityTooLarge

if TYPE_CHECKING:
    from kvstore.api.s3.app import Call, S3App

# Headers that ask for features this store does not have: refused, never silently ignored.
_UNSUPPORTED_PUT_HEADERS = (
    "x-amz-server-side-encryption", "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date", "x-amz-object-lock-legal-hold", "x-amz-tagging",
    "x-amz-website-redirect-location",
)


def check_unsupported(req: Request, owner_of: Callable[[], str]) -> None:
    """Refuse a write's headers that ask for what this store does not do; an ACL holds only
    when it grants the bucket owner (``owner_of()``, asked only then) FULL_CONTROL alone."""
    for h in _UNSUPPORTED_PUT_HEADERS:
        if h in req.headers:
            raise S3Error("NotImplemented", f"{h} is not supported")
    if acl.has_acl_headers(req.headers):
        acl.check_acl_headers(req.headers, owner_of())
    sc = req.headers.get("x-amz-storage-class", "STANDARD")
    if sc != "STANDARD":
        raise S3Error("NotImplemented", f"storage class {sc} is not supported")


def too_large(room: int = limits.block_bytes_max) -> EntityTooLarge:
    """The one EntityTooLarge of object writes, naming the block limit (and, for a multipart
    part, the room its upload has left)."""
    msg = (f"Your proposed upload exceeds the maximum allowed size: an object here holds at "
           f"most {limits.block_bytes_max} bytes ({limits.block_bytes_max // limits.MiB} MiB, "
           "the block limit)")
    if room < limits.block_bytes_max:
        msg += f"; this upload's parts leave room for {max(room, 0)} more bytes"
    return EntityTooLarge(msg)


class Body:
    """A request body received into a pooled, page-aligned buffer (no zero-filled bytearray per
    request): the engine writes it to flash in place (``staged``), then it goes back to the
    pool with ``release``. A plain body arrives as the server's chunks and is copied into the
    buffer by ``data()`` in a worker thread, keeping that 2 MiB copy off the event loop."""

    __slots__ = ("_pool", "_buf", "_n", "_chunks", "intake", "digests")

    def __init__(self, pool: BufferPool, n: int) -> None:
        self._pool = pool
        self._buf: AlignedBuffer | None = pool.acquire(align_up(n))
        self._n = n
        self._chunks: list[bytes] | None = None
        self.intake: Intake | None = None  # copying and hashing while the body arrives
        self.digests: dict[str, str] = {}  # what the intake computed: "md5", "sha256" (hex)

    def target(self) -> memoryview:
        """Where a decoder writes the body (aws-chunked)."""
        assert self._buf is not None
        return self._buf.view[: self._n]

    def data(self) -> memoryview:
        """The body bytes; copies pending chunks in first (call off the event loop)."""
        view = self.target()
        if self._chunks is not None:
            pos = 0
            for c in self._chunks:
                copy_into(view[pos : pos + len(c)], memoryview(c))  # GIL released
                pos += len(c)
            self._chunks = None
        return view

    def staged(self) -> StagedPayload:
        self.data()
        assert self._buf is not None
        return StagedPayload(self._buf.view[: align_up(self._n)], self._n)

    def release(self) -> None:
        self._chunks = None
        buf, self._buf = self._buf, None
        if buf is None:
            return
        job = self.intake.settled() if self.intake is not None else None
        if job is not None:  # a worker still writes into it: back to the pool after that
            pool = self._pool
            job.add_done_callback(lambda _f: pool.release(buf))
            return
        self._pool.release(buf)

    def __len__(self) -> int:
        return self._n


async def read_payload(s3: S3App, req: Request, call: Call,
                       room: int = limits.http_body_bytes_max
                       ) -> tuple[Body, dict[str, str], str]:
    """The request body in one pooled buffer: (payload, trailers, payload hash). ``room``: the
    most bytes the body may have (EntityTooLarge past it, before reading when the length is
    declared). The caller releases the body."""
    room = min(room, limits.http_body_bytes_max)
    payload_hash = req.headers.get("x-amz-content-sha256", "")
    checksums.check_payload_hash_syntax(payload_hash)
    # The framing is chosen by x-amz-content-sha256 alone, as AWS does: a Content-Encoding
    # that names aws-chunked beside a payload hash (or UNSIGNED-PAYLOAD) is a plain body, and
    # aws-chunked is dropped from the stored encoding (checksums.object_headers).
    if payload_hash in sigv4.STREAMING_MODES:
        declared = req.headers.get("x-amz-decoded-content-length")
        parsed = ascii_uint(declared)
        if parsed is None:
            raise S3Error("MissingContentLength",
                          "aws-chunked bodies need x-amz-decoded-content-length")
        n = parsed
        if n > room:
            raise too_large(room)
        body = Body(s3.pool, n)
        try:
            dec = chunked.AwsChunkedDecoder(body.target(), payload_hash, call.signing)
            # the encoded stream is the payload plus chunk headers and signatures (each chunk but
            # the last is at least 8 KiB, and its framing is under 100 bytes)
            await req.body_feed(dec.feed, n + n // 64 + 64 * limits.KiB)
            return body, dec.finish(), payload_hash
        except BaseException:
            body.release()
            raise
    length = req.content_length()
    if length is None:
        if "chunked" not in req.headers.get("transfer-encoding", "").lower():
            raise S3Error("MissingContentLength",
                          "You must provide the Content-Length HTTP header.")
        # HTTP/1.1 chunked framing without a length (the server decodes it): read up to room
        pieces = await req.body_chunks_upto(room)
        if pieces is None:
            raise too_large(room)
        length = sum(len(c) for c in pieces)
        body = Body(s3.pool, length)
        body._chunks = pieces
        return body, {}, payload_hash
    if length > room:
        raise too_large(room)
    body = Body(s3.pool, length)
    md5 = s3.etag_md5 or "content-md5" in req.headers
    sha256 = bool(payload_hash) and payload_hash != sigv4.UNSIGNED_PAYLOAD
    try:
        if md5 or sha256:  # digested while it arrives (intake.py)
            intake = body.intake = Intake(s3.hashers, body.target(),
                                          md5=s3.new_md5 if md5 else None, sha256=sha256)
            await req.body_into(length, intake.add)
            body.digests = await intake.finish()
        else:
            body._chunks = await req.body_chunks(length)
    except BaseException:
        body.release()
        raise
    return body, {}, payload_hash
