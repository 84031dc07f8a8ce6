"""Incremental decoder of ``aws-chunked`` request bodies (sans-IO).

Three forms, as the AWS SDKs send them::

    STREAMING-AWS4-HMAC-SHA256-PAYLOAD           <hex>;chunk-signature=<sig>\\r\\n<data>\\r\\n ...
                                                 0;chunk-signature=<sig>\\r\\n\\r\\n
    STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER   same, then trailer lines and
                                                 x-amz-trailer-signature:<sig>\\r\\n\\r\\n
    STREAMING-UNSIGNED-PAYLOAD-TRAILER           <hex>\\r\\n<data>\\r\\n ... 0\\r\\n<trailers>\\r\\n\\r\\n

Payload bytes are copied once, straight into the caller's preallocated buffer (sized by
``x-amz-decoded-content-length``). Chunk signatures are checked as each chunk completes, so a
tampered body is refused before anything is stored.
"""

from __future__ import annotations

import hashlib

from kvstore.api.errors import S3Error
from kvstore.api.s3 import sigv4
from kvstore.errors import AuthenticationFailed

# A chunk header line ("<hex>;chunk-signature=<64 hex>") is under 100 bytes; trailers carry a few
# checksum headers. Both bounded so a peer cannot make us buffer an endless line.
CHUNK_LINE_BYTES_MAX = 4096
TRAILER_BYTES_MAX = 16 * 1024

_HEADER, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class AwsChunkedDecoder:
    def __init__(
        self,
        out: memoryview,
        mode: str,
        ctx: sigv4.SigningContext | None = None,
    ) -> None:
        if mode not in sigv4.STREAMING_MODES:
            raise S3Error("NotImplemented", f"x-amz-content-sha256 {mode!r} is not supported")
        self._out = out
        self._signed = mode != sigv4.STREAMING_UNSIGNED_TRAILER
        self._trailer_mode = mode != sigv4.STREAMING_SIGNED
        self._ctx = ctx  # None: development mode, signatures are not checked
        self._prev_sig = ctx.seed_signature if ctx else ""
        self._state = _HEADER
        self._line = bytearray()
        self._pos = 0  # payload bytes written
        self._chunk_start = 0
        self._remaining = 0
        self._chunk_sig = ""
        self._trailer = bytearray()
        self.trailers: dict[str, str] = {}

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def length(self) -> int:
        return self._pos

    def feed(self, data: bytes | memoryview) -> None:
        mv = memoryview(data)
        i, n = 0, len(mv)
        while i < n:
            st = self._state
            if st == _DATA:
                take = min(self._remaining, n - i)
                self._out[self._pos:self._pos + take] = mv[i:i + take]
                self._pos += take
                self._remaining -= take
                i += take
                if self._remaining == 0:
                    self._state = _DATA_END
            elif st in (_HEADER, _DATA_END):
                j = bytes(mv[i:min(n, i + CHUNK_LINE_BYTES_MAX)]).find(b"\n")
                if j < 0:
                    self._line += mv[i:]
                    i = n
                    if len(self._line) > CHUNK_LINE_BYTES_MAX:
                        raise S3Error("IncompleteBody", "aws-chunked line too long")
                    continue
                self._line += mv[i:i + j + 1]
                i += j + 1
                line = bytes(self._line)
                self._line.clear()
                if len(line) > CHUNK_LINE_BYTES_MAX:
                    raise S3Error("IncompleteBody", "aws-chunked line too long")
                if st == _DATA_END:
                    if line != b"\r\n":
                        raise S3Error("IncompleteBody", "aws-chunked data not followed by CRLF")
                    self._end_chunk()
                    self._state = _HEADER
                else:
                    self._start_chunk(line)
            elif st == _TRAILER:
                j = bytes(mv[i:]).find(b"\n")
                end = n if j < 0 else i + j + 1
                self._trailer += mv[i:end]
                i = end
                if len(self._trailer) > TRAILER_BYTES_MAX:
                    raise S3Error("IncompleteBody", "aws-chunked trailer too long")
                if j >= 0:
                    self._trailer_line()
            else:
                if bytes(mv[i:]).strip(b"\r\n"):
                    raise S3Error("IncompleteBody", "bytes after the final aws-chunked chunk")
                i = n

    def _start_chunk(self, line: bytes) -> None:
        text = line.rstrip(b"\r\n").decode("latin-1")
        size_s, _, ext = text.partition(";")
        try:
            size = int(size_s, 16)
        except ValueError:
            raise S3Error("IncompleteBody", "bad aws-chunked chunk size") from None
        if size < 0:
            raise S3Error("IncompleteBody", "bad aws-chunked chunk size")
        sig = ""
        if self._signed:
            name, _, sig = ext.partition("=")
            if name.strip() != "chunk-signature" or not sig:
                raise S3Error("IncompleteBody", "aws-chunked chunk lacks its signature")
        if self._pos + size > len(self._out):
            raise S3Error("IncompleteBody", "body longer than x-amz-decoded-content-length")
        self._chunk_sig = sig
        self._chunk_start = self._pos
        self._remaining = size
        if size == 0:
            self._end_chunk()
            self._state = _TRAILER
        else:
            self._state = _DATA

    def _end_chunk(self) -> None:
        if not (self._signed and self._ctx is not None):
            return
        digest = hashlib.sha256(self._out[self._chunk_start:self._pos]).hexdigest()
        expected = sigv4.chunk_signature(self._ctx, self._prev_sig, digest)
        if not _eq(expected, self._chunk_sig):
            raise AuthenticationFailed("aws-chunked chunk signature does not match")
        self._prev_sig = expected

    def _trailer_line(self) -> None:
        # self._trailer holds all trailer lines so far; the newest one ends it.
        body = bytes(self._trailer)
        start = body.rfind(b"\n", 0, len(body) - 1) + 1
        line = body[start:].rstrip(b"\r\n")
        if line:
            if not self._trailer_mode:
                raise S3Error("IncompleteBody", "unexpected trailer")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise S3Error("IncompleteBody", "malformed aws-chunked trailer")
            name = name.strip().lower()
            if name == "x-amz-trailer-signature":
                self._check_trailer_signature(body[:start], value.strip())
            self.trailers[name] = value.strip()
            return
        self._state = _DONE

    def _check_trailer_signature(self, trailer: bytes, sig: str) -> None:
        if not (self._signed and self._ctx is not None):
            return
        canonical = b"".join(
            ln.rstrip(b"\r") + b"\n" for ln in trailer.split(b"\n") if ln.rstrip(b"\r"))
        expected = sigv4.trailer_signature(self._ctx, self._prev_sig, canonical)
        if not _eq(expected, sig):
            raise AuthenticationFailed("aws-chunked trailer signature does not match")

    def finish(self) -> dict[str, str]:
        """Trailers, once the body was complete and exactly as long as declared."""
        if self._state != _DONE or self._pos != len(self._out):
            raise S3Error("IncompleteBody",
                          "You did not provide the number of bytes specified by the "
                          "x-amz-decoded-content-length header.")
        # a missing trailer signature is refused in development mode too: only comparing
        # signatures is skipped there
        if self._signed and self._trailer_mode and "x-amz-trailer-signature" not in self.trailers:
            raise AuthenticationFailed("aws-chunked trailer signature missing")
        return {k: v for k, v in self.trailers.items() if k != "x-amz-trailer-signature"}


def _eq(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
