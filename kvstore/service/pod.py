"""Pod-wide namespaces: what one node creates or deletes, every node of the pod has.

``PodNamespaces`` joins a ``BlockService`` to a membership source that records namespaces
(``kvstore.cluster.etcd.EtcdMembership``):

- a namespace created or deleted here (S3 CreateBucket/DeleteBucket, ``/v1/namespaces``, a bulk
  HELLO that creates) is written to ``/kvstore/<pod>/namespaces/<name>`` (owner, layout, block
  size, replica count) after the local engine did it; while etcd is down the write waits and is made when etcd
  is back;
- a namespace put or deleted in etcd (by any node, and those found at each (re)connect) is
  created in or deleted from this node's engine catalog, so it is usable here within the watch's
  latency (milliseconds on loopback).

A delete that finds blocks of the namespace still on this node leaves it here (logged): the
engine refuses to drop a non-empty namespace, and a DeleteBucket answered elsewhere must not
fail here. Its blocks age out as any cache's do.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from kvstore.engine.types import NamespaceInfo
from kvstore.errors import AlreadyExists, KVStoreError, NamespaceNotEmpty, NamespaceNotFound
from kvstore.service.blocks import BlockService

log = logging.getLogger("kvstore.service.pod")


class NamespaceRecord(Protocol):
    def on_namespace(self, callback: Any) -> None: ...

    async def publish_namespace(self, name: str, value: dict[str, Any] | None) -> bool: ...


def record_of(info: NamespaceInfo) -> dict[str, Any]:
    """The etcd value of a namespace."""
    return {"owner": info.owner, "layout": dict(info.layout), "block_bytes": info.block_bytes,
            "replicas": info.replicas, "quota_bytes": info.quota_bytes,
            "quota_mode": info.quota_mode}


class PodNamespaces:
    def __init__(self, blocks: BlockService, record: NamespaceRecord) -> None:
        self.blocks = blocks
        self.record = record
        self.applied = 0  # namespace changes from the pod applied to this node's catalog
        record.on_namespace(self.apply)
        blocks.namespace_hook = self.publish

    async def publish(self, name: str, info: NamespaceInfo | None) -> None:
        """Called by ``BlockService`` after a local create (info) or delete (None)."""
        await self.record.publish_namespace(name, None if info is None else record_of(info))

    async def apply(self, name: str, value: dict[str, Any] | None) -> None:
        engine, runner = self.blocks.engine, self.blocks.runner
        if value is None:
            try:
                await runner.call(engine.delete_namespace, name)
            except NamespaceNotFound:
                return
            except NamespaceNotEmpty:
                log.warning("namespace %s was deleted in the pod but has blocks on this node: "
                            "kept here until they age out", name)
                return
            self.applied += 1
            log.info("namespace %s deleted (pod-wide)", name)
            return
        try:
            await runner.call(engine.create_namespace, name, owner=str(value.get("owner", "")),
                              layout=value.get("layout") or None,
                              block_bytes=int(value.get("block_bytes", 0) or 0),
                              replicas=int(value.get("replicas", 1) or 1),
                              quota_bytes=int(value.get("quota_bytes", 0) or 0),
                              quota_mode=str(value.get("quota_mode", "evict") or "evict"))
        except AlreadyExists:
            return
        except (KVStoreError, TypeError, ValueError) as exc:
            log.warning("namespace %s from the pod not created here: %s", name, exc)
            return
        self.applied += 1
        log.info("namespace %s created (pod-wide)", name)
