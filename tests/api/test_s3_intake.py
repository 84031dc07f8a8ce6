"""kvstore.api.s3.intake: PUT bodies copied and hashed while they arrive. The digests and the
bytes equal those of the whole body whatever the pieces, a body longer than declared is
refused, and a client that goes away mid-body leaves every other object's bytes intact (the
buffer a worker may still write into is not reused before it is done)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kvstore.api.s3 import md5lanes
from kvstore.api.s3.intake import Intake
from tests.api.conftest import LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "intake-b"


# the server's MD5 (SIMD lanes where this CPU has them) and hashlib's
MD5S = [md5lanes.factory()[0], hashlib.md5]


@pytest.mark.parametrize("md5", MD5S, ids=["server", "hashlib"])
@pytest.mark.parametrize("seed", range(5))
def test_digests_and_bytes_match_the_whole_body(seed: int, md5: Any) -> None:
    rng = random.Random(seed)
    body = rng.randbytes(rng.randrange(1, 3 << 20))
    out = bytearray(len(body))

    async def run() -> dict[str, str]:
        with ThreadPoolExecutor(2) as pool:
            intake = Intake(pool, memoryview(out), md5=md5, sha256=seed % 2 == 0,
                            batch_bytes=rng.choice([1, 4096, 512 << 10]))
            pos = 0
            while pos < len(body):
                n = rng.randrange(1, 300_000)
                await intake.add(body[pos : pos + n])
                pos += n
            return await intake.finish()

    got = asyncio.run(run())
    assert bytes(out) == body
    assert got["md5"] == hashlib.md5(body).hexdigest()
    if seed % 2 == 0:
        assert got["sha256"] == hashlib.sha256(body).hexdigest()
    else:
        assert "sha256" not in got


def test_more_than_declared_is_refused() -> None:
    async def run() -> None:
        with ThreadPoolExecutor(1) as pool:
            intake = Intake(pool, memoryview(bytearray(10)), md5=hashlib.md5, sha256=False,
                            batch_bytes=4)
            await intake.add(b"12345678")
            await intake.add(b"abcdefgh")

    with pytest.raises(ValueError):
        asyncio.run(run())


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server()


@pytest.fixture(scope="module")
def s3(srv: LiveServer) -> Iterator[Any]:
    c = boto_client(srv.url)
    c.create_bucket(Bucket=BUCKET)
    yield c


def _half_put(port: int, key: str, size: int, sent: int) -> None:
    """A PUT that declares ``size`` bytes, sends ``sent`` of them, and goes away."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"PUT /{BUCKET}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Content-Length: {size}\r\n\r\n".encode() + b"x" * sent)


def test_abandoned_bodies_never_touch_stored_objects(srv: LiveServer, s3: Any) -> None:
    rng = random.Random(7)
    stored = {}
    for i in range(12):
        _half_put(srv.port, f"gone-{i}", 2 << 20, rng.randrange(600_000, 2 << 20))
        body = rng.randbytes(2 << 20)
        r = s3.put_object(Bucket=BUCKET, Key=f"kept-{i}", Body=body)
        assert r["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        stored[f"kept-{i}"] = body
    for key, body in stored.items():
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert not [k for k in keys if k.startswith("gone-")]
