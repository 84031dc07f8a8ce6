"""Ranged GetObject reads only the chunks covering the range from flash (boto3 ``Range`` against a
live loopback server, DRAM tier off), returns exactly those bytes, and refuses a range over a
corrupt chunk (the object is gone afterwards) while ranges over intact chunks are served."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.segments import segment_path
from tests.api.conftest import LiveServer, boto_client
from tests.engine.conftest import CountingDevice, pattern

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "ranges-b"
M = limits.MiB
CHUNK = limits.record_chunk_bytes
PAGE = fmt.PAGE
SIZE = 60 * M


def _setup(live_server: Callable[..., LiveServer]) -> tuple[LiveServer, CountingDevice, Any, bytes]:
    srv = live_server(dram_bytes=0)  # every GET reads flash
    eng = srv.state.engine
    dev = CountingDevice(eng.device)  # the real POSIX device, its reads counted
    eng.device = dev
    s3 = boto_client(srv.url)
    s3.create_bucket(Bucket=BUCKET)
    data = pattern(3, SIZE)
    s3.put_object(Bucket=BUCKET, Key="big", Body=data)
    return srv, dev, s3, data


def _get(s3: Any, dev: CountingDevice, rng: str) -> tuple[bytes, str, int]:
    before = dev.bytes_read
    g = s3.get_object(Bucket=BUCKET, Key="big", Range=rng)
    body = g["Body"].read()
    assert g["ResponseMetadata"]["HTTPStatusCode"] == 206
    return body, g["ContentRange"], dev.bytes_read - before


RANGES = [  # (Range header, first byte, end, chunks it touches)
    ("bytes=0-99", 0, 100, 1),
    ("bytes=-100", SIZE - 100, SIZE, 1),
    (f"bytes={30 * M + 7}-{30 * M + 106}", 30 * M + 7, 30 * M + 107, 1),
    (f"bytes={CHUNK - 50}-{CHUNK + 49}", CHUNK - 50, CHUNK + 50, 2),  # across a chunk boundary
    (f"bytes={SIZE - 10}-", SIZE - 10, SIZE, 1),
    (f"bytes={SIZE - 10}-{SIZE + 500}", SIZE - 10, SIZE, 1),
]


def test_a_ranged_get_reads_only_its_chunks(live_server: Callable[..., LiveServer]) -> None:
    srv, dev, s3, data = _setup(live_server)
    for rng, lo, hi, chunks in RANGES:
        body, content_range, read = _get(s3, dev, rng)
        assert body == data[lo:hi], rng
        assert content_range == f"bytes {lo}-{hi - 1}/{SIZE}"
        assert read <= chunks * CHUNK + PAGE, f"{rng} read {read} bytes from flash"
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=BUCKET, Key="big", Range=f"bytes={SIZE}-")
    assert ei.value.response["Error"]["Code"] == "InvalidRange"
    assert srv.state.engine.stats()["flash_bytes_read"] == dev.bytes_read


def test_a_range_over_a_corrupt_chunk_is_refused(live_server: Callable[..., LiveServer]) -> None:
    srv, dev, s3, data = _setup(live_server)
    eng = srv.state.engine
    e = eng.index.get(fmt.digest_of(BUCKET.encode(), b"big"))
    assert e is not None
    fd = os.open(segment_path(eng.config.data_dir, e.seg), os.O_RDWR)
    try:  # flip one payload byte of chunk 7 on disk
        at = e.page * PAGE + PAGE + 7 * CHUNK + 4321
        os.pwrite(fd, bytes([os.pread(fd, 1, at)[0] ^ 0x08]), at)
    finally:
        os.close(fd)
    body, _cr, _n = _get(s3, dev, f"bytes={CHUNK}-{CHUNK + 99}")  # an intact chunk: served
    assert body == data[CHUNK : CHUNK + 100]
    with pytest.raises(ClientError) as ei:  # the corrupt chunk: refused, never other bytes
        s3.get_object(Bucket=BUCKET, Key="big", Range=f"bytes={7 * CHUNK}-{7 * CHUNK + 99}")
    assert ei.value.response["Error"]["Code"] == "NoSuchKey"
    assert eng.stats()["checksum_failures"] == 1
    with pytest.raises(ClientError) as ei:  # the block is corrupt: it is gone
        s3.get_object(Bucket=BUCKET, Key="big", Range="bytes=0-99")
    assert ei.value.response["Error"]["Code"] == "NoSuchKey"
