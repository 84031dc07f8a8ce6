"""Header schemas of each frame type: builders for senders, bounded validators for receivers.

A malformed header (wrong types, missing fields) is a ``ProtocolError``; a well-formed header
past a bound of ``kvstore.limits`` is ``LimitExceeded`` (an error frame for that request, the
connection stays up); a bad key is ``InvalidKey``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from kvstore import limits
from kvstore.errors import KVStoreError, LimitExceeded, ProtocolError, error_from_code
from kvstore.keys import validate_key, validate_namespace
from kvstore.protocol.frames import FLAGS_KNOWN, FLAGS_V1

NONCE_BYTES = 32
SIGNATURE_BYTES = 32
CHECKSUM_MAX = (1 << 64) - 1


def _get(h: dict[str, Any], name: str, typ: type | tuple[type, ...], default: Any = ...) -> Any:
    v = h.get(name, default)
    if v is ...:
        raise ProtocolError(f"header lacks {name!r}")
    if not isinstance(v, typ) or (isinstance(v, bool) and typ in (int, (int, float))):
        raise ProtocolError(f"header field {name!r} has the wrong type")
    return v


def _keys(h: dict[str, Any], bound: int = limits.batch_keys_max) -> list[str]:
    keys = _get(h, "keys", list)
    if len(keys) > bound:
        raise LimitExceeded(f"batch of {len(keys)} keys exceeds {bound}", bound="batch_keys_max")
    for k in keys:
        if not isinstance(k, str):
            raise ProtocolError("keys must be strings")
        validate_key(k)
    return keys


def _ints(h: dict[str, Any], name: str, n: int, lo: int, hi: int) -> list[int]:
    vals = _get(h, name, list)
    if len(vals) != n:
        raise ProtocolError(f"{name!r} must have one entry per key")
    for v in vals:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ProtocolError(f"{name!r} entries must be integers in [{lo}, {hi}]")
    return vals


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
    version: int
    access_key: str
    namespace: str
    create: bool  # create the namespace when absent (tenant permitting)


def hello(access_key: str, namespace: str, *, create: bool = False) -> dict[str, Any]:
    return {"v": 1, "access_key": access_key, "namespace": namespace, "create": create}


def parse_hello(h: dict[str, Any]) -> Hello:
    ak = _get(h, "access_key", str)
    if not 0 < len(ak) <= 128:
        raise ProtocolError("access key length must be 1..128")
    ns = validate_namespace(_get(h, "namespace", str))
    return Hello(_get(h, "v", int), ak, ns, bool(_get(h, "create", bool, False)))


def parse_challenge(h: dict[str, Any]) -> bytes:
    nonce = _get(h, "nonce", bytes)
    if len(nonce) != NONCE_BYTES:
        raise ProtocolError("nonce has the wrong length")
    return nonce


def parse_auth(h: dict[str, Any]) -> bytes:
    sig = _get(h, "sig", bytes)
    if len(sig) != SIGNATURE_BYTES:
        raise ProtocolError("signature has the wrong length")
    return sig


@dataclass(frozen=True, slots=True)
class Window:
    """The server's flow-control window, sent in AUTH_OK; the client stays inside it."""

    inflight_requests_max: int
    inflight_bytes_max: int
    block_bytes_max: int
    batch_keys_max: int
    batch_bytes_max: int
    flags: int = FLAGS_V1  # the frame flags the server knows (FrameFlags bits)


def auth_ok(tenant: str, namespace: str, *, shm: bool = False) -> dict[str, Any]:
    return {"tenant": tenant, "namespace": namespace, "shm": shm,
            "inflight_requests_max": limits.connection_inflight_requests_max,
            "inflight_bytes_max": limits.connection_inflight_bytes_max,
            "block_bytes_max": limits.block_bytes_max,
            "batch_keys_max": limits.batch_keys_max,
            "batch_bytes_max": limits.batch_bytes_max,
            "flags": FLAGS_KNOWN}


def parse_auth_ok(h: dict[str, Any]) -> Window:
    def pos(name: str, cap: int) -> int:
        v = _get(h, name, int)
        if v <= 0:
            raise ProtocolError(f"{name} must be positive")
        return min(v, cap)

    # A server that predates the field knows the first release's flags only; bits this side
    # does not know are dropped (it never sends them).
    flags = _get(h, "flags", int, FLAGS_V1)
    return Window(pos("inflight_requests_max", limits.connection_inflight_requests_max),
                  pos("inflight_bytes_max", limits.connection_inflight_bytes_max),
                  pos("block_bytes_max", limits.block_bytes_max),
                  pos("batch_keys_max", limits.batch_keys_max),
                  pos("batch_bytes_max", limits.batch_bytes_max),
                  flags & FLAGS_KNOWN)


# --- requests -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PutBatch:
    """A PUT_BATCH request. Blocks are write-once: a key that is present keeps its stored bytes
    (``created`` False in the RESULT) unless the frame carries the OVERWRITE flag.

    RESULT ``{"created": [bool per key]}``: without OVERWRITE, True = stored (the key was new),
    False = the key was present and nothing was written. With OVERWRITE, True = this request's
    bytes were written (the key was new or its block was replaced), False = nothing written:
    the stored block already had the same length and checksum (its ttl is not renewed), or
    another PUT of that key was being written at the same time and stands."""

    keys: list[str]
    lengths: list[int]
    checksums: list[int]
    ttl_seconds: float
    offsets: list[int] | None = None  # SHM flag: where each block sits in the region
    overwrite: bool = False  # OVERWRITE flag: replace a stored block of the same key


