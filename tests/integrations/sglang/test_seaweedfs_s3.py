"""SGLang's built-in ``seaweedfs`` HiCache backend (plain boto3, path-style) against kvstore's
S3 API with no kvstore code in between: a real ``kvstore serve`` process with a tenants file
(SigV4 checked), the backend built by SGLang's own factory, pages set, found by prefix and read
back through the zero-copy and the legacy interfaces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if not os.environ.get("KVSTORE_REQUIRE_SGLANG"):
    pytest.importorskip("sglang.srt.mem_cache.storage.seaweedfs.seaweedfs_store")

import torch  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig  # noqa: E402
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402

from ..served import ACCESS_KEY, REGION, SECRET_KEY, s3_client, served  # noqa: E402
from .test_hicache_backend import HostPool  # noqa: E402

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
pytestmark = pytest.mark.timeout(120)


def test_seaweedfs_backend_round_trips_pages_through_kvstore_s3(tmp_path: Path) -> None:
    with served(tmp_path) as srv:
        cfg = HiCacheStorageConfig(
            tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
            is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
            model_name="Qwen/Qwen3-0.6B",
            extra_config={"endpoint": srv.endpoint, "bucket": "sglang-hicache",
                          "region": REGION, "access_key": ACCESS_KEY,
                          "secret_key": SECRET_KEY, "max_workers": 4})
        pool = HostPool(6, "page_first")
        pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape).to(pool.dtype))
        b = StorageBackendFactory.create_backend("seaweedfs", cfg, pool)
        b.register_mem_pool_host(pool)
        keys = [f"{i:064x}" for i in range(1, 6)]
        assert b.batch_exists(keys) == 0  # the bucket was created by the backend itself
        assert b.batch_set_v1(keys[:3], pool.indices([0, 1, 2])) == [True] * 3
        assert b.batch_exists(keys) == 3
        saved = [pool.page(p) for p in range(3)]
        pool.kv_buffer.zero_()
        assert b.batch_get_v1(keys[:4], pool.indices([5, 4, 3, 0])) == [True] * 3 + [False]
        for s, d in zip([0, 1, 2], [5, 4, 3], strict=True):
            assert torch.equal(saved[s].view(torch.int16), pool.page(d).view(torch.int16))
        flat = torch.randn(384).to(torch.bfloat16)  # legacy flat page interface
        assert b.set("legacy-page", flat)
        out = torch.empty(384, dtype=torch.bfloat16)
        got = b.get("legacy-page", out)
        assert got is not None and torch.equal(got.view(torch.int16), flat.view(torch.int16))
        s3 = s3_client(srv.endpoint)
        listed = s3.list_objects_v2(Bucket="sglang-hicache")  # type: ignore[attr-defined]
        names = sorted(o["Key"] for o in listed.get("Contents", []))
        assert names == sorted([f"Qwen-Qwen3-0.6B/tp0of1/{k}" for k in keys[:3]]
                               + ["Qwen-Qwen3-0.6B/tp0of1/legacy-page"])
