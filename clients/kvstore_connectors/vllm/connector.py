"""``KVStoreConnector``: kvstore as vLLM's external KV cache (``KVConnectorBase_V1``).

Load it with ``--kv-transfer-config`` (see docs/integrations.md, "vLLM")::

    {"kv_connector": "KVStoreConnector", "kv_role": "kv_both",
     "kv_connector_module_path": "kvstore_connectors.vllm",
     "kv_load_failure_policy": "recompute",
     "kv_connector_extra_config": {"host": "127.0.0.1", "port": 8701, "namespace": "vllm"}}

Scheduler side (engine core process): ``get_num_new_matched_tokens`` derives the chained keys
of the prompt's full blocks and asks kvstore for the longest stored prefix in one ``lookup``
(leased, so the blocks are not evicted before the worker reads them); the plan of each step
(``plan.Planner``) travels to the workers as ``KVStoreConnectorMetadata``. Worker side:
``start_load_kv`` loads the planned blocks into the paged KV cache before the forward
(synchronously: the loads of a step are one batched ``get_many_into``), ``wait_for_save``
stores the full prompt blocks the step computed with one ``put_many``. Loads that fail are
reported by ``get_block_ids_with_load_errors``; with ``kv_load_failure_policy: "recompute"``
vLLM recomputes those blocks (its default, ``"fail"``, fails the request instead).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvstore_client import Client
from kvstore_wire import limits
from kvstore_wire.errors import KVStoreError
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from kvstore_connectors.keys import prefix_keys
from kvstore_connectors.vllm.config import ConnectorConfig
from kvstore_connectors.vllm.layout import engine_layout, geometry
from kvstore_connectors.vllm.plan import Backoff, BlockTransfer, Planner, StepPlan
from kvstore_connectors.vllm.transfer import PagedKV, TransferCounters, load_blocks, save_blocks

if TYPE_CHECKING:
    import torch

log = logging.getLogger("vllm.kvstore_connectors")


@dataclass
class KVStoreConnectorMetadata(KVConnectorMetadata):
    """One step's plan, scheduler to workers (pickled with the scheduler output)."""

    loads: list[BlockTransfer] = field(default_factory=list)
    saves: list[BlockTransfer] = field(default_factory=list)


@dataclass
class SchedulerCounters:
    lookups: int = 0
    lookup_errors: int = 0
    hit_tokens: int = 0


def _tp_rank(role: KVConnectorRole) -> int:
    if role != KVConnectorRole.WORKER:
        return 0
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        return int(get_tensor_model_parallel_rank())
    except (ImportError, AssertionError, RuntimeError):  # no TP group: a single worker
        return 0


class KVStoreConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.config = ConnectorConfig.from_extra(
            self._kv_transfer_config.kv_connector_extra_config)
        self.geometry = geometry(kv_cache_config)
        pp = int(getattr(vllm_config.parallel_config, "pipeline_parallel_size", 1) or 1)
        if pp != 1:   # each stage holds other layers: its blocks would not match the lookup's
            raise ValueError("the kvstore connector supports pipeline_parallel_size 1, "
                             f"not {pp}")
        self.block_size = self.geometry.block_size
        self.tp_rank = _tp_rank(role)
        # The layout from the configs alone; keys chain from it under the tenant's salt token,
        # which the server names at AUTH (``chain_fingerprint``), so no two tenants share keys.
        self.base_layout = engine_layout(vllm_config, self.geometry, self.tp_rank,
                                         layout_salt=self.config.layout_salt)
        self.layout = self.base_layout
        self._chain_fp: bytes | None = None
        self.num_blocks = int(kv_cache_config.num_blocks)
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self._planner = Planner(self.block_size)
        self.scheduler_counters = SchedulerCounters()
        self.counters = TransferCounters()
        self._kv: PagedKV | None = None
        self._load_errors: set[int] = set()
        self._backoff = Backoff(self.config.retry_after_seconds)
        log.info("kvstore connector (%s, tp_rank %d): %s:%d namespace %s, layout %s",
                 role.name, self.tp_rank, self.config.host, self.config.port,
                 self.config.namespace, self.base_layout.fingerprint_hex())

    # -- shared --------------------------------------------------------------------------
    @property
    def client(self) -> Client:
        """Connected on first use, in the process that uses it (vLLM forks its workers)."""
        with self._client_lock:
            if self._client is None:
                c = self.config
                timeout = c.lookup_timeout_seconds if self.role == KVConnectorRole.SCHEDULER \
                    else c.timeout_seconds
                self._client = Client(c.host, c.port, namespace=c.namespace,
                                      access_key=c.access_key, secret_key=c.secret_key,
                                      create=c.create_namespace, timeout=timeout,
                                      pool_size=c.pool_size)
            return self._client

    @property
    def fingerprint(self) -> bytes:
        """The fingerprint of the layout from the configs alone (before the tenant's salt)."""
        return self.base_layout.fingerprint()

    def chain_fingerprint(self) -> bytes | None:
        """What keys chain from: the layout under the tenant's salt token (``Client.key_salt``,
        asked once, on the first connection; "" in development mode). None while kvstore
        cannot be reached: a request then gets no keys (no lookup, no save) and computes
        locally, so no key is ever derived without the salt."""
        if self._chain_fp is not None:
            return self._chain_fp
        if not self._backoff.allow(time.monotonic()):
            return None
        try:
            token = self.client.key_salt()
        except (KVStoreError, OSError) as exc:
            self._backoff.failed(time.monotonic())
            log.warning("kvstore: no connection for the tenant salt, computing locally (no "
                        "kvstore calls for %.0f s): %s", self.config.retry_after_seconds, exc)
            return None
        self.layout = self.base_layout.salted(token)
        self._chain_fp = self.layout.fingerprint()
        log.info("kvstore connector (%s): keys chain from layout %s (%s)", self.role.name,
                 self.layout.fingerprint_hex(), "tenant-salted" if token else "no tenant salt")
        return self._chain_fp

    def request_keys(self, request: Any) -> list[str]:
        """The chained keys of the prompt's full blocks; the request's ``cache_salt`` (vLLM's
        per-request salt), LoRA adapter and multimodal hashes are bound into the first block.
        [] while the tenant salt is not known (``chain_fingerprint``)."""
        fp = self.chain_fingerprint()
        if fp is None:
            return []
        tokens = list(request.prompt_token_ids or [])
        tokens = tokens[:limits.chain_keys_max * self.block_size]
        lora = getattr(request, "lora_request", None)
        mm = [str(getattr(f, "identifier", "")) for f in (getattr(request, "mm_features", None)
                                                          or [])]
        return prefix_keys(fp, tokens, self.block_size,
                           cache_salt=getattr(request, "cache_salt", None),
                           lora=getattr(lora, "lora_name", None) if lora else None,
                           mm_hashes=mm)

    # -- scheduler side ------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Any,
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        prompt_len = len(request.prompt_token_ids or [])
        keys = self.request_keys(request)
        n = min(len(keys), Planner.lookup_blocks(prompt_len, self.block_size))
        found = 0
        # Asked even when the local prefix cache covers the prompt: the answer says which
        # blocks need no save. Leased only when blocks are to be loaded.
        if n > 0 and self._backoff.allow(time.monotonic()):
            self.scheduler_counters.lookups += 1
            lease = self.config.lease_seconds if n > num_computed_tokens // self.block_size \
                else 0.0
            try:
                found = self.client.lookup(keys[:n], lease_seconds=lease)
                self._backoff.succeeded()
            except (KVStoreError, OSError) as exc:
                self.scheduler_counters.lookup_errors += 1
                self._backoff.failed(time.monotonic())
                log.warning("kvstore: lookup for %s failed, computing locally (no lookups "
                            "for %.0f s): %s", request.request_id,
                            self.config.retry_after_seconds, exc)
        external = self._planner.matched(request.request_id, keys, prompt_len,
                                         num_computed_tokens, found)
        if external:
            log.info("kvstore: request %s: external prefix hit of %d tokens (%d blocks found, "
                     "%d tokens computed locally)", request.request_id, external, found,
                     num_computed_tokens)
        return external, False

    def update_state_after_alloc(self, request: Any, blocks: Any,
                                 num_external_tokens: int) -> None:
        ids = blocks.get_block_ids()[0] if num_external_tokens > 0 else []
        if num_external_tokens > 0:
            self.scheduler_counters.hit_tokens += num_external_tokens
        self._planner.allocated(request.request_id, ids, num_external_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> KVStoreConnectorMetadata:
        plan = StepPlan()
        self._planner.take_loads(plan)
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            self._planner.scheduled(
                new.req_id, new.block_ids[0], replace=True,
                computed_after_step=new.num_computed_tokens + scheduled.get(new.req_id, 0),
                plan=plan)
        cached = scheduler_output.scheduled_cached_reqs
        resumed: set[str] = getattr(cached, "resumed_req_ids", set())
        for i, req_id in enumerate(cached.req_ids):
            new_ids = cached.new_block_ids[i]
            self._planner.scheduled(
                req_id, None if new_ids is None else new_ids[0], replace=req_id in resumed,
                computed_after_step=cached.num_computed_tokens[i] + scheduled.get(req_id, 0),
                plan=plan)
        return KVStoreConnectorMetadata(loads=plan.loads, saves=plan.saves)

    def request_finished(self, request: Any, block_ids: Any) -> tuple[bool, dict[str, Any] | None]:
        self._planner.finished(request.request_id)
        return False, None

    # -- worker side ---------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._kv = PagedKV(kv_caches, self.geometry.layer_names, self.num_blocks)
        log.info("kvstore: %d layers registered, %d bytes per block", len(self._kv.layers),
                 self._kv.block_bytes)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        meta = self._connector_metadata
        if not isinstance(meta, KVStoreConnectorMetadata) or not meta.loads:
            return
        assert self._kv is not None, "register_kv_caches was not called"
        for t in meta.loads:
            failed = load_blocks(self.client, self._kv, t.keys, t.block_ids, self.counters)
            self._load_errors |= failed
            log.info("kvstore: request %s: loaded %d of %d blocks", t.req_id,
                     len(t.keys) - len(failed), len(t.keys))

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # start_load_kv finished every load before the forward

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any,
                      **kwargs: Any) -> None:
        return  # saved whole blocks, all layers at once, in wait_for_save

    def wait_for_save(self) -> None:
        meta = self._connector_metadata
        if not isinstance(meta, KVStoreConnectorMetadata) or not meta.saves:
            return
        assert self._kv is not None, "register_kv_caches was not called"
        for t in meta.saves:
            if not self._backoff.allow(time.monotonic()):
                continue                          # kvstore failed lately: a later miss
            failed_before = self.counters.save_failed_blocks
            save_blocks(self.client, self._kv, t.keys, t.block_ids, self.counters)
            if self.counters.save_failed_blocks > failed_before:
                self._backoff.failed(time.monotonic())
            else:
                self._backoff.succeeded()
        log.debug("kvstore: saved %d blocks so far", self.counters.saved_blocks)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None,
                                                                 set[str] | None]:
        return None, None  # loads and saves are synchronous: nothing outlives its step

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def shutdown(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
