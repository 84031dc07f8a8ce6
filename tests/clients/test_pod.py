"""PodClient / AsyncPodClient against real bulk servers on distinct loopback addresses
(127.0.0.11, .12, .13: all of 127/8 is loopback): placement of writes, byte-exact reads, the
longest prefix across nodes, replicas, timeouts and the circuit breaker."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from kvstore_client import AsyncPodClient, Client, NodeSpec, PodClient
from kvstore_client._pod import Breaker
from kvstore_wire import placement

from kvstore import limits
from kvstore.engine.device import MemoryDevice
from kvstore.engine.types import EngineConfig
from kvstore.errors import InvalidArgument
from kvstore.testing import BackgroundBulkServer

NS = "pod-test"
HOSTS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
WAIT_SECONDS_MAX = 10.0


def _config() -> EngineConfig:
    return EngineConfig(data_dir="/mem", capacity_bytes=64 * limits.MiB,
                        segment_bytes=8 * limits.MiB, dram_bytes=8 * limits.MiB)


@pytest.fixture
def make_node() -> Iterator[Callable[..., BackgroundBulkServer]]:
    started: list[BackgroundBulkServer] = []

    def make(host: str, port: int = 0) -> BackgroundBulkServer:
        srv = BackgroundBulkServer(_config(), MemoryDevice(), host=host, port=port,
                                   threads=2).start()
        started.append(srv)
        return srv

    yield make
    problems = []
    for srv in started:
        if srv.loop is not None:
            problems += srv.engine.check()  # type: ignore[union-attr]
            srv.stop(timeout=2.0)
    assert problems == []


@pytest.fixture
def pod3(make_node) -> list[BackgroundBulkServer]:
    return [make_node(h) for h in HOSTS]


def _nodes(servers: list[BackgroundBulkServer], weights: list[float] | None = None) -> list:
    weights = weights or [1.0] * len(servers)
    return [(f"n{i + 1}", f"{s.host}:{s.port}", w) for i, (s, w) in
            enumerate(zip(servers, weights, strict=True))]


def _blocks(n: int, size: int = 3000) -> tuple[list[str], list[bytes]]:
    keys = [os.urandom(16).hex() for _ in range(n)]
    return keys, [os.urandom(size) for _ in range(n)]


def test_blocks_land_on_their_owners_and_read_back_exact(pod3) -> None:
    nodes = _nodes(pod3, [1.0, 1.0, 2.0])
    keys, vals = _blocks(240)
    members = [placement.Member(n, w) for n, _, w in nodes]
    with PodClient(nodes=nodes, namespace=NS, create=True) as pod:
        assert pod.put_many(keys, vals) == [True] * len(keys)
        assert pod.put(keys[0], vals[1]) is False  # write-once, on its owner
        # each node holds exactly its share, and nothing else
        for (node_id, _, _), srv in zip(nodes, pod3, strict=True):
            mine = [placement.owners(NS, k, members)[0].node_id == node_id for k in keys]
            with Client(srv.host, srv.port, namespace=NS) as plain:
                assert plain.exists_many(keys) == mine
            assert 0 < sum(mine) < len(keys)
        assert pod.get_many(keys) == vals
        bufs = [bytearray(4096) for _ in keys]
        assert pod.get_many_into(keys, bufs) == [len(v) for v in vals]
        assert all(bytes(b[:len(v)]) == v for b, v in zip(bufs, vals, strict=True))
        assert pod.get("absent" * 4) is None
        assert pod.exists_many([keys[3], "nope", keys[7]]) == [True, False, True]
        assert pod.prefetch(keys[:20]) == 20
        assert pod.delete_many(keys[:10] + ["nope"]) == 10
        assert pod.get_many(keys[:12]) == [None] * 10 + vals[10:12]
        st = pod.stats()
        assert set(st["nodes"]) == {"n1", "n2", "n3"} and all(st["nodes"].values())
        assert st["client"]["node_failures"] == 0
        assert set(st["client"]["breakers"].values()) == {"closed"}


def test_lookup_returns_the_longest_prefix_across_nodes(pod3) -> None:
    nodes = _nodes(pod3)
    chain, vals = _blocks(60, 256)
    members = [placement.Member(n, w) for n, _, w in nodes]
    with PodClient(nodes=nodes, namespace=NS, create=True) as pod:
        assert pod.lookup(chain) == 0
        pod.put_many(chain[:40], vals[:40])
        assert len({placement.owners(NS, k, members)[0].node_id for k in chain[:40]}) == 3
        assert pod.lookup(chain) == 40
        assert pod.lookup(chain[:30]) == 30
        assert pod.lookup(chain, lease_seconds=5.0) == 40
        # a hole on one node cuts the pod's prefix there
        owner = placement.owners(NS, chain[25], members)[0].node_id
        srv = pod3[int(owner[1:]) - 1]
        with Client(srv.host, srv.port, namespace=NS) as plain:
            assert plain.delete_many([chain[25]]) == 1
        assert pod.lookup(chain) == 25


def test_replicas_write_every_owner_and_read_through_a_dead_one(make_node) -> None:
    servers = [make_node(h) for h in HOSTS]
    nodes = _nodes(servers)
    keys, vals = _blocks(90)
    # the first three keys (deleted, then written again while n2 is down) must have n2 among
    # their owners, or that write has nothing to skip: random keys miss it 1 time in 27
    members = [placement.Member(n, w) for n, _, w in nodes]
    on_n2 = [i for i, k in enumerate(keys)
             if "n2" in {m.node_id for m in placement.owners(NS, k, members, 2)}]
    order = on_n2[:3] + [i for i in range(len(keys)) if i not in on_n2[:3]]
    keys, vals = [keys[i] for i in order], [vals[i] for i in order]
    with PodClient(nodes=nodes, namespace=NS, create=True, replicas=2, timeout=0.5) as pod:
        assert pod.put_many(keys, vals) == [True] * len(keys)
        held = []
        for srv in servers:
            with Client(srv.host, srv.port, namespace=NS) as plain:
                held.append(plain.exists_many(keys))
        assert [sum(col) for col in zip(*held, strict=True)] == [2] * len(keys)
        assert pod.delete_many(keys[:3]) == 3  # counted once, gone from both replicas
        assert pod.exists_many(keys[:3]) == [False] * 3
        servers[1].stop(timeout=2.0)  # node n2 goes away
        assert pod.get_many(keys[3:]) == vals[3:]  # zero misses
        assert pod.lookup(keys[3:]) == len(keys) - 3
        c = pod.stats()["client"]
        assert c["node_failures"] >= 1 and c["read_misses_failed"] == 0
        assert pod.put_many(keys[:3], vals[:3]) == [True] * 3  # the live replica takes it
        assert c["writes_skipped"] == 0 and pod.stats()["client"]["writes_skipped"] >= 1


def test_silent_node_is_a_miss_within_the_timeout_not_an_error(make_node) -> None:
    live = make_node(HOSTS[0])
    silent = socket.socket()  # accepts connections (backlog) and never says a word
    silent.bind((HOSTS[1], 0))
    silent.listen(16)
    try:
        nodes = [("n1", f"{live.host}:{live.port}"), ("n2", f"{HOSTS[1]}:{silent.getsockname()[1]}")]
        keys, vals = _blocks(40)
        with PodClient(nodes=nodes, namespace=NS, create=True, timeout=0.2) as pod:
            members = [placement.Member("n1"), placement.Member("n2")]
            on_live = [placement.owners(NS, k, members)[0].node_id == "n1" for k in keys]
            t0 = time.monotonic()
            stored = pod.put_many(keys, vals)
            got = pod.get_many(keys)
            elapsed = time.monotonic() - t0
            assert stored == on_live  # the silent node's writes were skipped
            assert got == [v if ok else None for v, ok in zip(vals, on_live, strict=True)]
            c = pod.stats()["client"]
            assert c["writes_skipped"] == len(keys) - sum(on_live)
            assert c["read_misses_failed"] == len(keys) - sum(on_live)
            assert c["per_node_failures"]["n2"] >= 2
            assert elapsed < 10 * 0.2  # two calls, each bounded by one node timeout (+ slack)
    finally:
        silent.close()


def test_breaker_opens_skips_the_node_then_half_open_probe_closes_it(make_node) -> None:
    servers = [make_node(h) for h in HOSTS[:2]]
    nodes = _nodes(servers)
    keys, vals = _blocks(60)
    with PodClient(nodes=nodes, namespace=NS, create=True, breaker_failures=2,
                   breaker_open_seconds=1.0) as pod:
        pod.put_many(keys, vals)
        port = servers[1].port
        servers[1].stop(timeout=2.0)
        for _ in range(2):
            pod.get_many(keys)
        st = pod.stats()["client"]
        assert st["breakers"]["n2"] == "open" and st["breaker_opens"] == 1
        failures = st["per_node_failures"]["n2"]
        got = pod.get_many(keys)  # open: n2 is skipped, not asked (no new failure)
        st = pod.stats()["client"]
        assert st["per_node_failures"]["n2"] == failures and st["breaker_skips"] > 0
        assert sum(v is not None for v in got) > 0
        # the node comes back (empty: it is a cache) on the same address
        make_node(HOSTS[1], port)
        deadline = time.monotonic() + WAIT_SECONDS_MAX
        while pod.stats()["client"]["breakers"]["n2"] != "closed":
            assert time.monotonic() < deadline, pod.stats()["client"]
            time.sleep(0.05)  # after the open time, one probe goes through and succeeds
        pod.put_many(keys, vals)  # the blocks that went with the old n2 are stored again
        assert pod.get_many(keys) == vals
        assert pod.stats()["client"]["breaker_opens"] == 1


def test_async_pod_client(make_node) -> None:
    servers = [make_node(h) for h in HOSTS]
    nodes = _nodes(servers)
    keys, vals = _blocks(90)

    async def run() -> None:
        async with AsyncPodClient(nodes=nodes, namespace=NS, create=True, timeout=0.5) as pod:
            assert await pod.put_many(keys, vals) == [True] * len(keys)
            assert await pod.get_many(keys) == vals
            bufs = [bytearray(3000) for _ in keys]
            assert await pod.get_many_into(keys, bufs) == [3000] * len(keys)
            assert [bytes(b) for b in bufs] == vals
            assert await pod.lookup(keys) == len(keys)
            assert await pod.exists_many(keys[:2]) == [True, True]
            assert await pod.prefetch(keys[:5]) == 5
            await asyncio.to_thread(servers[2].stop, 2.0)
            got = await pod.get_many(keys)  # n3's blocks are misses, no exception
            members = [placement.Member(n) for n, _, _ in nodes]
            lost = [placement.owners(NS, k, members)[0].node_id == "n3" for k in keys]
            assert got == [None if x else v for v, x in zip(vals, lost, strict=True)]
            assert (await pod.stats())["nodes"]["n3"] is None
            assert await pod.delete_many(keys) == len(keys) - sum(lost)

    asyncio.run(run())


def test_breaker_states_and_a_failed_probe_reopens_for_longer() -> None:
    now = [100.0]
    b = Breaker("n1", failures=2, open_seconds=1.0, clock=lambda: now[0])
    assert b.allow() and not b.failure() and b.state == "closed"
    assert b.failure() and b.state == "open" and not b.allow()
    now[0] += 1.0
    assert b.state == "half-open"
    assert b.allow() and not b.allow()  # one probe at a time
    assert b.failure() and b.state == "open" and b.cooldown == 2.0
    now[0] += 1.5
    assert not b.allow()  # still open: the cooldown doubled
    now[0] += 0.5
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.cooldown == 1.0 and b.allow() and b.allow()


def test_node_specs_and_bad_arguments() -> None:
    assert NodeSpec.parse("n1=127.0.0.11:8701@2") == NodeSpec("n1", "127.0.0.11", 8701, 2.0)
    assert NodeSpec.parse({"id": "n2", "host": "h", "port": 1}) == NodeSpec("n2", "h", 1)
    for bad in ("n1=nohost", ("", "h:1"), ("n1", "h:1", 0.0)):
        with pytest.raises(InvalidArgument):
            NodeSpec.parse(bad)
    with pytest.raises(InvalidArgument):
        PodClient(nodes=[("a", "h:1"), ("a", "h:2")], namespace=NS)
    with pytest.raises(InvalidArgument):
        PodClient(nodes=[("a", "h:1")], namespace=NS, replicas=0)
    with pytest.raises(InvalidArgument):
        PodClient(nodes=[("a", "h:1")], namespace=NS, timeout=0.0)


def test_a_lost_half_open_probe_is_written_off_after_a_cooldown() -> None:
    now = [0.0]
    b = Breaker("n1", failures=1, open_seconds=1.0, clock=lambda: now[0])
    assert b.failure()
    now[0] = 1.0
    assert b.allow() and not b.allow()  # the probe's caller never reports back...
    now[0] = 2.0
    assert b.allow()  # ...so another probe goes after a cooldown


def test_async_silent_node_is_a_miss_and_a_skipped_write(make_node) -> None:
    live = make_node(HOSTS[0])
    silent = socket.socket()  # accepts (backlog), never answers: only the timeout ends a call
    silent.bind((HOSTS[1], 0))
    silent.listen(16)
    nodes = [("n1", f"{live.host}:{live.port}"), ("n2", f"{HOSTS[1]}:{silent.getsockname()[1]}")]
    keys, vals = _blocks(30)
    members = [placement.Member("n1"), placement.Member("n2")]
    on_live = [placement.owners(NS, k, members)[0].node_id == "n1" for k in keys]

    async def run() -> None:
        async with AsyncPodClient(nodes=nodes, namespace=NS, create=True, timeout=0.2) as pod:
            assert await pod.put_many(keys, vals) == on_live
            assert await pod.get_many(keys) == [v if ok else None
                                                for v, ok in zip(vals, on_live, strict=True)]
            assert await pod.lookup(keys) == on_live.index(False)
            c = (await pod.stats())["client"]
            assert c["writes_skipped"] == len(keys) - sum(on_live)
            assert c["breakers"]["n2"] == "open"  # three failures in a row

    try:
        asyncio.run(run())
    finally:
        silent.close()


def test_sync_timeout_bounds_the_whole_part_not_each_wait() -> None:
    """A node that trickles a valid CHALLENGE one byte at a time never lets a single wait run
    past the timeout; the pod client's deadline still gives up on it (a miss) long before the
    frame is through, and closes the connection."""
    import select
    import threading

    from kvstore_wire.frames import FrameType, encode_frame

    frame = encode_frame(FrameType.CHALLENGE, 0, {"nonce": b"n" * 32})
    lsock = socket.create_server(("127.0.0.14", 0))
    port = lsock.getsockname()[1]
    sent: list[int] = []

    def trickle() -> None:
        conn, _ = lsock.accept()
        with conn:
            n = 0
            for n in range(1, len(frame) + 1):  # bounded: one byte per 0.05 s
                try:
                    conn.sendall(frame[n - 1:n])
                except OSError:
                    break
                readable, _, _ = select.select([conn], [], [], 0.05)
                if readable and not conn.recv(4096):  # the client hung up
                    break
            sent.append(n)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        with PodClient(nodes=[("slow", f"127.0.0.14:{port}")], namespace=NS,
                       timeout=0.3) as pod:
            assert pod.get("k1") is None  # a miss, not an exception
            assert pod.client_stats()["node_failures"] == 1
        t.join(WAIT_SECONDS_MAX)
        assert sent and sent[0] < len(frame), (sent, len(frame))
    finally:
        lsock.close()
