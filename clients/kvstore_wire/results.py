"""The answers of the bulk port, as frozen dataclasses with one encoder (``to_header``) and one
parser (``from_header``): BLOCK, END, ERROR and the RESULT of each request type.

A RESULT is parsed knowing what it answers (``RESULTS[request type]``, and how many keys the
request had): a count past the request, a list of the wrong length or a field of the wrong type
is a ``ProtocolError``, whichever answer it is (the connection is then out of step and closes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from kvstore_wire import limits
from kvstore_wire.checksum import CHECKSUM_MAX
from kvstore_wire.errors import KVStoreError, ProtocolError, error_from_code
from kvstore_wire.frames import FrameType
from kvstore_wire.messages import get_field
from kvstore_wire.state import out_of_band

ERROR_MESSAGE_CHARS_MAX = 1024  # an ERROR frame's message is cut to this


def _count(h: dict[str, Any], name: str, hi: int | None) -> int:
    v: int = get_field(h, name, int)
    if v < 0 or (hi is not None and v > hi):
        raise ProtocolError(f"{name!r} must be a count in [0, {hi}]")
    return v


def _bools(h: dict[str, Any], name: str, n: int | None) -> list[bool]:
    v: list[bool] = get_field(h, name, list)
    if n is not None and len(v) != n:
        raise ProtocolError(f"{name!r} must have one entry per key")
    if not all(isinstance(x, bool) for x in v):
        raise ProtocolError(f"{name!r} entries must be booleans")
    return v


# --- frames that answer GET_BATCH, and ERROR -------------------------------------------------

@dataclass(frozen=True, slots=True)
class BlockHeader:
    """BLOCK (s>c): one block of a GET_BATCH answer; the payload is its bytes, or, out of band,
    the bytes landed in the client's region at the slot of ``index``."""

    FRAME: ClassVar[FrameType] = FrameType.BLOCK
    index: int  # position of the key in the GET_BATCH request
    key: str
    length: int
    checksum: int
    # Only when the GET asked for them (``KeysRequest.with_meta``): the block's stored opaque
    # metadata, its creation time and its expiry (Unix seconds); b"" and 0.0 otherwise.
    meta: bytes = b""
    created: float = 0.0
    expires: float = 0.0  # Unix seconds, 0 = never (only with ``with_meta`` too)

    def to_header(self) -> dict[str, Any]:
        h: dict[str, Any] = {"i": self.index, "key": self.key, "len": self.length,
                             "xxh": self.checksum}
        if self.meta:
            h["meta"] = bytes(self.meta)
        if self.created:
            h["created"] = float(self.created)
        if self.expires:
            h["expires"] = float(self.expires)
        return h

    @classmethod
    def from_header(cls, h: dict[str, Any], payload_length: int, flags: int = 0) -> BlockHeader:
        b = cls(get_field(h, "i", int), get_field(h, "key", str), get_field(h, "len", int),
                get_field(h, "xxh", int), get_field(h, "meta", bytes, b""),
                float(get_field(h, "created", (int, float), 0.0)),
                float(get_field(h, "expires", (int, float), 0.0)))
        if not (0 <= b.length <= limits.block_bytes_max and 0 <= b.checksum <= CHECKSUM_MAX
                and 0 <= b.index < limits.batch_keys_max
                and len(b.meta) <= limits.block_meta_bytes_max):
            raise ProtocolError("block header out of range")
        if not out_of_band(flags) and b.length != payload_length:
            raise ProtocolError("block length differs from the frame's payload length")
        return b


@dataclass(frozen=True, slots=True)
class End:
    """END (s>c): the last frame of a GET_BATCH answer; ``n`` blocks were sent."""

    FRAME: ClassVar[FrameType] = FrameType.END
    n: int

    def to_header(self) -> dict[str, Any]:
        return {"n": self.n}

    @classmethod
    def from_header(cls, h: dict[str, Any], keys: int | None = None) -> End:
        return cls(_count(h, "n", keys))


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """ERROR (s>c): a request failed (request id != 0) or the connection did (request id 0)."""

    FRAME: ClassVar[FrameType] = FrameType.ERROR
    code: int
    name: str
    message: str

    @classmethod
    def of(cls, exc: KVStoreError) -> ErrorInfo:
        return cls(exc.code, exc.name, exc.message[:ERROR_MESSAGE_CHARS_MAX])

    def to_header(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "message": self.message}

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> ErrorInfo:
        return cls(get_field(h, "code", int), str(get_field(h, "name", str, "")),
                   str(get_field(h, "message", str, ""))[:ERROR_MESSAGE_CHARS_MAX])

    def exception(self) -> KVStoreError:
        """The error class of ``code`` (a plain KVStoreError for a code this side lacks)."""
        return error_from_code(self.code, self.message)


