"""Deterministic block keys for engine connectors, shared by every engine.

Built on ``kvstore_wire.keys`` (the SDK's ``Layout`` and chained ``next_key``), so the keys an
engine connector writes are the keys any other kvstore client derives for the same tokens:

- ``EngineLayout`` wraps a ``Layout`` (model, revision, dtype, KV geometry, tokens per block,
  tensor-parallel rank and size, tenant salt) with what the engine adds that also changes the
  bytes of a block: the engine's name, its KV memory layout (vLLM's ``NHD``/``HND``, the
  per-block shape) and any further fields. Its fingerprint is blake2b-128 over canonical
  msgpack with its own personalization, never Python's ``hash()`` (salted per process).
- ``prefix_keys`` chains the token blocks of a prompt from that fingerprint; the engine's
  per-request cache salt (vLLM's ``cache_salt``), a LoRA adapter and multimodal hashes are bound
  into the first block, so every later key of the chain differs too.
- ``opaque_key`` names a block the engine hashes itself (vLLM's offloading ``OffloadKey``,
  LMCache's chunk hash): blake2b over the fingerprint and the engine's key bytes.
- Tenant salts: with credentials the server names each tenant a salt token in AUTH_OK
  (``Client.key_salt()``: ``tenant:NAME``, or ``shared:KEY_SALT`` for tenants that opted into
  sharing). ``EngineLayout.salted(token)`` puts it first in the layout's ``tenant_salt`` by the
  server's own rule (``kvstore_wire.keys.salted_tenant_salt``), so the connectors chain from the
  fingerprint the server would record for that layout and tenant; ``salt_scope(token)`` is the
  key scope of engines whose keys are their own strings (LMCache, SGLang). Either way two
  tenants' identical prefixes never share a key unless both opted into one ``key_salt``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import msgpack
from kvstore_wire import limits
from kvstore_wire.errors import LimitExceeded
from kvstore_wire.keys import KEY_BYTES, Layout, block_keys, chain_root, next_key

__all__ = ["EngineLayout", "Layout", "first_block_extra", "opaque_key", "prefix_keys",
           "salt_scope"]

ENGINE_KEY_SCHEME = 1
_PERSON_ENGINE = b"kvstore.eng.v1"
_PERSON_OPAQUE = b"kvstore.opq.v1"
_PERSON_SALT = b"kvstore.slt.v1"


def _h(data: bytes, person: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=KEY_BYTES, person=person).digest()


def _canonical(value: object) -> object:
    """Mappings sorted by key, sequences as lists: one encoding for equal values."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool, bytes)) or value is None:
        return value
    return str(value)


@dataclass(frozen=True)
class EngineLayout:
    """Everything that makes one engine's KV blocks incompatible with another's."""

    layout: Layout
    engine: str
    kv_layout: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.engine:
            raise ValueError("engine must not be empty")

    def canonical_bytes(self) -> bytes:
        body = {"scheme": ENGINE_KEY_SCHEME, "layout": self.layout.canonical_bytes(),
                "engine": self.engine, "kv_layout": self.kv_layout,
                "extra": _canonical(dict(self.extra))}
        raw: bytes = msgpack.packb(body, use_bin_type=True)
        return raw

    def fingerprint(self) -> bytes:
        return _h(self.canonical_bytes(), _PERSON_ENGINE)

    def fingerprint_hex(self) -> str:
        return self.fingerprint().hex()

    def salted(self, token: str) -> EngineLayout:
        """This layout under the tenant salt ``token`` (what ``Client.key_salt()`` answers): its
        ``Layout`` becomes ``layout.salted(token)``, the one the server records for this tenant,
        so the fingerprint, and every key chained from it, is the tenant's."""
        return replace(self, layout=self.layout.salted(token))


def salt_scope(token: str) -> str:
    """The key scope of the tenant salt ``token`` for keys an engine names itself: "" for no
    token (development mode: keys as before), else ``s-`` and 32 hex characters of blake2b over
    the token (the token itself stays out of keys and listings)."""
    if not token:
        return ""
    return "s-" + _h(token.encode("utf-8", "surrogatepass"), _PERSON_SALT).hex() + "/"


def first_block_extra(cache_salt: str | None = None, lora: str | None = None,
                      mm_hashes: Sequence[str] = ()) -> bytes:
    """The extra key bytes of a request's first block: its cache salt, LoRA adapter and
    multimodal hashes (empty when it has none, so plain prompts chain as the SDK's
    ``block_keys`` does). Binding them to the first block changes every key of the chain."""
    if not cache_salt and not lora and not mm_hashes:
        return b""
    raw: bytes = msgpack.packb({"salt": cache_salt or "", "lora": lora or "",
                                "mm": list(mm_hashes)}, use_bin_type=True)
    return raw


def prefix_keys(fingerprint: bytes, tokens: Sequence[int], tokens_per_block: int, *,
                cache_salt: str | None = None, lora: str | None = None,
                mm_hashes: Sequence[str] = ()) -> list[str]:
    """Hex keys of every full block of ``tokens``, chained from ``fingerprint``; key i names the
    KV of blocks 0..i, so the longest stored prefix is one ``lookup`` of this list."""
    extra = first_block_extra(cache_salt, lora, mm_hashes)
    if not extra:
        return block_keys(fingerprint, tokens, tokens_per_block)
    if tokens_per_block <= 0:
        raise ValueError("tokens_per_block must be positive")
    n = len(tokens) // tokens_per_block
    if n > limits.chain_keys_max:
        raise LimitExceeded(f"chain of {n} blocks exceeds {limits.chain_keys_max}")
    if n == 0:
        return []
    first = next_key(chain_root(fingerprint), tokens[:tokens_per_block], extra)
    out = [first.hex()]
    key = first
    for i in range(1, n):
        key = next_key(key, tokens[i * tokens_per_block:(i + 1) * tokens_per_block])
        out.append(key.hex())
    return out


def opaque_key(fingerprint: bytes, engine_key: bytes) -> str:
    """The kvstore key of a block the engine names itself (32 hex characters)."""
    if len(fingerprint) != KEY_BYTES:
        raise ValueError("fingerprint must be 16 bytes")
    return _h(fingerprint + bytes(engine_key), _PERSON_OPAQUE).hex()
