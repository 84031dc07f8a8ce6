"""Tenants, their credentials, and the one namespace policy every front end asks.

The credentials file is JSON::

    {"tenants": [
        {"name": "acme", "access_key": "AKIAACME", "secret_key": "...",
         "namespaces": ["acme-*", "shared-llama"],
         "quota_bytes": 10000000000, "quota_mode": "evict"}
    ]}

``quota_bytes`` (optional, 0 = none) bounds the live payload bytes of all the namespaces the
tenant owns; ``quota_mode`` is ``evict`` (the default: a write past it deletes the written
namespace's oldest blocks) or ``strict`` (it is refused with ``QuotaExceeded``). See
``kvstore.service.quota``.

``namespaces`` are exact names or shell-style patterns (``fnmatch``). ``key_salt`` (optional):
tenants that give the same one share layout fingerprints (``Policy.salted_layout``). Without a credentials file
the server runs in development mode: ``Tenants.development()`` accepts any access key, and every
caller is the tenant ``""`` that owns all.

The policy (``Policy``) is the only place that decides who may do what to a namespace. S3, /v1,
the bulk port, shm and NIXL all ask it, through ``kvstore.service.BlockService``:

- development mode: everyone may do everything;
- a tenant may CREATE a namespace whose name matches one of its patterns and that does not exist;
- a tenant may READ, WRITE, LIST and DELETE a namespace whose name matches one of its patterns
  and that it owns;
- a namespace without an owner (created in development mode, then the server restarted with
  credentials) is refused to every tenant until an operator assigns one:
  ``kvstore namespace set-owner --data-dir DIR NAME TENANT`` on the stopped server's data dir;
- a namespace listing shows a tenant only the namespaces it may READ.

A refusal is ``AccessDenied`` whether or not the namespace exists, so a tenant cannot probe other
tenants' names; a missing namespace whose name the caller may use is ``NamespaceNotFound``.
"""

from __future__ import annotations

import enum
import fnmatch
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from kvstore.errors import AccessDenied, InvalidArgument, NamespaceNotFound
from kvstore.keys import salted_tenant_salt

DEV_TENANT = ""
# The owner of a namespace created in development mode.
NO_OWNER = ""
# What the refusal of an ownerless namespace tells the caller (and the operator in the logs).
OWNERLESS_HINT = ("namespace {ns} has no owner (created in development mode); an operator can "
                  "assign one with `kvstore namespace set-owner --data-dir DIR {ns} TENANT`")


class NamespaceTaken(AccessDenied):
    """CREATE of a namespace that exists and is someone else's: AccessDenied on /v1 and the bulk
    port (a foreign name looks like any refused one); S3 answers it BucketAlreadyExists, as AWS
    does for a taken bucket name."""


@dataclass(frozen=True)
class Tenant:
    name: str
    access_key: str
    secret_key: str
    namespaces: tuple[str, ...] = field(default=("*",))
    # Tenants with the same key_salt share layout fingerprints (the operator's opt-in); "":
    # a salt of the tenant's own (Policy.salted_layout)
    key_salt: str = ""
    quota_bytes: int = 0  # live payload bytes over all its namespaces, 0 = no quota
    quota_mode: str = "evict"  # "evict" or "strict" (kvstore.service.quota)

    def may_use(self, namespace: str) -> bool:
        """The name matches one of this tenant's patterns (ownership is the policy's part)."""
        return any(fnmatch.fnmatchcase(namespace, pat) for pat in self.namespaces)



_DEV_UNSIGNED = Tenant(DEV_TENANT, "", "", ("*",))

class Tenants:
    """Lookup of tenants by access key. ``dev`` mode: any key is accepted as the dev tenant."""

    def __init__(self, tenants: list[Tenant], *, dev: bool = False) -> None:
        self.dev = dev
        self._by_key = {t.access_key: t for t in tenants}
        if len(self._by_key) != len(tenants):
            raise InvalidArgument("duplicate access_key in credentials")
        self.names = frozenset(t.name for t in tenants)
        self._by_name = {t.name: t for t in tenants}

    def by_name(self, name: str) -> Tenant | None:
        """The tenant called ``name`` (a namespace's owner); None in dev mode or if unknown."""
        return self._by_name.get(name)

    @classmethod
    def development(cls) -> Tenants:
        return cls([], dev=True)

    @classmethod
    def from_file(cls, path: str) -> Tenants:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Tenants:
        out = []
        for i, t in enumerate(doc.get("tenants", [])):
            try:
                out.append(Tenant(
                    name=str(t["name"]), access_key=str(t["access_key"]),
                    secret_key=str(t["secret_key"]),
                    namespaces=tuple(str(p) for p in t.get("namespaces", ["*"])),
                    key_salt=str(t.get("key_salt", "")),
                    quota_bytes=int(t.get("quota_bytes", 0)),
                    quota_mode=str(t.get("quota_mode", "evict")),
                ))
            except KeyError as exc:
                raise InvalidArgument(f"tenant #{i} lacks {exc.args[0]}") from None
            except (TypeError, ValueError):
                raise InvalidArgument(f"tenant #{i}: quota_bytes must be an integer") from None
            if out[-1].quota_bytes < 0 or out[-1].quota_mode not in ("evict", "strict"):
                raise InvalidArgument(f"tenant #{i}: quota_bytes >= 0, quota_mode evict|strict")
        if not out:
            raise InvalidArgument("credentials file defines no tenants")
        return cls(out)

    def by_access_key(self, access_key: str) -> Tenant:
        """The tenant owning ``access_key``; in dev mode a tenant that may use everything."""
        if self.dev:
            if not access_key:  # unsigned requests: one immutable tenant, not one per request
                return _DEV_UNSIGNED
            return Tenant(DEV_TENANT, access_key, "", ("*",))
        t = self._by_key.get(access_key)
        if t is None:
            raise AccessDenied("unknown access key")
        return t

    def secret_for(self, access_key: str) -> str | None:
        t = self._by_key.get(access_key)
        return None if t is None else t.secret_key


