"""The kvstore HiCache backend loaded through SGLang 0.5.23's own ``StorageBackendFactory``
(``--hicache-storage-backend dynamic``) with the real ``HiCacheStorage`` base class, against a
live bulk server on 127.0.0.1: set/exists/get round trips through host pages, the prefix count
on partial hits, wrong-length blocks refused. Runs in the SGLang venv (``make
test-integrations-sglang``); elsewhere the module is skipped unless KVSTORE_REQUIRE_SGLANG=1.

The host pool is a small class over a real CPU tensor that answers ``get_page_buffer_meta``
with the page-first and layer-first pointer layouts of SGLang's ``MHATokenToKVPoolHost``
(``sglang/srt/mem_cache/pool_host/mha.py``): SGLang's own host pools need a device KV pool and
its full model-config import tree, which do not import on CPU here."""

from __future__ import annotations

import os

import pytest

if not os.environ.get("KVSTORE_REQUIRE_SGLANG"):
    pytest.importorskip("sglang.srt.mem_cache.hicache_storage")

import torch  # noqa: E402
from kvstore_client import Client  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import (  # noqa: E402
    HiCacheStorage,
    HiCacheStorageConfig,
)
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402

from ..served import doc_json  # noqa: E402

NS = "sglang-hicache"


class HostPool:
    """K and V of ``pages`` pages of ``page_size`` tokens in one CPU tensor, addressed like
    SGLang's MHA host pool: page_first gives [K page, V page] per page (each all layers),
    layer_first gives K and V of each layer per page."""

    def __init__(self, pages: int, layout: str, page_size: int = 4, layers: int = 3,
                 heads: int = 2, head_dim: int = 8, dtype: torch.dtype = torch.bfloat16) -> None:
        self.page_size, self.layout, self.dtype = page_size, layout, dtype
        self.layer_num, self.head_num, self.head_dim = layers, heads, head_dim
        self.size = pages * page_size
        if layout == "page_first":  # (2, tokens, layers, heads, dim)
            shape = (2, self.size, layers, heads, head_dim)
        else:  # layer_first: (2, layers, tokens, heads, dim)
            shape = (2, layers, self.size, heads, head_dim)
        self.kv_buffer = torch.zeros(shape, dtype=dtype)

    def get_page_buffer_meta(self, indices: torch.Tensor) -> tuple[list[int], list[int]]:
        assert len(indices) % self.page_size == 0
        item = self.dtype.itemsize
        base, tok = self.kv_buffer.data_ptr(), self.head_num * self.head_dim * item
        v_off = self.kv_buffer[1].data_ptr() - base
        ptrs: list[int] = []
        idx = indices.tolist()
        if self.layout == "page_first":
            for i in range(0, len(idx), self.page_size):
                k = base + idx[i] * self.layer_num * tok
                ptrs += [k, k + v_off]
            size = self.layer_num * self.page_size * tok
        else:
            for i in range(0, len(idx), self.page_size):
                for layer in range(self.layer_num):
                    k = base + idx[i] * tok + layer * self.size * tok
                    ptrs += [k, k + v_off]
            size = self.page_size * tok
        return ptrs, [size] * len(ptrs)

    def page(self, p: int) -> torch.Tensor:
        """The bytes of page ``p`` (K then V), for comparisons."""
        s = slice(p * self.page_size, (p + 1) * self.page_size)
        if self.layout == "page_first":
            return torch.stack([self.kv_buffer[0, s], self.kv_buffer[1, s]]).clone()
        return torch.stack([self.kv_buffer[0, :, s], self.kv_buffer[1, :, s]]).clone()

    def indices(self, pages: list[int]) -> torch.Tensor:
        return torch.tensor([p * self.page_size + t for p in pages
                             for t in range(self.page_size)], dtype=torch.int64)


def _config(port: int, *, tp_rank: int = 0, model: str = "Qwen/Qwen3-0.6B",
            **extra: object) -> HiCacheStorageConfig:
    return HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=2, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=True, is_page_first_layout=True,
        model_name=model,
        extra_config={**doc_json("sglang-dynamic", port=port, namespace=NS,
                                 access_key="dev", secret_key=""), **extra})


def _backend(port: int, pool: HostPool, **kw: object) -> HiCacheStorage:
    b = StorageBackendFactory.create_backend("dynamic", _config(port, **kw), pool)
    assert isinstance(b, HiCacheStorage) and type(b).__name__ == "KVStoreHiCacheStorage"
    b.register_mem_pool_host(pool)
    return b


@pytest.mark.parametrize("layout", ["page_first", "layer_first"])
def test_set_exists_get_round_trip_through_host_pages(bulk, layout: str) -> None:
    src = HostPool(8, layout)
    src.kv_buffer.copy_(torch.randn(src.kv_buffer.shape).to(src.dtype))
    b = _backend(bulk.port, src)
    keys = [f"{i:064x}" for i in range(1, 7)]
    assert b.batch_exists(keys) == 0
    assert b.batch_set_v1(keys[:4], src.indices([0, 1, 2, 3])) == [True] * 4
    # the prefix count: 4 stored from the start, whatever follows
    assert b.batch_exists(keys) == 4
    assert b.batch_exists(keys[:2]) == 2
    assert b.batch_exists([keys[4]] + keys[:4]) == 0
    saved = [src.page(p) for p in range(4)]
    src.kv_buffer.zero_()  # the host pool forgot them (evicted from host memory)
    # loaded into other host pages of the same pool, in another order
    assert b.batch_get_v1(keys[:5], src.indices([7, 6, 5, 4, 3])) == [True] * 4 + [False]
    for s, d in zip([0, 1, 2, 3], [7, 6, 5, 4], strict=True):
        assert torch.equal(saved[s].view(torch.int16), src.page(d).view(torch.int16))
    assert torch.count_nonzero(src.page(3).view(torch.int16)) == 0  # the miss wrote nothing
    stats = b.get_stats()  # SGLang's StorageMetrics, or None where it does not import here
    assert stats is None or (stats.backup_pgs == [4] and stats.prefetch_pgs == [4])
    assert b.totals() == {"pages_stored": 4, "pages_loaded": 4, "pages_missed": 1,
                          "lookups": 4}


