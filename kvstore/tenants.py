"""Tenants and their credentials, shared by the S3 API (SigV4) and the bulk port (HELLO/AUTH).

The credentials file is JSON::

    {"tenants": [
        {"name": "acme", "access_key": "AKIAACME", "secret_key": "...",
         "namespaces": ["acme-*", "shared-llama"]}
    ]}

``namespaces`` are exact names or shell-style patterns (``fnmatch``). A tenant may create and use
only namespaces that match. Without a credentials file the server runs in development mode:
``Tenants.dev()`` accepts any access key, and every caller is the tenant ``""`` that owns all.
"""

from __future__ import annotations

import fnmatch
import hmac
import json
from dataclasses import dataclass, field

from kvstore.errors import AccessDenied, InvalidArgument

DEV_TENANT = ""


@dataclass(frozen=True)
class Tenant:
    name: str
    access_key: str
    secret_key: str
    namespaces: tuple[str, ...] = field(default=("*",))

    def may_use(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, pat) for pat in self.namespaces)


class Tenants:
    """Lookup of tenants by access key. ``dev`` mode: any key is accepted as the dev tenant."""

    def __init__(self, tenants: list[Tenant], *, dev: bool = False) -> None:
        self.dev = dev
        self._by_key = {t.access_key: t for t in tenants}
        if len(self._by_key) != len(tenants):
            raise InvalidArgument("duplicate access_key in credentials")

    @classmethod
    def development(cls) -> Tenants:
        return cls([], dev=True)

    @classmethod
    def from_file(cls, path: str) -> Tenants:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict) -> Tenants:
        out = []
        for i, t in enumerate(doc.get("tenants", [])):
            try:
                out.append(Tenant(
                    name=str(t["name"]), access_key=str(t["access_key"]),
                    secret_key=str(t["secret_key"]),
                    namespaces=tuple(str(p) for p in t.get("namespaces", ["*"])),
                ))
            except KeyError as exc:
                raise InvalidArgument(f"tenant #{i} lacks {exc.args[0]}") from None
        if not out:
            raise InvalidArgument("credentials file defines no tenants")
        return cls(out)

    def by_access_key(self, access_key: str) -> Tenant:
        """The tenant owning ``access_key``; in dev mode a tenant that may use everything."""
        if self.dev:
            return Tenant(DEV_TENANT, access_key, "", ("*",))
        t = self._by_key.get(access_key)
        if t is None:
            raise AccessDenied("unknown access key")
        return t

    def secret_for(self, access_key: str) -> str | None:
        t = self._by_key.get(access_key)
        return None if t is None else t.secret_key


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)
