"""Per-tenant connection caps: one mechanism for every listener (HTTP, bulk, RESP).

``--max-connections-per-tenant N`` bounds the connections one tenant holds on a listener, so one
tenant cannot take every slot of ``--max-connections`` from the others. Each listener owns one
``TenantConnections`` (the cap counts per listener, as ``--max-connections`` does), and each of
its connections one ``TenantSlot``::

    counts = TenantConnections(cap)     # the listener's
    slot = counts.slot()                # the connection's, unbound
    slot.bind(tenant.name)              # after authentication; LimitExceeded past the cap
    ...
    slot.release()                      # when the connection closes (idempotent)

A connection counts once it has authenticated: on the bulk port at AUTH, on the Redis port at
AUTH/HELLO, on HTTP at its first signed request. A later authentication as another tenant
re-binds it (a Redis ``AUTH`` as another user, an HTTP request signed with another tenant's
key): it then counts against the new tenant, which must have room, and no longer against the
old one. The listeners turn ``LimitExceeded`` into their own answer and close the connection
(bulk: ``LimitExceeded``; HTTP: ``503 SlowDown``; Redis: ``-ERR max number of clients
reached``).
"""

from __future__ import annotations

from kvstore.errors import LimitExceeded

FLAG = "--max-connections-per-tenant"


class TenantConnections:
    """One listener's authenticated connections per tenant name, and the cap on each."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the per-tenant connection cap must be at least 1")
        self.cap = cap
        self._counts: dict[str, int] = {}

    def count(self, name: str) -> int:
        """Connections bound to tenant ``name`` now."""
        return self._counts.get(name, 0)

    def tenants(self) -> dict[str, int]:
        """Every tenant with a connection bound, and how many."""
        return dict(self._counts)

    def join(self, name: str) -> None:
        """One more connection of ``name``; ``LimitExceeded`` (nothing counted) at the cap."""
        n = self._counts.get(name, 0)
        if n >= self.cap:
            raise LimitExceeded(f"tenant {name} has {n} connections open, at most {self.cap} "
                                f"({FLAG})")
        self._counts[name] = n + 1

    def leave(self, name: str) -> None:
        n = self._counts.get(name, 0) - 1
        if n > 0:
            self._counts[name] = n
        else:
            self._counts.pop(name, None)

    def slot(self) -> TenantSlot:
        return TenantSlot(self)


class TenantSlot:
    """One connection's place in its listener's counts: bound to at most one tenant."""

    __slots__ = ("_counts", "tenant")

    def __init__(self, counts: TenantConnections) -> None:
        self._counts = counts
        self.tenant: str | None = None

    def bind(self, name: str) -> None:
        """Count this connection against ``name`` (no-op when it already is). Past the cap:
        ``LimitExceeded``, and the connection counts against no one any more (the listener
        closes it)."""
        if name == self.tenant:
            return
        self.release()
        self._counts.join(name)
        self.tenant = name

    def release(self) -> None:
        if self.tenant is not None:
            self._counts.leave(self.tenant)
            self.tenant = None
