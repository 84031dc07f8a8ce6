"""An HTTP connection's tenant: the hook between the authenticating apps and the guard.

The HTTP guard (``kvstore.api.http_guard``) puts a binder into each request's ASGI scope, under
``scope["extensions"][BIND_KEY]``; the S3 app and the ``/v1`` apps call ``bind_connection`` right
after a request's signature is verified. The binder counts the connection against that tenant
(``kvstore.service.conn_caps``, ``--max-connections-per-tenant``; a request signed by another
tenant re-binds it). Past the cap it raises ``Busy`` (``503 SlowDown``, retryable) and marks the
connection to close after that answer. A scope without a binder (an app served without the
guard, as in tests) binds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kvstore.auth import Tenant

BIND_KEY = "kvstore.bind_tenant"

Binder = Callable[[str], None]


def bind_connection(scope: Mapping[str, Any], tenant: Tenant) -> None:
    """Count this request's connection against ``tenant``; ``Busy`` past the tenant's cap."""
    ext = scope.get("extensions")
    binder: Binder | None = ext.get(BIND_KEY) if ext else None
    if binder is not None:
        binder(tenant.name)
