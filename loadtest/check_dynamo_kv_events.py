"""Does Dynamo take kvstore's KV events? A check by hand (a script, not a test: Dynamo is not a
dependency). Run it in a throwaway venv::

    python -m venv /tmp/dyn && /tmp/dyn/bin/pip install ai-dynamo-runtime==1.6.1 pyzmq msgpack xxhash
    DYN_LOG=debug /tmp/dyn/bin/python loadtest/check_dynamo_kv_events.py

(1) Dynamo's own relay for engine events (``KvEventPublisher(zmq_endpoint=...)``, with the
in-memory discovery and the ZMQ event plane: no etcd, no NATS) subscribes to kvstore's publisher
(``kvstore.transport.kv_events``) while four chained blocks with token ids are stored and one
removed: with ``DYN_LOG=debug`` its local indexer logs each RouterEvent it recorded (kvstore's
block hashes, storage tier Disk). (2) A ``RadixTree`` given those blocks (block hash from
kvstore, token hash from Dynamo's ``compute_block_hash_for_seq``, as the relay computes it)
matches a 16-token request at 4 blocks, and at 2 after the removal.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients")]

import msgpack  # noqa: E402
from dynamo._core import DistributedRuntime  # noqa: E402
from dynamo.llm import KvEventPublisher, RadixTree, compute_block_hash_for_seq  # noqa: E402

from kvstore.engine.format import digest_of  # noqa: E402
from kvstore.protocol import kv_events as kve  # noqa: E402
from kvstore.transport.kv_events import KvEventPublisher as KvstorePublisher  # noqa: E402

NS, BLOCK_TOKENS = "ns-a", 4
TOKENS = list(range(100, 116))  # four blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def store_chain(pub: KvstorePublisher) -> list[int]:
    hashes, parent = [], None
    for b in range(len(TOKENS) // BLOCK_TOKENS):
        key = f"blk{b}"
        um = {"kv-token-ids": ",".join(map(str, TOKENS[b * BLOCK_TOKENS:(b + 1) * BLOCK_TOKENS]))}
        if parent:
            um["kv-parent-key"] = parent
        digest = digest_of(NS.encode(), key.encode())
        pub.submit(True, NS, digest, msgpack.packb({"u": um}))
        hashes.append(kve.block_hash(digest))
        parent = key
    return hashes


async def relay() -> None:
    drt = DistributedRuntime(asyncio.get_running_loop(), "mem", "tcp", event_plane="zmq")
    port = free_port()
    ours = KvstorePublisher(f"tcp://127.0.0.1:{port}", digest_of).start()
    theirs = KvEventPublisher(drt.endpoint("kvstore.storage.generate"), worker_id=7,
                              kv_block_size=BLOCK_TOKENS, enable_local_indexer=True,
                              zmq_endpoint=f"tcp://127.0.0.1:{port}", zmq_topic=NS)
    await asyncio.sleep(1.0)  # the relay's subscription reaches our PUB socket
    hashes = store_chain(ours)
    await asyncio.sleep(2.0)
    ours.submit(False, NS, digest_of(NS.encode(), b"blk2"), b"")
    await asyncio.sleep(2.0)
    print(f"relay: published {ours.published} events; kvstore block hashes {hashes} "
          "(see the relay's 'Recorded event RouterEvent' debug lines)")
    theirs.shutdown()
    ours.close()


def radix() -> None:
    local = compute_block_hash_for_seq(TOKENS, BLOCK_TOKENS)
    ours = [kve.block_hash(digest_of(NS.encode(), f"blk{b}".encode())) for b in range(4)]
    tree = RadixTree()
    tree.apply_event(7, json.dumps({"event_id": 1, "data": {"stored": {"parent_hash": None,
        "blocks": [{"block_hash": h, "tokens_hash": t} for h, t in zip(ours, local, strict=True)]}}}
    ).encode())
    full = tree.find_matches(local).scores
    tree.apply_event(7, json.dumps({"event_id": 2, "data": {"removed": {
        "block_hashes": ours[2:3]}}}).encode())
    part = tree.find_matches(local).scores
    print(f"RadixTree: {full} blocks matched; after BlockRemoved of block 2: {part}")
    assert full == {(7, 0): 4} and part == {(7, 0): 2}


if __name__ == "__main__":
    asyncio.run(relay())
    radix()
