"""Raw ASGI plumbing for the S3 surface: the request view, body reading, answers, and the pure
HTTP rules (Range, conditional requests, dates) that GetObject/HeadObject need.

No framework: the hot object routes parse the scope themselves and read the body straight into
one preallocated buffer of Content-Length bytes.
"""

from __future__ import annotations

import email.utils
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from kvstore import limits
from kvstore.api.errors import S3Error
from kvstore.api.s3.numbers import ascii_uint

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class ClientDisconnected(Exception):
    """The client went away mid-request; nothing to answer."""


def parse_query(qs: bytes) -> list[tuple[str, str]]:
    pairs = []
    for item in qs.decode("latin-1").split("&"):
        if not item:
            continue
        k, _, v = item.partition("=")
        pairs.append((unquote(k), unquote(v)))
    return pairs


def host_bucket(host: str | None, domain: str) -> str | None:
    """The bucket a virtual-host-style request names: ``BUCKET`` of a Host header
    ``BUCKET.DOMAIN[:port]`` (case-insensitive, a trailing dot allowed); None for any other
    host (the domain itself, an IP address, another name), which is then path-style."""
    if not host:
        return None
    name = host.lower()
    if name.startswith("["):  # an IPv6 literal is never virtual-host style
        return None
    name = name.rpartition(":")[0] if ":" in name else name
    name = name.rstrip(".")
    if len(name) <= len(domain) + 1 or not name.endswith(domain) \
            or name[-len(domain) - 1] != ".":
        return None
    return name[:-len(domain) - 1]