# --- RESULT, per request type ------------------------------------------------------------------

class Result(Protocol):
    def to_header(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class PingResult:
    def to_header(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_header(cls, h: dict[str, Any], keys: int | None = None) -> PingResult:
        return cls()


@dataclass(frozen=True, slots=True)
class StatsResult:
    stats: dict[str, Any]
    namespace: str
    blocks: int

    def to_header(self) -> dict[str, Any]:
        return {"stats": self.stats, "namespace": self.namespace, "blocks": self.blocks}

    @classmethod
    def from_header(cls, h: dict[str, Any], keys: int | None = None) -> StatsResult:
        return cls(get_field(h, "stats", dict), get_field(h, "namespace", str),
                   _count(h, "blocks", None))


@dataclass(frozen=True, slots=True)
class PutResult:
    created: list[bool]  # per key; see ``messages.PutBatch``

    def to_header(self) -> dict[str, Any]:
        return {"created": self.created}

    @classmethod
    def from_header(cls, h: dict[str, Any], keys: int | None = None) -> PutResult:
        return cls(_bools(h, "created", keys))


@dataclass(frozen=True, slots=True)
class ExistsResult:
    exists: list[bool]

    def to_header(self) -> dict[str, Any]:
        return {"exists": self.exists}

    @classmethod
    def from_header(cls, h: dict[str, Any], keys: int | None = None) -> ExistsResult:
        return cls(_bools(h, "exists", keys))


@dataclass(frozen=True, slots=True)
class LookupResult:
    found: int  # length of the longest present prefix of the chain
    leased: int = 0  # how many of those blocks (from the start) the lease pins

    def to_header(self) -> dict[str, Any]:
        return {"found": self.found, "leased": self.leased}

    @classmethod
    def from_header(cls, h: dict[str, Any], keys: int | None = None) -> LookupResult:
        found = _count(h, "found", keys)
        leased = get_field(h, "leased", int, 0)
        if not 0 <= leased <= found:
            raise ProtocolError("'leased' must be a count in [0, found]")
        return cls(found, leased)


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: int

    def to_header(self) -> dict[str, Any]:
        return {"deleted": self.deleted}

    @classmethod
    def from_header(cls, h: dict[str, Any], keys: int | None = None) -> DeleteResult:
        return cls(_count(h, "deleted", keys))


@dataclass(frozen=True, slots=True)
class PrefetchResult:
    staged: int

    def to_header(self) -> dict[str, Any]:
        return {"staged": self.staged}

    @classmethod
    def from_header(cls, h: dict[str, Any], keys: int | None = None) -> PrefetchResult:
        return cls(_count(h, "staged", keys))


@dataclass(frozen=True, slots=True)
class ShmRegistered:
    size: int

    def to_header(self) -> dict[str, Any]:
        return {"size": self.size}

    @classmethod
    def from_header(cls, h: dict[str, Any], keys: int | None = None) -> ShmRegistered:
        return cls(_count(h, "size", limits.shm_region_bytes_max))


@dataclass(frozen=True, slots=True)
class NixlRegistered:
    size: int
    agent: str  # the server's NIXL agent name

    def to_header(self) -> dict[str, Any]:
        return {"size": self.size, "agent": self.agent}

    @classmethod
    def from_header(cls, h: dict[str, Any], keys: int | None = None) -> NixlRegistered:
        return cls(_count(h, "size", limits.nixl_region_bytes_max),
                   get_field(h, "agent", str, ""))


# request type -> the dataclass of its RESULT (GET_BATCH is answered by BLOCK... END instead).
RESULTS: dict[FrameType, Any] = {
    FrameType.PING: PingResult,
    FrameType.STATS: StatsResult,
    FrameType.PUT_BATCH: PutResult,
    FrameType.EXISTS_BATCH: ExistsResult,
    FrameType.LOOKUP: LookupResult,
    FrameType.DELETE_BATCH: DeleteResult,
    FrameType.PREFETCH: PrefetchResult,
    FrameType.SHM_REGISTER: ShmRegistered,
    FrameType.NIXL_REGISTER: NixlRegistered,
}


def parse_result(request: FrameType, h: dict[str, Any], keys: int | None = None) -> Any:
    """The RESULT of a ``request`` that named ``keys`` keys (None: not checked)."""
    cls = RESULTS.get(request)
    if cls is None:
        raise ProtocolError(f"{request.name} is not answered by a RESULT")
    return cls.from_header(h, keys)
