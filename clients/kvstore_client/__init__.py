"""kvstore client SDK: the bulk port from an inference node.

Depends only on ``kvstore.protocol``, ``kvstore.keys``, ``kvstore.errors`` and
``kvstore.limits`` (no FastAPI, no pyuring, no engine).
"""

from kvstore.errors import (
    AccessDenied,
    AuthenticationFailed,
    Busy,
    ChecksumMismatch,
    KVStoreError,
    LimitExceeded,
    NotFound,
    NotImplementedFeature,
    ProtocolError,
)
from kvstore.keys import Layout, block_keys, chain_root, next_key
from kvstore_client.aio import AsyncClient
from kvstore_client.client import Client

__all__ = [
    "AccessDenied", "AsyncClient", "AuthenticationFailed", "Busy", "ChecksumMismatch", "Client",
    "KVStoreError", "Layout", "LimitExceeded", "NotFound", "NotImplementedFeature",
    "ProtocolError", "block_keys", "chain_root", "next_key",
]