class Op(enum.Enum):
    """What a caller wants to do to a namespace."""

    CREATE = "create"
    READ = "read"      # get, head, exists, lookup, prefetch, list its blocks, stats
    WRITE = "write"    # put, copy, multipart
    LIST = "list"      # see it in a namespace listing
    DELETE = "delete"  # delete blocks, or the namespace itself


class Policy:
    """The one namespace policy. ``owner`` is the namespace's owner, or None when it does not
    exist; the caller (``BlockService``) looks it up, so this module needs no engine."""

    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    @property
    def dev(self) -> bool:
        return self.tenants.dev

    def check_name(self, tenant: Tenant, ns: str) -> None:
        """AccessDenied unless ``ns`` is one of ``tenant``'s names: the part of ``check`` that
        needs no catalog, asked first so the refusal of a foreign name never looks it up."""
        if not self.dev and not tenant.may_use(ns):
            raise AccessDenied("Access Denied")

    def check(self, tenant: Tenant, ns: str, op: Op, owner: str | None) -> None:
        """Return when ``tenant`` may do ``op`` to ``ns``; raise otherwise: ``AccessDenied``
        (not its name, not its namespace, ownerless; ``NamespaceTaken`` for CREATE of someone
        else's), ``NamespaceNotFound`` (its name, absent, for anything but CREATE). CREATE of
        the caller's own existing namespace passes: the front end answers it idempotently."""
        if self.dev:
            if owner is None and op is not Op.CREATE:
                raise NamespaceNotFound(f"no namespace {ns}")
            return
        if not tenant.may_use(ns):
            raise AccessDenied("Access Denied")
        if owner is None:
            if op is Op.CREATE:
                return
            raise NamespaceNotFound(f"no namespace {ns}")
        if owner == NO_OWNER:
            raise AccessDenied("Access Denied: " + OWNERLESS_HINT.format(ns=ns))
        if owner != tenant.name:
            if op is Op.CREATE:
                raise NamespaceTaken("Access Denied")
            raise AccessDenied("Access Denied")

    def allows(self, tenant: Tenant, ns: str, op: Op, owner: str | None) -> bool:
        try:
            self.check(tenant, ns, op, owner)
        except (AccessDenied, NamespaceNotFound):
            return False
        return True

    def visible(self, tenant: Tenant, ns: str, owner: str) -> bool:
        """Whether a namespace listing shows ``ns`` to ``tenant``: exactly when it may READ."""
        return self.allows(tenant, ns, Op.LIST, owner)

    def salt_token(self, tenant: Tenant) -> str:
        """The tenant's salt token: ``shared:KEY_SALT`` when its credentials give ``key_salt``
        (tenants with the same one opted in together), else ``tenant:NAME``; "" in development
        mode (one tenant). AUTH_OK on the bulk port names it, so a client that computes its own
        fingerprints (the engine connectors) salts them as ``salted_layout`` does."""
        if self.dev:
            return ""
        return f"shared:{tenant.key_salt}" if tenant.key_salt else f"tenant:{tenant.name}"

    def salted_layout(self, tenant: Tenant,
                      layout: dict[str, Any] | None) -> dict[str, Any] | None:
        """``layout`` with the tenant's salt token first in its ``tenant_salt`` (the client's own
        salt, a fleet salt, kept after it), so the fingerprint and every block key chained from
        it differ between tenants for the same model and prompt. Tenants whose credentials name
        the same ``key_salt`` share them (both opted in); development mode adds nothing.
        Idempotent: a layout already salted for this tenant (sent back as the server answered
        it) stays as it is. The rule is ``kvstore_wire.keys.salted_tenant_salt``, the one
        clients apply."""
        if layout is None or self.dev:
            return layout
        own = str(layout.get("tenant_salt") or "")
        return {**layout, "tenant_salt": salted_tenant_salt(own, self.salt_token(tenant))}

    def owner_for_new(self, tenant: Tenant) -> str:
        """The owner a namespace created by ``tenant`` gets."""
        return tenant.name


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)
