"""SGLang HiCache L3 backend: kvstore behind ``--hicache-storage-backend dynamic``.

::

    --hicache-storage-backend dynamic --hicache-storage-backend-extra-config '{
        "backend_name": "kvstore", "module_path": "kvstore_connectors.sglang",
        "class_name": "KVStoreHiCacheStorage", "interface_v1": 1,
        "host": "127.0.0.1", "port": 8701, "namespace": "sglang"}'

SGLang's ``StorageBackendFactory`` (``sglang/srt/mem_cache/storage/backend_factory.py``,
0.5.23) imports the class, checks ``issubclass(cls, HiCacheStorage)`` and builds it as
``cls(storage_config, kwargs)``; the cache controller then calls ``register_mem_pool_host``.

- ``batch_exists(keys)``: how many pages from the start are stored, in one ``lookup`` round
  trip (the bulk port's longest-present-prefix call), optionally with a lease so the found
  blocks cannot be evicted before the prefetch reads them (``lease_s``).
- ``batch_get_v1`` / ``batch_set_v1`` (with ``"interface_v1": 1``): zero copy between the host
  pool's page buffers (``mem_pool_host.get_page_buffer_meta``) and the socket. Each buffer of a
  page (K and V for the page-first MHA layouts; one per layer and K/V for layer-first; one for
  MLA) is its own block ``<page key>.<i>``, so no page is ever assembled in a bounce buffer; a
  page is present when all of its blocks are, and loaded only when every block has exactly the
  buffer's length (never partial bytes).
- The legacy ``get``/``set``/``batch_*``/``exists`` (flat page tensors) store one block per page
  under ``<page key>``; SGLang uses them when ``interface_v1`` is off.

Keys: SGLang's page key (a hash chain of the tokens) under a scope that binds the tenant and
what makes KV bytes incompatible: ``[s-<hex>/][prefix/]model/dtype.layout.tp<r>of<n>[.pp..]
[.cp..][.dcp..]/`` (the TP part is left out for MLA, whose ranks hold the same KV). ``s-<hex>/``
is the tenant's salt scope (``kvstore_connectors.keys.salt_scope`` of the token the server
names at AUTH; none in development mode), so two tenants' identical prefixes never share a key
unless both opted into one ``key_salt``. dtype and layout come from the host pool when it
registers.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from kvstore_client import Client
from kvstore_wire.errors import KVStoreError
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig

from kvstore_connectors.keys import salt_scope

__all__ = ["KVStoreHiCacheStorage"]

log = logging.getLogger(__name__)

# Bounds of this backend (its own). A lookup chain is cut into calls of at most this many keys
# (the bulk port's chain_keys_max is 8192).
lookup_keys_max = 4096
# Pages per get/set call handed to the SDK at once (it pipelines batches itself).
io_pages_max = 512
stats_entries_max = 4096  # per-call samples kept between two get_stats() calls
_CONFIG_KEYS = ("host", "port", "namespace", "access_key", "secret_key", "prefix", "timeout_s",
                "pool_size", "lease_s")


@functools.lru_cache(maxsize=256)
def _ubyte_array(n: int) -> type[ctypes.Array[ctypes.c_ubyte]]:
    return ctypes.c_ubyte * n  # one ctypes type per size (ctypes never frees them)


def _view(address: int, nbytes: int) -> memoryview:
    """A writable byte view of ``nbytes`` of host memory at ``address`` (no copy)."""
    return memoryview(_ubyte_array(nbytes).from_address(address)).cast("B")


def _tensor_view(t: torch.Tensor) -> memoryview:
    if not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError("page tensor must be a contiguous CPU tensor")
    return _view(t.data_ptr(), t.numel() * t.element_size())


class KVStoreHiCacheStorage(HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: dict[str, Any] | None = None
                 ) -> None:
        extra = dict(storage_config.extra_config or {})
        unknown = sorted(k for k in extra if k not in _CONFIG_KEYS and k not in
                         ("backend_name", "module_path", "class_name", "interface_v1"))
        if unknown:
            raise ValueError(f"unknown kvstore extra_config keys: {unknown}")
        self.storage_config = storage_config
        self.interface_v1 = bool(extra.get("interface_v1", 0))
        self.lease_s = float(extra.get("lease_s", 0.0))
        self._parts = 1  # blocks per page in the v1 layout, known once the pool registers
        self.client = Client(str(extra.get("host", "127.0.0.1")), int(extra.get("port", 8701)),
                             namespace=str(extra.get("namespace", "sglang")),
                             access_key=str(extra.get("access_key", "dev")),
                             secret_key=str(extra.get("secret_key", "")), create=True,
                             timeout=float(extra.get("timeout_s", 30.0)),
                             pool_size=int(extra.get("pool_size", 4)))
        self.client.ping()  # fail at start-up, not on the first prefetch
        # the tenant's salt scope (asked on the connection the ping opened) before the rest
        self._scope_base = salt_scope(self.client.key_salt()) + self._scope(
            storage_config, str(extra.get("prefix", "")))
        self.key_scope = self._scope_base + "/"
        self._lock = threading.Lock()
        self._metrics: dict[str, list[float]] = {"prefetch_pgs": [], "backup_pgs": [],
                                                 "prefetch_bandwidth": [], "backup_bandwidth": []}
        self._totals = {"pages_stored": 0, "pages_loaded": 0, "pages_missed": 0, "lookups": 0}

    # -- identity ----------------------------------------------------------------------------
    @staticmethod
    def _scope(cfg: HiCacheStorageConfig, prefix: str) -> str:
        parts = [prefix.strip("/")] if prefix.strip("/") else []
        parts.append((cfg.model_name or "model").replace("/", "--"))
        shard = [] if cfg.is_mla_model else [f"tp{cfg.tp_rank}of{cfg.tp_size}"]
        if cfg.pp_size > 1:
            shard.append(f"pp{cfg.pp_rank}of{cfg.pp_size}")
        if cfg.attn_cp_size > 1:
            shard.append(f"cp{cfg.attn_cp_rank}of{cfg.attn_cp_size}")
        if cfg.dcp_size > 1:
            shard.append(f"dcp{cfg.dcp_rank}of{cfg.dcp_size}")
        return "/".join(parts) + ("/" + ".".join(shard) if shard else "")

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        super().register_mem_pool_host(mem_pool_host)
        dtype = str(getattr(mem_pool_host, "dtype", "")).removeprefix("torch.")
        layout = str(getattr(mem_pool_host, "layout", ""))
        self.key_scope = f"{self._scope_base}/{dtype}.{layout}/"
        page = int(mem_pool_host.page_size)
        meta = mem_pool_host.get_page_buffer_meta(torch.arange(page, dtype=torch.int64))
        self._parts = max(1, len(meta[0])) if meta else 1

    def _key(self, key: str) -> str:
        return self.key_scope + key

    def _part_keys(self, keys: Sequence[str]) -> list[str]:
        return [f"{self.key_scope}{k}.{i}" for k in keys for i in range(self._parts)]

    # -- lookups -----------------------------------------------------------------------------
    def batch_exists(self, keys: list[str], extra_info: Any = None) -> int:
        """Pages stored from the start of ``keys`` (each of their blocks), in one lookup."""
        if not keys:
            return 0
        chain = self._part_keys(keys) if self.interface_v1 else [self._key(k) for k in keys]
        found = 0
        try:
            for start in range(0, len(chain), lookup_keys_max):
                part = chain[start:start + lookup_keys_max]
                n = self.client.lookup(part, lease_seconds=self.lease_s)
                found += n
                if n < len(part):
                    break
        except (KVStoreError, OSError) as exc:
            log.warning("kvstore lookup failed: %s", exc)
            return 0
        with self._lock:
            self._totals["lookups"] += 1
        return found // self._parts if self.interface_v1 else found

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    # -- zero-copy page I/O ------------------------------------------------------------------
    def _page_views(self, host_indices: torch.Tensor, pages: int) -> list[memoryview]:
        addresses, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        if isinstance(sizes, int):
            sizes = [sizes] * len(addresses)
        if len(addresses) != pages * self._parts:
            raise ValueError(f"{len(addresses)} page buffers for {pages} pages of "
                             f"{self._parts} buffers")
        return [_view(int(a), int(n)) for a, n in zip(addresses, sizes, strict=True)]

    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor,
                     extra_info: Any = None) -> list[bool]:
        t0 = time.perf_counter()
        try:
            views = self._page_views(host_indices, len(keys))
        except ValueError as exc:
            log.error("kvstore batch_get_v1: %s", exc)
            return [False] * len(keys)
        ok = self._get_blocks(self._part_keys(keys), views)
        out = [all(ok[i * self._parts:(i + 1) * self._parts]) for i in range(len(keys))]
        self._record("prefetch", out, views, t0)
        return out

    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor,
                     extra_info: Any = None) -> list[bool]:
        t0 = time.perf_counter()
        try:
            views = self._page_views(host_indices, len(keys))
        except ValueError as exc:
            log.error("kvstore batch_set_v1: %s", exc)
            return [False] * len(keys)
        out = self._put_blocks(self._part_keys(keys), views, len(keys))
        self._record("backup", out, views, t0)
        return out

    def _get_blocks(self, keys: list[str], views: list[memoryview]) -> list[bool]:
        ok: list[bool] = []
        step = io_pages_max * self._parts
        for s in range(0, len(keys), step):
            ks, vs = keys[s:s + step], views[s:s + step]
            try:
                got = self.client.get_many_into(ks, vs)
            except KVStoreError:  # e.g. one block longer than its buffer: key by key
                got = []
                for k, v in zip(ks, vs, strict=True):
                    try:
                        got.append(self.client.get_into(k, v))
                    except KVStoreError:
                        got.append(None)
            except OSError as exc:
                log.warning("kvstore get failed: %s", exc)
                got = [None] * len(ks)
            ok += [n is not None and n == v.nbytes for n, v in zip(got, vs, strict=True)]
        return ok

    def _put_blocks(self, keys: list[str], views: list[memoryview], pages: int) -> list[bool]:
        step = io_pages_max * self._parts
        out: list[bool] = []
        for s in range(0, len(keys), step):
            try:
                self.client.put_many(keys[s:s + step], views[s:s + step])
                ok = True
            except (KVStoreError, OSError) as exc:
                log.warning("kvstore set failed: %s", exc)
                ok = False
            out += [ok] * (len(keys[s:s + step]) // self._parts)
        return out[:pages]

    # -- legacy interface (flat page tensors) ------------------------------------------------
    def get(self, key: str, target_location: Any = None, target_sizes: Any = None
            ) -> torch.Tensor | None:
        return self.batch_get([key], [target_location] if target_location is not None
                              else None)[0]

    def batch_get(self, keys: list[str], target_locations: Any = None, target_sizes: Any = None
                  ) -> list[torch.Tensor | None]:
        full = [self._key(k) for k in keys]
        if target_locations is None:
            try:
                blobs = self.client.get_many(full)
            except (KVStoreError, OSError) as exc:
                log.warning("kvstore get failed: %s", exc)
                return [None] * len(keys)
            return [None if b is None else torch.frombuffer(bytearray(b), dtype=torch.uint8)
                    for b in blobs]
        views = [_tensor_view(t) for t in target_locations]
        ok = self._get_blocks(full, views)
        return [t if good else None for t, good in zip(target_locations, ok, strict=True)]

    def set(self, key: str, value: Any = None, target_location: Any = None,
            target_sizes: Any = None) -> bool:
        page = value if value is not None else target_location
        return self.batch_set([key], [page])

    def batch_set(self, keys: list[str], values: Any = None, target_locations: Any = None,
                  target_sizes: Any = None) -> bool:
        pages = values if values is not None else target_locations
        views = [_tensor_view(t.contiguous()) for t in pages]
        return all(self._put_blocks([self._key(k) for k in keys], views, len(keys)))

    # -- stats -------------------------------------------------------------------------------
    def _record(self, kind: str, ok: list[bool], views: list[memoryview], t0: float) -> None:
        dt = max(time.perf_counter() - t0, 1e-9)
        done = sum(ok)
        nbytes = sum(v.nbytes for v in views) * done // max(1, len(ok))
        with self._lock:
            if len(self._metrics[f"{kind}_pgs"]) < stats_entries_max:
                self._metrics[f"{kind}_pgs"].append(done)
                self._metrics[f"{kind}_bandwidth"].append(nbytes / dt / 1e9)  # GB/s
            if kind == "prefetch":
                self._totals["pages_loaded"] += done
                self._totals["pages_missed"] += len(ok) - done
            else:
                self._totals["pages_stored"] += done

    def totals(self) -> dict[str, int]:
        """Counters since start: pages stored, loaded, missed on load; lookups."""
        with self._lock:
            return dict(self._totals)

    def get_stats(self) -> Any:
        """SGLang's ``StorageMetrics`` for the calls since the last one (pages per prefetch and
        backup, their GB/s), or None where SGLang's metrics module cannot be imported."""
        with self._lock:
            taken = {k: list(v) for k, v in self._metrics.items()}
            for v in self._metrics.values():
                v.clear()
        try:
            from sglang.srt.observability.metrics_collector import StorageMetrics
        except Exception as exc:  # SGLang's metrics module drags in its whole config tree
            log.debug("StorageMetrics unavailable: %s", exc)
            return None
        m = StorageMetrics()
        m.prefetch_pgs.extend(int(x) for x in taken["prefetch_pgs"])
        m.backup_pgs.extend(int(x) for x in taken["backup_pgs"])
        m.prefetch_bandwidth.extend(taken["prefetch_bandwidth"])
        m.backup_bandwidth.extend(taken["backup_bandwidth"])
        return m

    def clear(self) -> None:
        """SGLang calls this on a cache flush: kvstore blocks are shared and write-once, so
        nothing is deleted (evictions reclaim them); only the local counters reset."""
        with self._lock:
            for v in self._metrics.values():
                v.clear()

    def close(self) -> None:
        self.client.close()
