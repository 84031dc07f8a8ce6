"""kvstore client SDK: the bulk port from an inference node.

Its own distribution, ``kvstore-client`` (``pip install ./clients``): this package and
``kvstore_wire`` (the sans-IO protocol, keys, errors and bounds the server shares), with msgpack
and xxhash as its only hard dependencies (no FastAPI, no pyuring, no engine; numpy and torch are
optional, for NIXL and tensors).
"""

from kvstore_wire.errors import (
    AccessDenied,
    AuthenticationFailed,
    Busy,
    ChecksumMismatch,
    InsufficientStorage,
    KVStoreError,
    LimitExceeded,
    NotFound,
    NotImplementedFeature,
    ProtocolError,
    QuotaExceeded,
)
from kvstore_wire.keys import Layout, block_keys, chain_root, next_key

from kvstore_client.aio import AsyncClient
from kvstore_client.client import Client
from kvstore_client.pod import AsyncPodClient, NodeSpec, PodClient, StaticMembership

__all__ = [
    "AccessDenied", "AsyncClient", "AsyncPodClient", "AuthenticationFailed", "Busy",
    "ChecksumMismatch", "Client", "InsufficientStorage",
    "KVStoreError", "Layout", "LimitExceeded", "NotFound", "NodeSpec", "NotImplementedFeature",
    "PodClient", "ProtocolError", "QuotaExceeded", "StaticMembership", "block_keys", "chain_root",
    "next_key",
]
