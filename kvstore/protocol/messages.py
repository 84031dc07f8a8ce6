"""Every bulk message as a frozen dataclass: defined once, in the client distribution
(``kvstore_wire.messages`` for the handshake and requests, ``kvstore_wire.results`` for the
answers). Each has one encoder, ``to_header()``, and one parser, ``from_header(...)``.

The module-level functions below are the names this module had before the schema (``hello``,
``parse_put_batch``, ...): each is one line over the dataclass, kept so that code written
against them (tests, concurrent branches) keeps working. New code uses the dataclasses.
"""

from __future__ import annotations

from typing import Any

from kvstore_wire.checksum import CHECKSUM_MAX
from kvstore_wire.errors import KVStoreError
from kvstore_wire.frames import FrameFlags, FrameType
from kvstore_wire.messages import (
    ACCESS_KEY_BYTES_MAX,
    KEYS_REQUESTS,
    NONCE_BYTES,
    OFFSET_MAX,
    SIGNATURE_BYTES,
    Auth,
    AuthOk,
    Challenge,
    Empty,
    Hello,
    KeysRequest,
    NixlRegister,
    PutBatch,
    ShmRegister,
    Window,
    auth_message,
    sign,
    verify,
)
from kvstore_wire.results import (
    RESULTS,
    BlockHeader,
    DeleteResult,
    End,
    ErrorInfo,
    ExistsResult,
    LookupResult,
    NixlRegistered,
    PingResult,
    PrefetchResult,
    PutResult,
    ShmRegistered,
    StatsResult,
    parse_result,
)

__all__ = [
    "ACCESS_KEY_BYTES_MAX", "CHECKSUM_MAX", "KEYS_REQUESTS", "NONCE_BYTES", "OFFSET_MAX",
    "RESULTS", "SIGNATURE_BYTES", "Auth", "AuthOk", "BlockHeader", "Challenge", "DeleteResult",
    "Empty", "End", "ErrorInfo", "ExistsResult", "Hello", "KeysRequest", "LookupResult",
    "NixlRegister", "NixlRegistered", "PingResult", "PrefetchResult", "PutBatch", "PutResult",
    "ShmRegister", "ShmRegistered", "StatsResult", "Window", "auth_message", "parse_result",
    "sign", "verify",
]

_OOB = int(FrameFlags.SHM)  # any out-of-band flag: what the old ``shm=True`` meant
_OVERWRITE = int(FrameFlags.OVERWRITE)


# --- the names before the schema (one line each over the dataclasses) ------------------------

def hello(access_key: str, namespace: str, *, create: bool = False) -> dict[str, Any]:
    return Hello(access_key, namespace, create).to_header()


def parse_hello(h: dict[str, Any]) -> Hello:
    return Hello.from_header(h)


def parse_challenge(h: dict[str, Any]) -> bytes:
    return Challenge.from_header(h).nonce


def parse_auth(h: dict[str, Any]) -> bytes:
    return Auth.from_header(h).sig


def auth_ok(tenant: str, namespace: str, *, shm: bool = False) -> dict[str, Any]:
    return AuthOk(tenant, namespace, Window.local(), shm).to_header()


def parse_auth_ok(h: dict[str, Any]) -> Window:
    return AuthOk.from_header(h).window


def put_batch(keys: list[str], lengths: list[int], checksums: list[int], *,
              ttl_seconds: float = 0.0, offsets: list[int] | None = None) -> dict[str, Any]:
    return PutBatch(keys, lengths, checksums, ttl_seconds, offsets).to_header()


def parse_put_batch(h: dict[str, Any], payload_length: int, *, shm: bool = False,
                    overwrite: bool = False) -> PutBatch:
    return PutBatch.from_header(h, payload_length,
                                (_OOB if shm else 0) | (_OVERWRITE if overwrite else 0))


def keys_request(keys: list[str], **extra: Any) -> dict[str, Any]:
    """``extra``: ``lease``, ``offsets``, ``caps`` (None: absent)."""
    return KeysRequest(keys, extra.get("lease") or 0.0, extra.get("offsets"),
                       extra.get("caps")).to_header()


def parse_keys_request(h: dict[str, Any], *, chain: bool = False,
                       shm: bool = False) -> KeysRequest:
    return KeysRequest.from_header(h, FrameType.LOOKUP if chain else FrameType.GET_BATCH,
                                   _OOB if shm else 0)


def nixl_register(metadata: bytes, address: int, size: int) -> dict[str, Any]:
    return NixlRegister(metadata, address, size).to_header()


def parse_nixl_register(h: dict[str, Any]) -> NixlRegister:
    return NixlRegister.from_header(h)


def block(index: int, key: str, length: int, checksum: int) -> dict[str, Any]:
    return BlockHeader(index, key, length, checksum).to_header()


def parse_block(h: dict[str, Any], payload_length: int, *, shm: bool = False) -> BlockHeader:
    return BlockHeader.from_header(h, payload_length, _OOB if shm else 0)


def error(exc: KVStoreError) -> dict[str, Any]:
    return ErrorInfo.of(exc).to_header()


def parse_error(h: dict[str, Any]) -> KVStoreError:
    return ErrorInfo.from_header(h).exception()
