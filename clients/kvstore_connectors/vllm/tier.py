"""``KVStoreSecondaryTier``: kvstore as a secondary tier of vLLM's offloading connector
(``vllm/v1/kv_offload/tiering``, vLLM 0.32 and 0.33).

The offloading connector moves KV from the GPU to its primary tier, a pinned CPU buffer
(``primary_kv_view``: one row of ``block_size_bytes`` per chunk); secondary tiers copy chunks
between that buffer and their own store, from the scheduler process, without blocking it:

- ``lookup`` answers from vLLM's ``AsyncLookupManager`` (``RETRY`` until the step's batch of
  keys has been asked, then ``HIT``/``MISS``); its background thread asks kvstore with one
  ``exists_many`` per request and step.
- ``submit_store`` / ``submit_load`` queue a job on a small thread pool: a store asks which
  chunks kvstore lacks (one ``exists_many``) and ``put_many``s those rows straight from the
  primary buffer; a load ``get_many_into``s the rows straight into their primary slots and
  checks every length. ``get_finished_jobs`` hands back the results (a partial load names its
  ``successful_keys``; the failed keys are marked missed so vLLM does not retry them).
- ``drain_jobs`` waits for every submitted job.

Keys: vLLM names a chunk by its ``OffloadKey`` (its block hash and KV cache group; vLLM hashes a
request's ``cache_salt`` into the first block's hash, so it reaches every key); the kvstore
key is ``opaque_key(fingerprint, offload_key)`` where the fingerprint binds the model, KV dtype,
tokens per hash, blocks per chunk, chunk bytes, the KV cache groups and layout, the
parallel configuration and the tenant's salt token (asked of the server on the first
connection, ``Client.key_salt``). vLLM's block hashes are reproducible across processes with its default
sha256 hashing; with a non-cryptographic ``prefix_caching_hash_algo`` set ``PYTHONHASHSEED``
to one value on every instance that shares the tier.

Configured as one entry of ``secondary_tiers`` (see docs/integrations.md, "vLLM")::

    {"type": "KVStoreSecondaryTier", "module_path": "kvstore_connectors.vllm.tier",
     "host": "127.0.0.1", "port": 8701, "namespace": "vllm-offload"}
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar

from kvstore_client import Client
from kvstore_wire.errors import KVStoreError
from vllm.v1.kv_offload.base import (
    LookupResult,
    Medium,
    OffloadKey,
    ReqContext,
    RequestOffloadingContext,
    ScheduleEndContext,
)
from vllm.v1.kv_offload.tiering.async_lookup import AsyncLookupManager
from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager, TransferJob

from kvstore_connectors.keys import EngineLayout, Layout, opaque_key
from kvstore_connectors.vllm.config import ConnectorConfig

log = logging.getLogger("vllm.kvstore_connectors.tier")

IO_THREADS_DEFAULT = 4


def tier_layout(offloading_spec: Any, chunk_bytes: int, layout_salt: str = "") -> EngineLayout:
    """The fingerprint of the chunks of one offloading configuration."""
    cfg = offloading_spec.config
    par = cfg.parallel
    groups = [{"tokens_per_block": g.tokens_per_block, "layers": list(g.layer_names)}
              for g in cfg.groups]
    layers = sum(len(g.layer_names) for g in cfg.groups) or 1
    # the chunk's geometry is bound whole by its byte size and the groups (the offloading
    # config carries no head counts); the Layout fields stand for what they can
    layout = Layout(model=str(cfg.model.name), dtype=str(cfg.model.dtype), num_layers=layers,
                    num_kv_heads=1, head_dim=1,
                    tokens_per_block=int(cfg.cache.tokens_per_hash),
                    tp_rank=0, tp_size=max(1, int(par.tp_size)), tenant_salt=layout_salt)
    extra = {"chunk_bytes": chunk_bytes, "blocks_per_chunk": int(cfg.cache.blocks_per_chunk),
             "worker_kv_bytes_per_block": int(cfg.worker_kv_bytes_per_block),
             "groups": groups, "pp_size": int(par.pp_size), "pcp_size": int(par.pcp_size),
             "dcp_size": int(par.dcp_size), "world_size": int(par.world_size),
             "parallelism_agnostic": bool(par.is_parallelism_agnostic),
             "replicated_layout": bool(getattr(cfg, "replicated_layout", False)),
             "canonical_layout": bool(getattr(cfg, "canonical_layout", False))}
    return EngineLayout(layout=layout, engine="vllm-offload",
                        kv_layout=str(getattr(cfg, "kv_cache_layout", "") or ""), extra=extra)


class _Lookups(AsyncLookupManager):
    def __init__(self, tier: KVStoreSecondaryTier, tier_type: str) -> None:
        self._tier = tier
        super().__init__(tier_type=tier_type)

    def batch_lookup(self, keys: list[OffloadKey], req_context: ReqContext) -> Iterable[bool]:
        # on the lookup thread; a failure is logged by the base class and counts as misses
        return self._tier.client.exists_many([self._tier.key(k) for k in keys])


class KVStoreSecondaryTier(SecondaryTierManager):
    medium: ClassVar[Medium] = Medium.STORAGE

    def __init__(self, offloading_spec: Any, primary_kv_view: memoryview, tier_type: str,
                 host: str = "127.0.0.1", port: int = 8701, namespace: str = "vllm-offload",
                 access_key: str = "dev", secret_key: str = "", create_namespace: bool = True,
                 timeout_seconds: float = 30.0, io_threads: int = IO_THREADS_DEFAULT,
                 layout_salt: str = "", locality: str | None = None,
                 backpressure_detector: Any = None) -> None:
        super().__init__(offloading_spec, primary_kv_view, tier_type, backpressure_detector)
        if locality is not None:
            from vllm.v1.kv_offload.base import Locality
            self.locality = Locality(locality)
        # validated like the connector's settings (namespace rules, port range)
        self.config = ConnectorConfig(host=host, port=int(port), namespace=namespace,
                                      access_key=access_key, secret_key=secret_key,
                                      create_namespace=bool(create_namespace),
                                      timeout_seconds=float(timeout_seconds),
                                      pool_size=max(1, int(io_threads)) + 1,
                                      layout_salt=layout_salt)
        if not primary_kv_view.c_contiguous:
            raise ValueError("the primary KV view must be C-contiguous")
        self._flat = primary_kv_view.cast("B")
        self._chunk = self.block_size_bytes
        self.base_layout = tier_layout(offloading_spec, self._chunk, layout_salt)
        self.layout = self.base_layout
        self._fp: bytes | None = None  # under the tenant's salt, once known (_fingerprint)
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(io_threads)),
                                        thread_name_prefix="kvstore_tier")
        self._done: queue.SimpleQueue[tuple[JobResult, list[OffloadKey]]] = queue.SimpleQueue()
        self._inflight: set[Future[None]] = set()
        self._inflight_lock = threading.Lock()
        self._lookups = _Lookups(self, tier_type)
        log.info("kvstore secondary tier %s: %s:%d namespace %s, layout %s", tier_type, host,
                 port, namespace, self.base_layout.fingerprint_hex())

    # -- keys and the client ---------------------------------------------------------------
    def _fingerprint(self) -> bytes:
        """The layout's fingerprint under the tenant's salt token, asked of the server once
        (KVStoreError or OSError while it cannot be reached: the caller's job fails, a
        lookup counts as misses; no key is derived without the salt)."""
        with self._client_lock:
            fp = self._fp
        if fp is None:
            token = self.client.key_salt()
            layout = self.base_layout.salted(token)
            with self._client_lock:
                self.layout, self._fp = layout, layout.fingerprint()
                fp = self._fp
            log.info("kvstore secondary tier: keys from layout %s (%s)", layout.fingerprint_hex(),
                     "tenant-salted" if token else "no tenant salt")
        return fp

    def key(self, offload_key: bytes) -> str:
        return opaque_key(self._fingerprint(), offload_key)

    @property
    def client(self) -> Client:
        with self._client_lock:
            if self._client is None:
                c = self.config
                self._client = Client(c.host, c.port, namespace=c.namespace,
                                      access_key=c.access_key, secret_key=c.secret_key,
                                      create=c.create_namespace, timeout=c.timeout_seconds,
                                      pool_size=c.pool_size)
            return self._client

    def _rows(self, chunk_ids: Sequence[Any]) -> list[memoryview]:
        n = len(self._flat) // self._chunk
        rows = []
        for cid in chunk_ids:
            i = int(cid)
            if not 0 <= i < n:
                raise ValueError(f"chunk id {i} outside the primary tier's {n} chunks")
            rows.append(self._flat[i * self._chunk:(i + 1) * self._chunk])
        return rows

    # -- SecondaryTierManager --------------------------------------------------------------
    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        found = self._lookups.lookup(key, req_context)
        if found is None:
            return LookupResult.RETRY
        return LookupResult.HIT if found else LookupResult.MISS

    def on_schedule_end(self, context: ScheduleEndContext) -> None:
        self._lookups.flush()

    def on_request_finished(self, req_context: ReqContext) -> None:
        self._lookups.cleanup(req_context.req_id)

    def submit_store(self, job_metadata: TransferJob) -> None:
        keys = list(job_metadata.keys)
        if len(keys) != len(job_metadata.chunk_ids):
            raise ValueError("one chunk id per key")
        self._submit(job_metadata.job_id, keys, job_metadata.chunk_ids, self._store)

    def submit_load(self, job_metadata: TransferJob) -> None:
        keys = list(job_metadata.keys)
        if len(keys) != len(job_metadata.chunk_ids):
            raise ValueError("one chunk id per key")
        self._submit(job_metadata.job_id, keys, job_metadata.chunk_ids, self._load)

    def get_finished_jobs(self) -> Iterable[JobResult]:
        out = []
        while True:
            try:
                result, missed = self._done.get_nowait()
            except queue.Empty:
                break
            if missed:
                self._lookups.mark_miss(missed)   # scheduler thread: lookup state is ours
            out.append(result)
        return out

    def has_pending_work(self) -> bool:
        with self._inflight_lock:
            return bool(self._inflight) or not self._done.empty()

    def drain_jobs(self) -> None:
        while True:
            with self._inflight_lock:
                pending = list(self._inflight)
            if not pending:
                return
            for f in pending:
                f.exception()                     # waits; the job recorded its own result

    def shutdown(self) -> None:
        self.drain_jobs()
        self._lookups.shutdown()
        self._pool.shutdown(wait=True)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- jobs (pool threads) ---------------------------------------------------------------
    def _submit(self, job_id: int, keys: list[OffloadKey], chunk_ids: Any, run: Any) -> None:
        rows = self._rows(chunk_ids)              # bad chunk ids fail the caller, not a thread

        def job() -> None:
            try:
                self._done.put(run(job_id, keys, rows))
            except Exception as exc:              # never lose a job's result
                log.warning("kvstore tier: job %d failed: %s", job_id, exc)
                self._done.put((JobResult(job_id=job_id, success=False), []))

        with self._inflight_lock:
            fut = self._pool.submit(job)
            self._inflight.add(fut)
        fut.add_done_callback(self._forget)

    def _forget(self, fut: Future[None]) -> None:
        with self._inflight_lock:
            self._inflight.discard(fut)

    def _store(self, job_id: int, keys: list[OffloadKey],
               rows: list[memoryview]) -> tuple[JobResult, list[OffloadKey]]:
        try:
            kv_keys = [self.key(k) for k in keys]
            present = self.client.exists_many(kv_keys)
            todo = [i for i, p in enumerate(present) if not p]
            if todo:
                self.client.put_many([kv_keys[i] for i in todo], [rows[i] for i in todo])
        except (KVStoreError, OSError) as exc:
            log.warning("kvstore tier: store of %d chunks failed: %s", len(keys), exc)
            return JobResult(job_id=job_id, success=False), []
        return JobResult(job_id=job_id, success=True,
                         transfer_bytes=len(todo) * self._chunk), []

    def _load(self, job_id: int, keys: list[OffloadKey],
              rows: list[memoryview]) -> tuple[JobResult, list[OffloadKey]]:
        try:
            kv_keys = [self.key(k) for k in keys]
            got: list[int | None] = self.client.get_many_into(kv_keys, rows)
        except (KVStoreError, OSError) as exc:
            log.warning("kvstore tier: load of %d chunks failed: %s", len(keys), exc)
            return JobResult(job_id=job_id, success=False), list(keys)
        ok = [k for k, n in zip(keys, got, strict=True) if n == self._chunk]
        if len(ok) == len(keys):
            return JobResult(job_id=job_id, success=True,
                             transfer_bytes=len(ok) * self._chunk), []
        okset = set(ok)
        failed = [k for k in keys if k not in okset]
        return JobResult(job_id=job_id, success=False, successful_keys=tuple(ok) or None,
                         transfer_bytes=len(ok) * self._chunk), failed

