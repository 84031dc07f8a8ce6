"""kvstore for vLLM: ``KVStoreConnector`` (a ``KVConnectorBase_V1`` connector, loaded with
``kv_connector_module_path: "kvstore_connectors.vllm"``) and ``KVStoreSecondaryTier`` (a
secondary tier of vLLM's offloading connector, ``kvstore_connectors.vllm.tier``).
See docs/integrations.md, "vLLM".

The connector class is imported on first access (PEP 562), so the vLLM-free parts of this
package (``config``, ``plan``, ``layout``) import where vLLM is not installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KVStoreConnector", "KVStoreConnectorMetadata", "KVStoreSecondaryTier"]


def __getattr__(name: str) -> Any:
    if name in ("KVStoreConnector", "KVStoreConnectorMetadata"):
        from kvstore_connectors.vllm import connector
        return getattr(connector, name)
    if name == "KVStoreSecondaryTier":
        from kvstore_connectors.vllm import tier
        return tier.KVStoreSecondaryTier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