def put_batch(keys: list[str], lengths: list[int], checksums: list[int], *,
              ttl_seconds: float = 0.0, offsets: list[int] | None = None) -> dict[str, Any]:
    h: dict[str, Any] = {"keys": keys, "lengths": lengths, "checksums": checksums}
    if ttl_seconds:
        h["ttl"] = float(ttl_seconds)
    if offsets is not None:
        h["offsets"] = offsets
    return h


def parse_put_batch(h: dict[str, Any], payload_length: int, *, shm: bool = False,
                    overwrite: bool = False) -> PutBatch:
    keys = _keys(h)
    lengths = _ints(h, "lengths", len(keys), 0, limits.block_bytes_max)
    checksums = _ints(h, "checksums", len(keys), 0, CHECKSUM_MAX)
    total = sum(lengths)
    if total > limits.batch_bytes_max:
        raise LimitExceeded(f"batch of {total} bytes exceeds {limits.batch_bytes_max}",
                            bound="batch_bytes_max")
    ttl = float(_get(h, "ttl", (int, float), 0.0))
    if not 0.0 <= ttl <= limits.ttl_seconds_max:
        raise LimitExceeded(f"ttl must be in [0, {limits.ttl_seconds_max}]")
    offsets = None
    if shm:
        if payload_length:
            raise ProtocolError("a shared-memory PUT carries no payload on the socket")
        offsets = _ints(h, "offsets", len(keys), 0, (1 << 63) - 1)
    elif total != payload_length:
        raise ProtocolError("payload length differs from the sum of block lengths")
    return PutBatch(keys, lengths, checksums, ttl, offsets, overwrite)


@dataclass(frozen=True, slots=True)
class KeysRequest:
    keys: list[str]
    lease_seconds: float = 0.0
    offsets: list[int] | None = None  # GET with SHM: where each block goes in the region
    capacities: list[int] | None = None  # ... and how many bytes each slot holds


def keys_request(keys: list[str], **extra: Any) -> dict[str, Any]:
    return {"keys": keys, **{k: v for k, v in extra.items() if v is not None}}


def parse_keys_request(h: dict[str, Any], *, chain: bool = False, shm: bool = False) -> KeysRequest:
    keys = _keys(h, limits.chain_keys_max if chain else limits.batch_keys_max)
    lease = float(_get(h, "lease", (int, float), 0.0))
    if not 0.0 <= lease <= limits.lease_seconds_max:
        raise LimitExceeded(f"lease must be in [0, {limits.lease_seconds_max}] seconds")
    if shm:
        offsets = _ints(h, "offsets", len(keys), 0, (1 << 63) - 1)
        caps = _ints(h, "caps", len(keys), 0, limits.block_bytes_max)
        return KeysRequest(keys, lease, offsets, caps)
    return KeysRequest(keys, lease)


@dataclass(frozen=True, slots=True)
class NixlRegister:
    """A client's NIXL agent metadata and the one DRAM region it registered with that agent."""

    metadata: bytes
    address: int
    size: int


def nixl_register(metadata: bytes, address: int, size: int) -> dict[str, Any]:
    return {"md": metadata, "addr": address, "size": size}


def parse_nixl_register(h: dict[str, Any]) -> NixlRegister:
    md = _get(h, "md", bytes)
    if not 0 < len(md) <= limits.nixl_metadata_bytes_max:
        raise LimitExceeded(f"NIXL metadata must be 1..{limits.nixl_metadata_bytes_max} bytes",
                            bound="nixl_metadata_bytes_max")
    addr = _get(h, "addr", int)
    size = _get(h, "size", int)
    if not 0 < addr < (1 << 64):
        raise ProtocolError("NIXL region address out of range")
    if not 0 < size <= limits.nixl_region_bytes_max or addr + size >= (1 << 64):
        raise LimitExceeded(f"NIXL region must be 1..{limits.nixl_region_bytes_max} bytes",
                            bound="nixl_region_bytes_max")
    return NixlRegister(md, addr, size)


# --- responses ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BlockHeader:
    index: int  # position of the key in the GET_BATCH request
    key: str
    length: int
    checksum: int


def block(index: int, key: str, length: int, checksum: int) -> dict[str, Any]:
    return {"i": index, "key": key, "len": length, "xxh": checksum}


def parse_block(h: dict[str, Any], payload_length: int, *, shm: bool = False) -> BlockHeader:
    b = BlockHeader(_get(h, "i", int), _get(h, "key", str), _get(h, "len", int),
                    _get(h, "xxh", int))
    if not (0 <= b.length <= limits.block_bytes_max and 0 <= b.checksum <= CHECKSUM_MAX
            and 0 <= b.index < limits.batch_keys_max):
        raise ProtocolError("block header out of range")
    if not shm and b.length != payload_length:
        raise ProtocolError("block length differs from the frame's payload length")
    return b


def error(exc: KVStoreError) -> dict[str, Any]:
    return {"code": exc.code, "name": exc.name, "message": exc.message[:1024]}


def parse_error(h: dict[str, Any]) -> KVStoreError:
    return error_from_code(_get(h, "code", int), str(_get(h, "message", str, "")))