class Request:
    """What a handler needs from one ASGI HTTP scope. With ``domain`` set, a Host header
    ``BUCKET.DOMAIN`` names the bucket and the whole path (less its leading slash) is the key
    (virtual-host style); otherwise the path is ``/bucket/key`` (path style)."""

    __slots__ = ("method", "raw_path", "path", "query_pairs", "query", "headers", "bucket",
                 "key", "receive", "request_id", "client", "body_done", "tier")

    def __init__(self, scope: Scope, receive: Receive, request_id: str,
                 domain: str | None = None) -> None:
        self.method: str = scope["method"]
        raw = scope.get("raw_path")
        self.raw_path: str = raw.decode("latin-1") if raw else scope["path"]
        self.path: str = scope["path"]
        self.query_pairs = parse_query(scope.get("query_string", b""))
        self.query = dict(self.query_pairs)
        raw_headers = scope["headers"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        if len(headers) != len(raw_headers):  # a repeated header: its values, comma-joined
            headers = {}
            for k, v in raw_headers:
                name = k.decode("latin-1").lower()
                val = v.decode("latin-1")
                headers[name] = f"{headers[name]},{val}" if name in headers else val
        self.headers = headers
        vhost = host_bucket(headers.get("host"), domain) if domain else None
        if vhost is None:
            bucket, _, key = self.path.lstrip("/").partition("/")
        else:
            bucket, key = vhost, self.path[1:] if self.path.startswith("/") else self.path
        self.bucket = bucket
        self.key = key
        self.receive = receive
        self.request_id = request_id
        self.client = scope.get("client")
        self.tier = "-"  # metrics label: "dram" / "flash" once a GET knows where it read from
        self.body_done = self.method in ("GET", "HEAD", "DELETE", "OPTIONS") and \
            "content-length" not in self.headers and "transfer-encoding" not in self.headers

    @property
    def resource(self) -> str:
        return self.path

    def content_length(self) -> int | None:
        v = self.headers.get("content-length")
        if v is None:
            return None
        n = ascii_uint(v)
        if n is None:
            raise S3Error("InvalidArgument", "bad Content-Length")
        return n

    async def _pieces(self, limit: int, too_long: str) -> AsyncIterator[bytes]:
        """The body's pieces as the server hands them over, at most ``limit`` bytes in all."""
        total = 0
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk = msg.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise S3Error(too_long, f"request body over {limit} bytes")
                yield chunk
            if not msg.get("more_body", False):
                self.body_done = True
                return

    async def body_feed(self, feed: Callable[[bytes], None], limit: int) -> None:
        """Hand every piece of the body to ``feed`` (aws-chunked decoding)."""
        async for chunk in self._pieces(limit, "IncompleteBody"):
            feed(chunk)

    async def body_chunks(self, size: int) -> list[bytes]:
        """Receive a body of exactly ``size`` bytes as the server's chunks, without copying
        them on the event loop (the caller copies them in a worker thread)."""
        chunks = [c async for c in self._pieces(size, "IncompleteBody")]
        if sum(len(c) for c in chunks) != size:
            raise S3Error("IncompleteBody",
                          "You did not provide the number of bytes specified by the "
                          "Content-Length HTTP header.")
        return chunks

    async def body_into(self, size: int, add: Callable[[bytes], Awaitable[None]]) -> None:
        """Hand a body of exactly ``size`` bytes to ``add`` piece by piece, as it arrives."""
        total = 0
        async for c in self._pieces(size, "IncompleteBody"):
            total += len(c)
            await add(c)
        if total != size:
            raise S3Error("IncompleteBody",
                          "You did not provide the number of bytes specified by the "
                          "Content-Length HTTP header.")

    async def body_chunks_upto(self, limit: int) -> list[bytes] | None:
        """A body of unknown length (``Transfer-Encoding: chunked``) as the server's chunks;
        None as soon as it is past ``limit`` bytes (the rest stays unread)."""
        chunks: list[bytes] = []
        total = 0
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk = msg.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    return None
                chunks.append(chunk)
            if not msg.get("more_body", False):
                self.body_done = True
                return chunks

    async def small_body(self, limit: int) -> bytes:
        """A whole small body (XML requests) of at most ``limit`` bytes."""
        n = self.content_length()
        if n is not None:
            if n > limit:
                raise S3Error("MaxMessageLengthExceeded", f"request body over {limit} bytes")
            return b"".join(await self.body_chunks(n))
        return b"".join([c async for c in self._pieces(limit, "MaxMessageLengthExceeded")])

    async def drain(self, limit: int = 64 * limits.KiB) -> bool:
        """Swallow a small unread body so the connection can be reused. False when the body
        is too large (or of unknown length) to swallow: then the connection must close."""
        if self.body_done:
            return True
        n = self.content_length()
        if n is None and "transfer-encoding" not in self.headers:
            n = 0  # HTTP/1.1: no Content-Length and no Transfer-Encoding means an empty body
        if n is None or n > limit:
            return False
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect" or not msg.get("more_body", False):
                self.body_done = True
                return True

    async def discard_body(self, limit: int = 64 * limits.KiB) -> None:
        """Drop a body this request does not use; refuse one too large to drop."""
        if not await self.drain(limit):
            raise S3Error("MaxMessageLengthExceeded", f"request body over {limit} bytes")


async def respond(send: Send, status: int, headers: Headers, body: bytes | memoryview = b"",
                  *, content_length: int | None = None) -> None:
    """One complete answer. ``content_length`` overrides the body's length (HEAD)."""
    n = len(body) if content_length is None else content_length
    headers.append((b"content-length", str(n).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- Range ---------------------------------------------------------------------------------


RANGE_DIGITS_MAX = 19  # digits of a Range position taken at their value (2**63 has 19)


def _range_spec(header: str | None) -> tuple[str, str] | None:
    """The (first, last) digit strings of a single ``bytes=first-last`` range, either may be
    empty (not both); None when the header is absent or of a form this server ignores."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    # ASCII digits only ('²'.isdigit() is true and int('²') fails)
    if not dash or (first and not _is_digits(first)) or (last and not _is_digits(last)):
        return None
    if not first and not last:
        return None
    if first and last and _num(last) < _num(first):
        return None
    return first, last


def _is_digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _num(s: str) -> int:
    """A Range position; one past any object size when longer than RANGE_DIGITS_MAX digits
    (Python refuses to convert more than 4300 digits, and no object is that large)."""
    n = ascii_uint(s, RANGE_DIGITS_MAX)
    return n if n is not None else 1 << 64


def range_request(header: str | None) -> tuple[int, int | None] | None:
    """What to ask ``engine.read_range`` for before the object's size is known: (offset,
    length), a negative offset for a suffix range; None to read the whole object.
    ``parse_range`` on the size that read returns gives the answer (or InvalidRange)."""
    spec = _range_spec(header)
    if spec is None:
        return None
    first, last = spec
    if not first:
        n = _num(last)
        return (-n, None) if n else (0, 0)  # bytes=-0 is unsatisfiable: the header will say
    start = _num(first)
    return start, None if not last else _num(last) + 1 - start


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=...`` -> (start, end exclusive), None for the whole object.

    Unsatisfiable ranges raise InvalidRange (416); syntactically foreign ones are ignored,
    as RFC 9110 allows (and as S3 does for multiple ranges)."""
    spec = _range_spec(header)
    if spec is None:
        return None
    first, last = spec
    if not first:
        n = _num(last)
        if n == 0 or size == 0:
            raise _invalid_range(size)
        return max(0, size - n), size
    start = _num(first)
    if start >= size:
        raise _invalid_range(size)
    end = size if not last else min(size, _num(last) + 1)
    return start, end


def _invalid_range(size: int) -> S3Error:
    return S3Error("InvalidRange", "The requested range is not satisfiable",
                   headers={"content-range": f"bytes */{size}"})


def copy_source_range(header: str) -> tuple[int, int]:
    """``x-amz-copy-source-range: bytes=first-last`` -> (first, last), both inclusive.

    Stricter than Range, as S3 is: the unit, both positions, one range, first <= last; else
    400 InvalidArgument. ``copy_source_slice`` checks it against the source's size."""
    spec = _range_spec(header)
    if spec is None or not spec[0] or not spec[1] or not header.strip().startswith("bytes="):
        raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form "
                      "bytes=first-last where first and last are the zero-based offsets of the "
                      "first and last bytes to copy",
                      elements=(("ArgumentName", "x-amz-copy-source-range"),
                                ("ArgumentValue", header)))
    return _num(spec[0]), _num(spec[1])


def copy_source_slice(rng: tuple[int, int], size: int) -> tuple[int, int]:
    """(start, end exclusive) of a copy-source range that lies within a source of ``size``
    bytes; InvalidRange otherwise (AWS does not clamp it as it does a GET's Range)."""
    first, last = rng
    if last >= size:
        raise S3Error("InvalidRange", "Range specified is not valid for source object of size: "
                      f"{size}", headers={"content-range": f"bytes */{size}"})
    return first, last + 1


# --- Conditional requests -----------------------------------------------------------------


def http_date(ts: float) -> str:
    """An IMF-fixdate (RFC 9110), whole seconds: Last-Modified of every HEAD and GET."""
    return _http_date_s(int(ts))


@functools.lru_cache(maxsize=4096)
def _http_date_s(ts: int) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def parse_http_date(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return email.utils.parsedate_to_datetime(s).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _etags(header: str) -> list[str]:
    out = []
    for t in header.split(","):
        t = t.strip()
        if t.startswith("W/"):
            t = t[2:]
        out.append(t.strip('"'))
    return out


def check_conditions(headers: dict[str, str], etag: str, modified: float) -> None:
    """GET/HEAD preconditions (RFC 9110 section 13.2.2 order). Raises PreconditionFailed (412)
    or NotModified (304)."""
    mtime = int(modified)
    im = headers.get("if-match")
    if im is not None:
        tags = _etags(im)
        if "*" not in tags and etag not in tags:
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                          "specified did not hold", headers={"etag": f'"{etag}"'})
    else:
        ius = parse_http_date(headers.get("if-unmodified-since"))
        if ius is not None and mtime > ius:
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                          "specified did not hold")
    inm = headers.get("if-none-match")
    if inm is not None:
        tags = _etags(inm)
        if "*" in tags or etag in tags:
            raise S3Error("NotModified", "Not Modified", headers={"etag": f'"{etag}"'})
    else:
        ims = parse_http_date(headers.get("if-modified-since"))
        if ims is not None and mtime <= ims:
            raise S3Error("NotModified", "Not Modified", headers={"etag": f'"{etag}"'})
