"""Deterministic keys: namespace fingerprints and chained block keys (DESIGN section 3).

Defined once, in the client distribution (``clients/kvstore_wire/keys.py``): the server and the
SDK must compute the same keys and accept the same names. This module re-exports it.
"""

from __future__ import annotations

from kvstore_wire.keys import (
    DTYPE_BYTES,
    KEY_BYTES,
    KEY_SCHEME_VERSION,
    Layout,
    block_keys,
    chain_root,
    namespace_pattern,
    next_key,
    salted_tenant_salt,
    validate_key,
    validate_namespace,
)

__all__ = [
    "DTYPE_BYTES", "KEY_BYTES", "KEY_SCHEME_VERSION", "Layout", "block_keys", "chain_root",
    "namespace_pattern", "next_key", "salted_tenant_salt", "validate_key", "validate_namespace",
]
