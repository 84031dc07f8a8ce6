"""The header of every request and handshake frame, as a frozen dataclass with one encoder
(``to_header``) and one bounded parser (``from_header``), used by the server and the SDK.

A malformed header (wrong types, missing fields) is a ``ProtocolError``; a well-formed header
past a bound of ``kvstore_wire.limits`` is ``LimitExceeded`` (an error frame for that request,
the connection stays up); a bad key is ``InvalidKey``. What a frame's flags mean for its header
(blocks out of band, OVERWRITE) is asked of ``kvstore_wire.state``. Answers (BLOCK, END, ERROR
and each request's RESULT) are in ``kvstore_wire.results``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kvstore_wire import limits
from kvstore_wire.checksum import CHECKSUM_MAX
from kvstore_wire.errors import InvalidArgument, LimitExceeded, ProtocolError
from kvstore_wire.frames import FLAGS_KNOWN, FLAGS_V1, FrameType
from kvstore_wire.keys import validate_key, validate_namespace
from kvstore_wire.state import out_of_band, overwrite

NONCE_BYTES = 32
SIGNATURE_BYTES = 32
ACCESS_KEY_BYTES_MAX = 128
OFFSET_MAX = (1 << 63) - 1  # a region offset on the wire


def get_field(h: dict[str, Any], name: str, typ: type | tuple[type, ...],
              default: Any = ...) -> Any:
    """``h[name]`` of type ``typ`` (bool is not an int here), else ProtocolError."""
    v = h.get(name, default)
    if v is ...:
        raise ProtocolError(f"header lacks {name!r}")
    if not isinstance(v, typ) or (isinstance(v, bool) and typ in (int, (int, float))):
        raise ProtocolError(f"header field {name!r} has the wrong type")
    return v


def _keys(h: dict[str, Any], bound: int = limits.batch_keys_max) -> list[str]:
    keys: list[str] = get_field(h, "keys", list)
    if len(keys) > bound:
        raise LimitExceeded(f"batch of {len(keys)} keys exceeds {bound}", bound="batch_keys_max")
    for k in keys:
        if not isinstance(k, str):
            raise ProtocolError("keys must be strings")
        validate_key(k)
    return keys


def int_list(h: dict[str, Any], name: str, n: int, lo: int, hi: int) -> list[int]:
    """``h[name]``: exactly ``n`` integers in [lo, hi], else ProtocolError."""
    vals: list[int] = get_field(h, name, list)
    if len(vals) != n:
        raise ProtocolError(f"{name!r} must have one entry per key")
    for v in vals:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ProtocolError(f"{name!r} entries must be integers in [{lo}, {hi}]")
    return vals


def _seconds(h: dict[str, Any], name: str, hi: float, what: str) -> float:
    v = float(get_field(h, name, (int, float), 0.0))
    if not 0.0 <= v <= hi:  # NaN fails too
        raise LimitExceeded(f"{what} must be in [0, {hi}] seconds")
    return v


# --- handshake ------------------------------------------------------------------------------

def auth_message(nonce: bytes, access_key: str, namespace: str) -> bytes:
    """What the client signs: binds the nonce to the identity and the namespace."""
    ak, ns = access_key.encode(), namespace.encode()
    return (b"kvstore-bulk-auth-v1\x00" + nonce + len(ak).to_bytes(2, "little") + ak
            + len(ns).to_bytes(2, "little") + ns)


def sign(secret: str, nonce: bytes, access_key: str, namespace: str) -> bytes:
    return hmac.new(secret.encode(), auth_message(nonce, access_key, namespace),
                    hashlib.sha256).digest()


def verify(secret: str, nonce: bytes, access_key: str, namespace: str, sig: bytes) -> bool:
    return hmac.compare_digest(sign(secret, nonce, access_key, namespace), sig)


@dataclass(frozen=True, slots=True)
class Hello:
    """HELLO (c>s): who the client is and the namespace it binds the connection to."""

    FRAME: ClassVar[FrameType] = FrameType.HELLO
    access_key: str
    namespace: str
    create: bool = False  # create the namespace when absent (tenant permitting)
    version: int = 1

    def to_header(self) -> dict[str, Any]:
        return {"v": self.version, "access_key": self.access_key, "namespace": self.namespace,
                "create": self.create}

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Hello:
        ak = get_field(h, "access_key", str)
        if not 0 < len(ak) <= ACCESS_KEY_BYTES_MAX:
            raise ProtocolError(f"access key length must be 1..{ACCESS_KEY_BYTES_MAX}")
        ns = validate_namespace(get_field(h, "namespace", str))
        return cls(ak, ns, bool(get_field(h, "create", bool, False)), get_field(h, "v", int))


@dataclass(frozen=True, slots=True)
class Challenge:
    """CHALLENGE (s>c): the server's nonce, which the client signs."""

    FRAME: ClassVar[FrameType] = FrameType.CHALLENGE
    nonce: bytes

    def to_header(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Challenge:
        nonce = get_field(h, "nonce", bytes)
        if len(nonce) != NONCE_BYTES:
            raise ProtocolError("nonce has the wrong length")
        return cls(nonce)


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH (c>s): HMAC-SHA256 of ``auth_message`` under the tenant's secret."""

    FRAME: ClassVar[FrameType] = FrameType.AUTH
    sig: bytes

    def to_header(self) -> dict[str, Any]:
        return {"sig": self.sig}

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Auth:
        sig = get_field(h, "sig", bytes)
        if len(sig) != SIGNATURE_BYTES:
            raise ProtocolError("signature has the wrong length")
        return cls(sig)


@dataclass(frozen=True, slots=True)
class Window:
    """The server's flow-control window, sent in AUTH_OK; the client stays inside it."""

    inflight_requests_max: int
    inflight_bytes_max: int
    block_bytes_max: int
    batch_keys_max: int
    batch_bytes_max: int
    flags: int = FLAGS_V1  # the frame flags the server knows (FrameFlags bits)

    @classmethod
    def local(cls) -> Window:
        """This side's bounds and every flag it knows (what a server advertises)."""
        return cls(limits.connection_inflight_requests_max, limits.connection_inflight_bytes_max,
                   limits.block_bytes_max, limits.batch_keys_max, limits.batch_bytes_max,
                   FLAGS_KNOWN)


@dataclass(frozen=True, slots=True)
class AuthOk:
    """AUTH_OK (s>c): the tenant and namespace bound, the server's window, and the tenant's salt
    token (``kvstore_wire.keys.salted_tenant_salt``; "" in development mode and from a server
    that predates it). Parsing caps the window by this side's own limits and drops flag bits
    this side does not know."""

    FRAME: ClassVar[FrameType] = FrameType.AUTH_OK
    tenant: str
    namespace: str
    window: Window = field(default_factory=Window.local)
    shm: bool = True  # the server offers the shm transport (SHM_REGISTER)
    salt: str = ""  # the tenant's salt token: every layout fingerprint of this tenant starts so

    def to_header(self) -> dict[str, Any]:
        w = self.window
        return {"tenant": self.tenant, "namespace": self.namespace, "shm": self.shm,
                "salt": self.salt,
                "inflight_requests_max": w.inflight_requests_max,
                "inflight_bytes_max": w.inflight_bytes_max,
                "block_bytes_max": w.block_bytes_max, "batch_keys_max": w.batch_keys_max,
                "batch_bytes_max": w.batch_bytes_max, "flags": w.flags}

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> AuthOk:
        def pos(name: str, cap: int) -> int:
            v: int = get_field(h, name, int)
            if v <= 0:
                raise ProtocolError(f"{name} must be positive")
            return min(v, cap)

        # A server that predates the field knows the first release's flags only.
        flags = get_field(h, "flags", int, FLAGS_V1)
        window = Window(pos("inflight_requests_max", limits.connection_inflight_requests_max),
                        pos("inflight_bytes_max", limits.connection_inflight_bytes_max),
                        pos("block_bytes_max", limits.block_bytes_max),
                        pos("batch_keys_max", limits.batch_keys_max),
                        pos("batch_bytes_max", limits.batch_bytes_max),
                        flags & FLAGS_KNOWN)
        salt = str(get_field(h, "salt", str, ""))
        if len(salt) > limits.layout_str_chars_max:
            raise ProtocolError(f"salt longer than {limits.layout_str_chars_max} characters")
        return cls(str(get_field(h, "tenant", str, "")), str(get_field(h, "namespace", str, "")),
                   window, bool(get_field(h, "shm", bool, False)), salt)


# --- requests -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PutBatch:
    """A PUT_BATCH request. Blocks are write-once: a key that is present keeps its stored bytes
    (``created`` False in the RESULT) unless the frame carries the OVERWRITE flag.

    RESULT (``results.PutResult``): without OVERWRITE, True = stored (the key was new), False =
    the key was present and nothing was written. With OVERWRITE, True = this request's bytes
    were written (the key was new or its block was replaced), False = nothing written: the
    stored block already had the same length and checksum (its ttl is not renewed), or another
    PUT of that key was being written at the same time and stands."""

    FRAME: ClassVar[FrameType] = FrameType.PUT_BATCH
    keys: list[str]
    lengths: list[int]
    checksums: list[int]
    ttl_seconds: float = 0.0
    offsets: list[int] | None = None  # out of band (SHM/NIXL): where each block sits
    overwrite: bool = False  # OVERWRITE flag: replace a stored block of the same key
    # Optional, one opaque byte string per key (``metas``, each at most
    # limits.block_meta_bytes_max): stored with the block and sent back by a GET that asks for
    # it (``KeysRequest.with_meta``). A node forwarding an S3 PUT carries the object's S3
    # metadata here. A server that predates the field ignores it (stores no metadata).
    metas: list[bytes] | None = None

    def to_header(self) -> dict[str, Any]:
        h: dict[str, Any] = {"keys": self.keys, "lengths": self.lengths,
                             "checksums": self.checksums}
        if self.ttl_seconds:
            h["ttl"] = float(self.ttl_seconds)
        if self.offsets is not None:
            h["offsets"] = self.offsets
        if self.metas is not None and any(self.metas):
            h["metas"] = [bytes(m) for m in self.metas]
        return h

    @classmethod
    def from_header(cls, h: dict[str, Any], payload_length: int, flags: int = 0) -> PutBatch:
        keys = _keys(h)
        lengths = int_list(h, "lengths", len(keys), 0, limits.block_bytes_max)
        checksums = int_list(h, "checksums", len(keys), 0, CHECKSUM_MAX)
        total = sum(lengths)
        if total > limits.batch_bytes_max:
            raise LimitExceeded(f"batch of {total} bytes exceeds {limits.batch_bytes_max}",
                                bound="batch_bytes_max")
        ttl = _seconds(h, "ttl", limits.ttl_seconds_max, "ttl")
        offsets = None
        if out_of_band(flags):
            if payload_length:
                raise ProtocolError("an out-of-band PUT carries no payload on the socket")
            offsets = int_list(h, "offsets", len(keys), 0, OFFSET_MAX)
        elif total != payload_length:
            raise ProtocolError("payload length differs from the sum of block lengths")
        metas = None
        if "metas" in h:
            metas = get_field(h, "metas", list)
            if len(metas) != len(keys) or not all(isinstance(m, bytes) for m in metas):
                raise ProtocolError("'metas' must have one byte string per key")
            if any(len(m) > limits.block_meta_bytes_max for m in metas):
                raise LimitExceeded(f"block metadata exceeds {limits.block_meta_bytes_max} "
                                    "bytes", bound="block_meta_bytes_max")
        return cls(keys, lengths, checksums, ttl, offsets, overwrite(flags), metas)


# Requests whose header is a list of keys (``KeysRequest``); LOOKUP's keys are one chain.
KEYS_REQUESTS = (FrameType.GET_BATCH, FrameType.EXISTS_BATCH, FrameType.LOOKUP,
                 FrameType.DELETE_BATCH, FrameType.PREFETCH)


@dataclass(frozen=True, slots=True)
class KeysRequest:
    """GET_BATCH, EXISTS_BATCH, LOOKUP (``lease_seconds``), DELETE_BATCH, PREFETCH."""

    keys: list[str]
    lease_seconds: float = 0.0  # LOOKUP: pin the found blocks this long
    offsets: list[int] | None = None  # out-of-band GET: where each block goes in the region
    capacities: list[int] | None = None  # ... and how many bytes each slot holds
    # GET_BATCH on the socket: each BLOCK also carries the block's stored metadata and creation
    # time (``BlockHeader.meta``, ``created``). A server that predates it sends neither.
    with_meta: bool = False

    def to_header(self) -> dict[str, Any]:
        h: dict[str, Any] = {"keys": self.keys}
        if self.lease_seconds:
            h["lease"] = float(self.lease_seconds)
        if self.offsets is not None:
            h["offsets"] = self.offsets
        if self.capacities is not None:
            h["caps"] = self.capacities
        if self.with_meta:
            h["meta"] = True
        return h

    @classmethod
    def from_header(cls, h: dict[str, Any], ftype: FrameType = FrameType.GET_BATCH,
                    flags: int = 0) -> KeysRequest:
        chain = ftype is FrameType.LOOKUP
        keys = _keys(h, limits.chain_keys_max if chain else limits.batch_keys_max)
        lease = _seconds(h, "lease", limits.lease_seconds_max, "lease")
        if ftype is FrameType.GET_BATCH and out_of_band(flags):
            offsets = int_list(h, "offsets", len(keys), 0, OFFSET_MAX)
            caps = int_list(h, "caps", len(keys), 0, limits.block_bytes_max)
            return cls(keys, lease, offsets, caps)
        with_meta = ftype is FrameType.GET_BATCH and bool(get_field(h, "meta", bool, False))
        return cls(keys, lease, with_meta=with_meta)


@dataclass(frozen=True, slots=True)
class Empty:
    """PING and STATS: a request with nothing to say."""

    def to_header(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Empty:
        return cls()


@dataclass(frozen=True, slots=True)
class ShmRegister:
    """SHM_REGISTER: the name of a POSIX shm object in /dev/shm and its size. The server checks
    the name's form, the bound and the peer (``kvstore.transport.shm``); a wrong shape is
    InvalidArgument (answered, the connection stays)."""

    FRAME: ClassVar[FrameType] = FrameType.SHM_REGISTER
    name: str
    size: int

    def to_header(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size}

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> ShmRegister:
        name, size = h.get("name"), h.get("size")
        if not isinstance(name, str) or not isinstance(size, int) or isinstance(size, bool):
            raise InvalidArgument("SHM_REGISTER needs a name and a size")
        return cls(name, size)


@dataclass(frozen=True, slots=True)
class NixlRegister:
    """NIXL_REGISTER: a client's NIXL agent metadata and the one DRAM region it registered."""

    FRAME: ClassVar[FrameType] = FrameType.NIXL_REGISTER
    metadata: bytes
    address: int
    size: int

    def to_header(self) -> dict[str, Any]:
        return {"md": self.metadata, "addr": self.address, "size": self.size}

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> NixlRegister:
        md = get_field(h, "md", bytes)
        if not 0 < len(md) <= limits.nixl_metadata_bytes_max:
            raise LimitExceeded(f"NIXL metadata must be 1..{limits.nixl_metadata_bytes_max} "
                                "bytes", bound="nixl_metadata_bytes_max")
        addr = get_field(h, "addr", int)
        size = get_field(h, "size", int)
        if not 0 < addr < (1 << 64):
            raise ProtocolError("NIXL region address out of range")
        if not 0 < size <= limits.nixl_region_bytes_max or addr + size >= (1 << 64):
            raise LimitExceeded(f"NIXL region must be 1..{limits.nixl_region_bytes_max} bytes",
                                bound="nixl_region_bytes_max")
        return cls(md, addr, size)
