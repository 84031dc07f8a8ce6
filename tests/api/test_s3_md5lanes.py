"""kvstore.api.s3.md5lanes and the native kvstore_md5lanes: MD5s of many streams hashed side by
side in SIMD lanes equal hashlib's, on every kernel this CPU runs, whatever the lengths, the
split points and the threads; the native module refuses bad input with an error; and a server's
concurrent PUTs answer MD5 ETags."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.api.s3 import md5lanes
from tests.api.conftest import LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
native = pytest.importorskip("kvstore_md5lanes")  # a dependency: absent only if its build failed
KERNELS = [k for k, _ in native.kernels()]
IV = struct.pack("<4I", 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)


def _pad(n: int) -> bytes:
    return b"\x80" + b"\0" * ((55 - n) % 64) + struct.pack("<Q", 8 * n)


def test_kernels_listed_default_first() -> None:
    ks = native.kernels()
    assert ("c", 1) in ks  # the portable kernel runs everywhere
    assert {k for k, _ in ks} <= {"c", "avx2", "avx512vl", "avx512"}
    assert md5lanes.simd_kernel() == (ks[0][0] if ks[0][1] > 1 else None)


@pytest.mark.parametrize("kernel", KERNELS)
def test_native_compress_many_streams_equals_hashlib(kernel: str) -> None:
    rng = random.Random(kernel)
    for _ in range(60):
        datas = [rng.randbytes(rng.choice([0, 1, 55, 56, 63, 64, 65, 128, rng.randrange(5000)]))
                 for _ in range(rng.randint(1, 40))]
        states = [bytearray(IV) for _ in datas]
        native.compress(states, [memoryview(d)[: len(d) // 64 * 64] for d in datas], kernel)
        native.compress(states, [d[len(d) // 64 * 64:] + _pad(len(d)) for d in datas], kernel)
        assert [s.hex() for s in states] == [hashlib.md5(d).hexdigest() for d in datas]


@pytest.mark.parametrize("bad, match", [
    (lambda: native.compress([bytearray(15)], [b""]), "16 bytes"),
    (lambda: native.compress([bytearray(16)], [b"x" * 63]), "multiple of 64"),
    (lambda: native.compress([bytes(16)], [b""]), "writable|read-only"),
    (lambda: native.compress([bytearray(16)], []), "differ"),
    (lambda: native.compress([bytearray(16)], [b""], "sse9"), "kernel"),
    (lambda: native.compress([bytearray(16)] * (native.STREAMS_MAX + 1),
                             [b""] * (native.STREAMS_MAX + 1)), "at most"),
])
def test_native_refuses_bad_input(bad: Callable[[], None], match: str) -> None:
    with pytest.raises((ValueError, TypeError, BufferError), match=match):
        bad()


def test_native_refuses_a_state_twice() -> None:
    s = bytearray(IV)
    with pytest.raises(ValueError, match="twice"):
        native.compress([s, s], [b"a" * 64, b"b" * 64])
    assert s == bytearray(IV)  # refused before hashing anything


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=6)),
                min_size=1, max_size=12),
       st.sampled_from(KERNELS), st.sampled_from([64, 128, 4096]))
def test_streams_split_anywhere_on_threads(streams: list[tuple[bytes, list[int]]], kernel: str,
                                           round_bytes: int) -> None:
    lanes = md5lanes.Md5Lanes(kernel, round_bytes=round_bytes, streams_max=4)
    barrier = threading.Barrier(len(streams))

    def one(body: bytes, cuts: list[int]) -> str:
        h = lanes.new()
        barrier.wait(timeout=30)  # together, so that rounds hold several streams
        last = 0
        for c in sorted(min(c, len(body)) for c in cuts) + [len(body)]:
            h.update(body[last:c])
            last = c
        return h.hexdigest()

    with ThreadPoolExecutor(len(streams)) as pool:
        got = list(pool.map(lambda s: one(*s), streams))
    assert got == [hashlib.md5(b).hexdigest() for b, _ in streams]


def test_concurrent_bodies_share_rounds() -> None:
    kernel = md5lanes.simd_kernel()
    if kernel is None:
        pytest.skip("no SIMD kernel on this CPU: the server uses hashlib (factory() says so)")
    lanes = md5lanes.Md5Lanes(kernel, round_bytes=4096)
    bodies = [random.Random(i).randbytes(1 << 20) for i in range(8)]
    keep = lanes.new()  # in flight throughout: every body below hashes in the lanes
    barrier = threading.Barrier(8)

    def one(body: bytes) -> str:
        h = lanes.new()
        barrier.wait(timeout=30)
        for i in range(0, len(body), 128 << 10):
            h.update(body[i : i + (128 << 10)])
        return h.hexdigest()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, bodies)) == [hashlib.md5(b).hexdigest() for b in bodies]
    assert lanes.streams > lanes.rounds  # lanes were shared: more than one stream per round
    keep.close()


def test_an_idle_open_stream_delays_rounds_by_the_gather_bound_only() -> None:
    kernel = md5lanes.simd_kernel()
    if kernel is None:
        pytest.skip("no SIMD kernel on this CPU: the server uses hashlib (factory() says so)")
    lanes = md5lanes.Md5Lanes(kernel, round_bytes=4096, gather_s=0.002)
    idle = [lanes.new() for _ in range(4)]  # bodies in flight that never send their next batch
    assert (lanes.bodies, lanes.open) == (4, 3)  # the first started alone: hashlib's
    body = random.Random(3).randbytes(64 * 1024 + 17)  # 16 rounds
    h = lanes.new()
    t = time.monotonic()
    h.update(body)
    waited = time.monotonic() - t
    assert h.hexdigest() == hashlib.md5(body).hexdigest()
    assert waited < 16 * 0.002 + 5.0  # the bound plus room for a loaded machine: no hang
    assert (lanes.bodies, lanes.open) == (4, 3)  # h's digest closed it
    for s in idle:
        s.close()
    assert (lanes.bodies, lanes.open) == (0, 0)
    del idle
    first, second = lanes.new(), lanes.new()
    assert not isinstance(first, md5lanes.LaneMd5) and isinstance(second, md5lanes.LaneMd5)
    for x in (second, first):
        x.update(body)  # second hashes in a lane beside an open stream, within the bound
        assert x.hexdigest() == hashlib.md5(body).hexdigest()
    assert (lanes.bodies, lanes.open) == (0, 0)


@pytest.mark.parametrize("seed", range(4))
def test_intake_batches_copied_and_hashed_by_the_combiner(seed: int) -> None:
    """An intake whose MD5 is in the lanes hands its batches to the combiner's thread, which
    copies them into the body's buffer and hashes them: bytes and digests are the body's."""
    import asyncio

    from kvstore.api.s3.intake import Intake

    kernel = md5lanes.simd_kernel()
    if kernel is None:
        pytest.skip("no SIMD kernel on this CPU: the server uses hashlib (factory() says so)")
    lanes = md5lanes.Md5Lanes(kernel, round_bytes=rng_round(seed))
    keep = lanes.new()  # another body in flight: the intakes below hash in lanes
    rng = random.Random(seed)
    bodies = [rng.randbytes(rng.randrange(1, 3 << 20)) for _ in range(5)]
    outs = [bytearray(len(b)) for b in bodies]

    async def one(body: bytes, out: bytearray) -> dict[str, str]:
        with ThreadPoolExecutor(1) as pool:
            intake = Intake(pool, memoryview(out), md5=lanes.new, sha256=False,
                            batch_bytes=rng.choice([4096, 100_000, 512 << 10]))
            assert intake._lane is not None  # the combiner's path, not the pool's
            pos = 0
            while pos < len(body):
                n = rng.randrange(1, 300_000)
                await intake.add(body[pos : pos + n])
                pos += n
                await asyncio.sleep(0)  # the bodies' pieces interleave
            return await intake.finish()

    async def all_of() -> list[dict[str, str]]:
        return list(await asyncio.gather(*(one(b, o) for b, o in zip(bodies, outs,
                                                                      strict=True))))

    got = asyncio.run(all_of())
    for body, out, digests in zip(bodies, outs, got, strict=True):
        assert bytes(out) == body
        assert digests == {"md5": hashlib.md5(body).hexdigest()}
    keep.close()
    lanes.close()


def rng_round(seed: int) -> int:
    return [64, 4096, 128 << 10, 1 << 20][seed % 4]


def test_a_closed_combiner_fails_its_callers() -> None:
    kernel = md5lanes.simd_kernel()
    if kernel is None:
        pytest.skip("no SIMD kernel on this CPU: the server uses hashlib (factory() says so)")
    lanes = md5lanes.Md5Lanes(kernel)
    keep, h = lanes.new(), lanes.new()
    assert isinstance(h, md5lanes.LaneMd5)
    h.update(b"x" * 4096)  # served by the combiner's thread
    lanes.close()
    with pytest.raises(RuntimeError, match="closed"):
        h.update(b"y" * 4096)
    keep.close()


def test_factory_names_what_it_chose() -> None:
    new, line = md5lanes.factory()
    h = new()
    h.update(b"abc")
    assert h.hexdigest() == hashlib.md5(b"abc").hexdigest()
    kernel = md5lanes.simd_kernel()
    assert (kernel in line) if kernel else ("hashlib" in line)


@pytest.fixture(scope="module")
def s3(module_server: Callable[..., LiveServer]) -> Iterator[Any]:
    c = boto_client(module_server().url)
    c.create_bucket(Bucket="lanes")
    yield c


def test_concurrent_puts_answer_md5_etags(s3: Any) -> None:
    bodies = {f"k{i}": random.Random(100 + i).randbytes(random.Random(i).randrange(1, 3 << 20))
              for i in range(16)}

    def put(key: str) -> str:
        return str(s3.put_object(Bucket="lanes", Key=key, Body=bodies[key])["ETag"])

    with ThreadPoolExecutor(8) as pool:
        etags = dict(zip(bodies, pool.map(put, bodies), strict=True))
    for key, body in bodies.items():
        assert etags[key] == f'"{hashlib.md5(body).hexdigest()}"'
        assert s3.head_object(Bucket="lanes", Key=key)["ETag"] == etags[key]
        assert s3.get_object(Bucket="lanes", Key=key)["Body"].read() == body
