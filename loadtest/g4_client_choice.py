"""Which object-store client and which object size for G4 (issue 13): a quick measurement
against a real SeaweedFS on 127.0.0.1 (``kvstore.testing_s3``).

1. client: ``obstore`` (Rust object_store, sync and asyncio) vs ``aiobotocore`` (asyncio):
   PUT of 16 MiB objects and ranged GETs of 256 KiB blocks (GB/s, p50/p99);
2. packing: the same 64 MiB spilled as one object per 256 KiB block, as 16 MiB objects, or as
   one 64 MiB object (upload GB/s).

    python loadtest/g4_client_choice.py [--out loadtest/results/g4_client_choice.json]

aiobotocore is not a dependency (it pins an older botocore than boto3's): install it apart,
``pip install --target /tmp/aiob aiobotocore`` and pass ``--aiobotocore-path /tmp/aiob``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kvstore.testing_s3 import SeaweedS3

MiB = 1 << 20
BLOCK = 256 * 1024
OBJ = 16 * MiB
N_OBJ = 8
N_GET = 400
CONC = 8


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3


def obstore_store(s3: SeaweedS3) -> Any:
    from obstore.store import S3Store

    return S3Store(s3.bucket, endpoint=s3.endpoint, region=s3.region,
                   access_key_id=s3.access_key, secret_access_key=s3.secret_key,
                   virtual_hosted_style_request=False, client_options={"allow_http": True})


def bench_obstore(s3: SeaweedS3, data: bytes) -> dict[str, float]:
    import obstore

    store = obstore_store(s3)
    t = time.perf_counter()
    with ThreadPoolExecutor(CONC) as ex:
        list(ex.map(lambda i: obstore.put(store, f"ob/{i}", data), range(N_OBJ)))
    put_s = time.perf_counter() - t
    lat: list[float] = []

    def one(_i: int) -> None:
        o = random.randrange(N_OBJ)
        off = random.randrange(OBJ // BLOCK) * BLOCK
        t0 = time.perf_counter()
        b = obstore.get_range(store, f"ob/{o}", start=off, end=off + BLOCK)
        lat.append(time.perf_counter() - t0)
        assert len(b) == BLOCK

    t = time.perf_counter()
    with ThreadPoolExecutor(CONC) as ex:
        list(ex.map(one, range(N_GET)))
    get_s = time.perf_counter() - t
    return {"put_GBps": N_OBJ * OBJ / put_s / 1e9, "get_GBps": N_GET * BLOCK / get_s / 1e9,
            "get_p50_ms": pct(lat, 0.5), "get_p99_ms": pct(lat, 0.99)}


def bench_aiobotocore(s3: SeaweedS3, data: bytes) -> dict[str, float]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    async def run() -> dict[str, float]:
        session = get_session()
        async with session.create_client(
                "s3", endpoint_url=s3.endpoint, region_name=s3.region,
                aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
                config=AioConfig(s3={"addressing_style": "path"},
                                 max_pool_connections=CONC)) as c:
            sem = asyncio.Semaphore(CONC)

            async def put(i: int) -> None:
                async with sem:
                    await c.put_object(Bucket=s3.bucket, Key=f"ab/{i}", Body=data)

            t = time.perf_counter()
            await asyncio.gather(*(put(i) for i in range(N_OBJ)))
            put_s = time.perf_counter() - t
            lat: list[float] = []

            async def get(_i: int) -> None:
                async with sem:
                    o = random.randrange(N_OBJ)
                    off = random.randrange(OBJ // BLOCK) * BLOCK
                    t0 = time.perf_counter()
                    r = await c.get_object(Bucket=s3.bucket, Key=f"ab/{o}",
                                           Range=f"bytes={off}-{off + BLOCK - 1}")
                    b = await r["Body"].read()
                    lat.append(time.perf_counter() - t0)
                    assert len(b) == BLOCK

            t = time.perf_counter()
            await asyncio.gather(*(get(i) for i in range(N_GET)))
            get_s = time.perf_counter() - t
        return {"put_GBps": N_OBJ * OBJ / put_s / 1e9, "get_GBps": N_GET * BLOCK / get_s / 1e9,
                "get_p50_ms": pct(lat, 0.5), "get_p99_ms": pct(lat, 0.99)}

    return asyncio.run(run())


def bench_packing(s3: SeaweedS3) -> dict[str, float]:
    import obstore

    store = obstore_store(s3)
    total = 64 * MiB
    out = {}
    for size in (BLOCK, 16 * MiB, 64 * MiB):
        blob = os.urandom(size)
        t = time.perf_counter()
        with ThreadPoolExecutor(CONC) as ex:
            list(ex.map(lambda i, s=size, b=blob: obstore.put(store, f"pk/{s}/{i}", b),
                        range(total // size)))
        out[f"upload_GBps_objects_of_{size // 1024}KiB"] = total / (time.perf_counter() - t) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--aiobotocore-path", default="")
    args = ap.parse_args()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    data = os.urandom(OBJ)
    res: dict[str, Any] = {}
    with SeaweedS3() as s3:
        res["obstore"] = bench_obstore(s3, data)
        if args.aiobotocore_path:
            sys.path.insert(0, args.aiobotocore_path)
            res["aiobotocore"] = bench_aiobotocore(s3, data)
        res["packing"] = bench_packing(s3)
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