def test_partial_page_and_wrong_length_blocks_are_misses(bulk) -> None:
    pool = HostPool(4, "page_first")
    pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape).to(pool.dtype))
    b = _backend(bulk.port, pool)
    keys = [f"{i:064x}" for i in range(10, 14)]
    assert b.batch_set_v1(keys, pool.indices([0, 1, 2, 3])) == [True] * 4
    scope = b.key_scope
    with Client(port=bulk.port, namespace=NS) as plain:
        # page 1 loses its V block: the page is gone, and the prefix stops before it
        assert plain.delete_many([f"{scope}{keys[1]}.1"]) == 1
        # page 2's K block replaced by one of another length (a layout change)
        assert plain.put(f"{scope}{keys[2]}.0", os.urandom(100), overwrite=True)
    assert b.batch_exists(keys) == 1
    page3 = pool.page(3)
    pool.kv_buffer.zero_()
    assert b.batch_get_v1(keys, pool.indices([0, 1, 2, 3])) == [True, False, False, True]
    assert torch.equal(page3.view(torch.int16), pool.page(3).view(torch.int16))


def test_keys_bind_model_rank_dtype_and_layout(bulk) -> None:
    pool = HostPool(2, "page_first")
    pool.kv_buffer.fill_(1)
    b0 = _backend(bulk.port, pool)
    keys = [f"{i:064x}" for i in range(20, 22)]
    assert b0.batch_set_v1(keys, pool.indices([0, 1])) == [True, True]
    assert b0.key_scope == "Qwen--Qwen3-0.6B/tp0of2/bfloat16.page_first/"
    other_rank = _backend(bulk.port, pool, tp_rank=1)
    other_model = _backend(bulk.port, pool, model="meta-llama/Llama-3.2-1B")
    other_layout = _backend(bulk.port, HostPool(2, "layer_first"))
    other_dtype = _backend(bulk.port, HostPool(2, "page_first", dtype=torch.float16))
    prefixed = _backend(bulk.port, pool, prefix="tenant-a")
    for b in (other_rank, other_model, other_layout, other_dtype, prefixed):
        assert b.batch_exists(keys) == 0
    assert _backend(bulk.port, pool).batch_exists(keys) == 2  # a restart finds them


def test_keys_are_scoped_by_the_tenant_salt(make_bulk) -> None:
    """With credentials every key sits under the tenant's salt scope: two tenants' identical
    pages never share a key, two that share a ``key_salt`` do (each in its own namespace)."""
    from kvstore_connectors.keys import salt_scope

    from kvstore.auth import Tenants

    tenants = {"tenants": [
        {"name": n, "access_key": f"AKID{n.upper()}", "secret_key": f"{n}-secret",
         "namespaces": [f"{n}-*"], **({"key_salt": "pooled"} if n != "acme" else {})}
        for n in ("acme", "globex", "initech")]}
    srv = make_bulk(Tenants.from_dict(tenants))
    pool = HostPool(1, "page_first")
    pool.kv_buffer.fill_(3)
    key = f"{30:064x}"
    scopes = {}
    for t in tenants["tenants"]:
        b = _backend(srv.port, pool, namespace=f"{t['name']}-sgl", access_key=t["access_key"],
                     secret_key=t["secret_key"])
        assert b.batch_set_v1([key], pool.indices([0])) == [True]
        token = b.client.key_salt()
        assert token and b.key_scope.startswith(salt_scope(token))
        with Client(port=srv.port, namespace=f"{t['name']}-sgl", access_key=t["access_key"],
                    secret_key=t["secret_key"]) as c:
            assert c.exists_many([f"{b.key_scope}{key}.0", f"{b.key_scope}{key}.1"]) == [True] * 2
        scopes[t["name"]] = b.key_scope
    assert scopes["globex"] == scopes["initech"] != scopes["acme"]


def test_legacy_interface_round_trip(bulk) -> None:
    pool = HostPool(2, "page_first")
    cfg = _config(bulk.port, interface_v1=0)
    b = StorageBackendFactory.create_backend("dynamic", cfg, pool)
    b.register_mem_pool_host(pool)
    pages = [torch.randn(96).to(torch.bfloat16) for _ in range(3)]
    keys = ["aa", "bb", "cc"]
    assert b.batch_set(keys[:2], pages[:2])
    assert b.set(keys[2], pages[2])
    assert b.exists("bb") and not b.exists("dd")
    assert b.batch_exists(keys + ["dd"]) == 3
    outs = [torch.empty(96, dtype=torch.bfloat16) for _ in range(4)]
    got = b.batch_get(keys + ["dd"], outs)
    assert got[3] is None
    for g, p in zip(got[:3], pages, strict=True):
        assert g is not None and torch.equal(g.view(torch.int16), p.view(torch.int16))
    raw = b.get("aa")
    assert raw is not None and bytes(raw.numpy()) == bytes(pages[0].view(torch.uint8).numpy())


def test_bad_extra_config_is_refused(bulk) -> None:
    with pytest.raises(ValueError, match="unknown kvstore extra_config"):
        StorageBackendFactory.create_backend("dynamic", _config(bulk.port, hots="typo"), None)
