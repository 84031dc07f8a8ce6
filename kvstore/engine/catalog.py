"""The namespace catalog: names, numeric ids, owners and layouts, in one small msgpack file
written atomically (``namespaces.msgpack``). Ids are never reused, so records of a deleted
namespace can never be attributed to a new one. With encryption at rest it also keeps each
namespace's data key, wrapped by the master key (``crypto.DataKeys``)."""

from __future__ import annotations

import time

import msgpack

from kvstore import limits
from kvstore.engine.crypto import DataKeys
from kvstore.engine.types import NamespaceInfo
from kvstore.errors import AlreadyExists, InvalidArgument, LimitExceeded, NamespaceNotFound
from kvstore.keys import Layout, validate_namespace

CATALOG_FILE = "namespaces.msgpack"
QUOTA_MODES = ("evict", "strict")  # kvstore.service.quota
NS_ID_MAX = 0xFFFE  # 0xFFFF marks "unknown" during recovery


class Catalog:
    def __init__(self) -> None:
        self.by_name: dict[str, tuple[int, NamespaceInfo]] = {}
        self.next_id = 1
        self.keys = DataKeys()

    @classmethod
    def decode(cls, raw: bytes | None) -> Catalog:
        cat = cls()
        if not raw:
            return cat
        doc = msgpack.unpackb(raw, raw=False)
        cat.next_id = int(doc["next_id"])
        for d in doc["namespaces"]:
            info = NamespaceInfo(d["name"], d["created"], d.get("owner", ""),
                                 dict(d.get("layout") or {}), d.get("fingerprint", ""),
                                 int(d.get("block_bytes", 0)), int(d.get("replicas", 1)),
                                 int(d.get("quota_bytes", 0)), str(d.get("quota_mode", "evict")))
            cat.by_name[info.name] = (int(d["id"]), info)
        cat.keys = DataKeys({int(i): bytes(w) for i, w in doc.get("data_keys", ())},
                            bytes(doc.get("key_check", b"")))
        return cat

    def encode(self) -> bytes:
        return msgpack.packb({
            "next_id": self.next_id,
            "namespaces": [
                {"id": i, "name": n.name, "created": n.created, "owner": n.owner,
                 "layout": n.layout, "fingerprint": n.fingerprint, "block_bytes": n.block_bytes,
                 "replicas": n.replicas, "quota_bytes": n.quota_bytes,
                 "quota_mode": n.quota_mode}
                for i, n in self.by_name.values()
            ],
            **({"data_keys": sorted(self.keys.wrapped.items()), "key_check": self.keys.check}
               if self.keys.check or self.keys.wrapped else {}),
        }, use_bin_type=True)

    def create(self, name: str, owner: str, layout: dict | None, block_bytes: int,
               replicas: int = 1, quota_bytes: int = 0,
               quota_mode: str = "evict") -> NamespaceInfo:
        validate_namespace(name)
        if name in self.by_name:
            raise AlreadyExists(f"namespace {name} exists", owner=self.by_name[name][1].owner)
        if len(self.by_name) >= limits.namespaces_max:
            raise LimitExceeded(f"at most {limits.namespaces_max} namespaces")
        if self.next_id > NS_ID_MAX:
            raise LimitExceeded("namespace ids exhausted")
        if block_bytes < 0 or block_bytes > limits.block_bytes_max:
            raise InvalidArgument("block_bytes out of range")
        if not 1 <= replicas <= limits.namespace_replicas_max:
            raise InvalidArgument(f"replicas must be 1..{limits.namespace_replicas_max}")
        if quota_bytes < 0 or quota_mode not in QUOTA_MODES:
            raise InvalidArgument(f"quota_bytes must be >= 0 and quota_mode one of {QUOTA_MODES}")
        fingerprint = ""
        layout_d: dict[str, object] = {}
        if layout:
            try:
                lay = Layout(**layout)
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"bad layout: {exc}") from None
            fingerprint = lay.fingerprint_hex()
            layout_d = dict(layout)
            if not block_bytes:
                block_bytes = lay.block_bytes() or 0
            if block_bytes > limits.block_bytes_max:
                raise InvalidArgument("layout's block size exceeds block_bytes_max")
        info = NamespaceInfo(name, time.time(), owner, layout_d, fingerprint, block_bytes,
                             replicas, quota_bytes, quota_mode)
        self.by_name[name] = (self.next_id, info)
        self.next_id += 1
        return info

    def get(self, name: str) -> tuple[int, NamespaceInfo]:
        try:
            return self.by_name[name]
        except KeyError:
            raise NamespaceNotFound(f"no namespace {name}") from None

    def remove(self, name: str) -> None:
        ns_id, _info = self.get(name)
        del self.by_name[name]
        self.keys.wrapped.pop(ns_id, None)  # its records on flash become unreadable

    def id_to_name(self) -> dict[int, str]:
        return {i: n for n, (i, _info) in self.by_name.items()}
