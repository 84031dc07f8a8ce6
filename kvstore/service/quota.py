"""Byte quotas per namespace and per tenant, enforced on write.

A namespace's quota is set when it is created (``/v1/namespaces``: ``quota_bytes``,
``quota_mode``; kept in the catalog and the pod-wide namespace record); a tenant's comes from the
credentials file (``kvstore.auth``) and bounds the namespaces it owns, together. Usage is the
engine index's live payload bytes per namespace (``Engine.namespace_usage``): no scan.

Past a quota a write either

- ``evict`` (the default): deletes the oldest live blocks (segment order) of the namespace it
  writes, then, for a tenant quota, of the tenant's other namespaces, largest first, until it fits
  with ``limits.quota_evict_slack_fraction`` of the quota to spare: a KV cache would rather lose
  its coldest blocks than refuse new ones; or
- ``strict``: is refused with ``QuotaExceeded`` (S3: 403 QuotaExceeded), nothing written.

A block larger than the quota itself is refused in either mode. Enforcement lives here, in the
service layer every front end calls (S3, /v1, bulk, shm, NIXL all write through
``BlockService``), not in the engine: tenants are the service's notion and the engine stays
free of policy. Admission and eviction run under one lock; the write itself does not, so
concurrent writers may overshoot a quota by at most the bytes they have in flight. A copy made
by the pod's copy-forward (an existing block moving owner) is not charged again.
"""

from __future__ import annotations

import threading

from kvstore import limits
from kvstore.auth import Tenants
from kvstore.engine.device import StagedPayload
from kvstore.engine.store import Engine
from kvstore.engine.types import NamespaceInfo
from kvstore.errors import QuotaExceeded


class Quotas:
    def __init__(self, engine: Engine, tenants: Tenants) -> None:
        self.engine = engine
        self.tenants = tenants
        self._lock = threading.Lock()

    def tenant_quota(self, owner: str) -> tuple[int, str]:
        t = self.tenants.by_name(owner) if owner else None
        return (0, "evict") if t is None else (t.quota_bytes, t.quota_mode)

    def admit(self, ns: str, incoming: int) -> None:
        """Engine thread, before a write of ``incoming`` payload bytes to ``ns``: return when
        it fits (after evicting, in evict mode); raise ``QuotaExceeded`` otherwise."""
        info = self.engine.namespace(ns)
        t_quota, t_mode = self.tenant_quota(info.owner)
        if not info.quota_bytes and not t_quota:
            return
        with self._lock:
            if info.quota_bytes:
                used = self.engine.namespace_usage().get(ns, (0, 0))[1]
                self._fit(used, incoming, info.quota_bytes, info.quota_mode,
                          f"namespace {ns}", [ns])
            if t_quota:
                usage = self.engine.namespace_usage()
                owned = [n.name for n in self.engine.list_namespaces() if n.owner == info.owner]
                others = sorted((n for n in owned if n != ns),
                                key=lambda n: -usage.get(n, (0, 0))[1])
                used = sum(usage.get(n, (0, 0))[1] for n in owned)
                self._fit(used, incoming, t_quota, t_mode, f"tenant {info.owner}", [ns, *others])

    def _fit(self, used: int, incoming: int, quota: int, mode: str, what: str,
             victims: list[str]) -> None:
        if used + incoming <= quota:
            return
        if incoming > quota or mode == "strict":
            raise QuotaExceeded(f"{what}: {used} + {incoming} bytes exceed its quota of "
                                f"{quota} bytes", used=used, quota=quota)
        need = used + incoming - quota + int(quota * limits.quota_evict_slack_fraction)
        over = used + incoming - quota
        for ns in victims:
            if over <= 0:
                return
            _blocks, freed = self.engine.evict_oldest(ns, need)
            need -= freed
            over -= freed
        if over > 0:  # nothing left to evict that would make room
            raise QuotaExceeded(f"{what}: no room within its quota of {quota} bytes",
                                used=used, quota=quota)

    def describe(self, info: NamespaceInfo) -> dict[str, object]:
        """The quotas that apply to a namespace (for /v1/stats)."""
        t_quota, t_mode = self.tenant_quota(info.owner)
        return {"quota_bytes": info.quota_bytes, "quota_mode": info.quota_mode,
                "tenant_quota_bytes": t_quota, "tenant_quota_mode": t_mode}


def payload_bytes(data: object) -> int:
    """Bytes of a block's payload: a buffer, or a staged payload (``length``)."""
    if isinstance(data, StagedPayload):
        return data.length
    try:
        return memoryview(data).nbytes  # type: ignore[arg-type]
    except TypeError:
        return 0  # not a buffer: the engine refuses it
