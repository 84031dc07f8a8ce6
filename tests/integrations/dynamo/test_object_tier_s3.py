"""The S3 calls Dynamo's KVBM object tier (G4, ``DYN_KVBM_OBJECT_*``) makes, against a real
``kvstore serve`` with SigV4 checked: HEAD per existence check, whole-object PUT, ranged GET,
and the conditional PUTs its object lock manager uses across replicas (``If-None-Match: *`` to
take a block's upload, ``If-Match: <etag>`` to renew or release it), answered 412 when the
condition fails. boto3 with explicit credentials, path-style, no instance metadata."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from ..served import Served, s3_client, served

pytestmark = pytest.mark.timeout(120)
BUCKET = "kv-cache-worker-0"  # DYN_KVBM_OBJECT_BUCKET="kv-cache-worker-{worker_id}"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("object-tier")) as s:
        s3_client(s.endpoint).create_bucket(Bucket=BUCKET)
        yield s


def _code(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


def test_head_put_ranged_get_and_conditional_puts(srv: Served) -> None:
    s3 = s3_client(srv.endpoint)
    block, key = os.urandom(2 << 20), "0123456789abcdef"  # a sequence hash names a block
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=BUCKET, Key=key)
    assert _code(e.value)[0] == 404
    s3.put_object(Bucket=BUCKET, Key=key, Body=block)
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == len(block)
    part = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=1048576-1049599")
    assert part["Body"].read() == block[1 << 20:(1 << 20) + 1024]
    # the lock: the first replica takes it, a second is refused with 412
    lock = f"{key}.lock"
    first = s3.put_object(Bucket=BUCKET, Key=lock, Body=b"replica-a", IfNoneMatch="*")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=BUCKET, Key=lock, Body=b"replica-b", IfNoneMatch="*")
    assert _code(e.value) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=BUCKET, Key=lock)["Body"].read() == b"replica-a"
    # renewal with the holder's ETag succeeds; a stale ETag is refused with 412
    renewed = s3.put_object(Bucket=BUCKET, Key=lock, Body=b"replica-a:renewed",
                            IfMatch=first["ETag"])
    assert renewed["ETag"] != first["ETag"]
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=BUCKET, Key=lock, Body=b"replica-b", IfMatch=first["ETag"])
    assert _code(e.value) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=BUCKET, Key=lock)["Body"].read() == b"replica-a:renewed"
    with pytest.raises(ClientError) as e:  # If-Match on a key that is not there: 404
        s3.put_object(Bucket=BUCKET, Key="no-such-lock", Body=b"x", IfMatch=first["ETag"])
    assert _code(e.value)[0] == 404


def test_concurrent_if_none_match_has_exactly_one_winner(srv: Served) -> None:
    """Replicas racing for one block's upload: one 200, every other 412, the winner's bytes."""
    s3 = s3_client(srv.endpoint, max_pool_connections=16)
    n = 8
    bodies = [os.urandom(256 << 10) for _ in range(n)]
    results: list[int | None] = [None] * n
    start = threading.Barrier(n)

    def race(i: int) -> None:
        start.wait(10)
        try:
            s3.put_object(Bucket=BUCKET, Key="raced-block", Body=bodies[i], IfNoneMatch="*")
            results[i] = 200
        except ClientError as exc:
            results[i] = _code(exc)[0]

    threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [200] + [412] * (n - 1), results
    stored = s3.get_object(Bucket=BUCKET, Key="raced-block")["Body"].read()
    assert stored == bodies[results.index(200)]
