"""The vLLM connector's settings, read once from ``kv_connector_extra_config``.

The connector's edge: nothing deeper reads the engine's config dict. Unknown keys are refused
(a misspelt ``bulk_port`` must not silently talk to the default port).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from kvstore_wire import limits
from kvstore_wire.keys import validate_namespace

# The bound of one lookup lease: blocks found by the scheduler's lookup stay pinned (not
# evicted) until the worker has read them, at most this long.
LEASE_SECONDS_DEFAULT = 30.0
TIMEOUT_SECONDS_DEFAULT = 30.0
# The scheduler's lookup sits on vLLM's scheduling path: a short timeout, and after a failure
# no kvstore call for RETRY_AFTER_SECONDS_DEFAULT (requests compute locally meanwhile).
LOOKUP_TIMEOUT_SECONDS_DEFAULT = 5.0
RETRY_AFTER_SECONDS_DEFAULT = 5.0
RETRY_AFTER_SECONDS_MAX = 3600.0


@dataclass(frozen=True)
class ConnectorConfig:
    """``kv_connector_extra_config`` of the kvstore connector (all optional)."""

    host: str = "127.0.0.1"
    port: int = 8701                   # the bulk port
    namespace: str = "vllm"
    access_key: str = "dev"
    secret_key: str = ""
    create_namespace: bool = True
    lease_seconds: float = LEASE_SECONDS_DEFAULT
    timeout_seconds: float = TIMEOUT_SECONDS_DEFAULT
    lookup_timeout_seconds: float = LOOKUP_TIMEOUT_SECONDS_DEFAULT
    retry_after_seconds: float = RETRY_AFTER_SECONDS_DEFAULT
    pool_size: int = 4
    # Further bytes bound into the fingerprint (a deployment-wide salt: two fleets that must
    # never share blocks set different values).
    layout_salt: str = ""

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, not {self.port}")
        if not 0 <= self.lease_seconds <= limits.lease_seconds_max:
            raise ValueError(f"lease_seconds must be in [0, {limits.lease_seconds_max}]")
        if self.timeout_seconds <= 0 or self.lookup_timeout_seconds <= 0:
            raise ValueError("timeout_seconds and lookup_timeout_seconds must be positive")
        if not 0 <= self.retry_after_seconds <= RETRY_AFTER_SECONDS_MAX:
            raise ValueError(f"retry_after_seconds must be in [0, {RETRY_AFTER_SECONDS_MAX}]")
        if self.pool_size <= 0:
            raise ValueError("pool_size must be positive")

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None) -> ConnectorConfig:
        known = {f.name: f for f in fields(cls)}
        given = dict(extra or {})
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"unknown kvstore connector settings {unknown}; "
                             f"known: {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for name, value in given.items():
            default: Any = known[name].default
            kwargs[name] = _as_bool(name, value) if isinstance(default, bool) \
                else type(default)(value)
        return cls(**kwargs)


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be a boolean, not {value!r}")
