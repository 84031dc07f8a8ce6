"""Membership against a real etcd, in process: registration, a second node's view, graceful
stop deregisters, a lapsed lease drops the node, etcd killed keeps the view, etcd back
re-registers; and the static source."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kvstore.cluster.etcd import EtcdMembership, parse_endpoints
from kvstore.cluster.membership import NodeInfo, StaticMembership, load_peers
from kvstore.errors import InvalidArgument

from .conftest import Etcd

WAIT_S = 8.0


def info(i: int) -> NodeInfo:
    return NodeInfo(f"n{i}", f"http://127.0.0.{10 + i}:8700", f"127.0.0.{10 + i}:8701",
                    (i + 1) << 30, epoch=1.0)


async def until(cond, what: str) -> None:  # noqa: ANN001
    for _ in range(int(WAIT_S / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"not within {WAIT_S}s: {what}")


def member(etcd: Etcd, i: int, ttl: float = 2.0) -> EtcdMembership:
    return EtcdMembership("p", parse_endpoints(etcd.url), info(i), lease_ttl_s=ttl,
                          call_timeout_s=0.6)  # < ttl/3; a loaded 2-core CI machine needs the room


async def test_register_watch_and_graceful_deregister(etcd: Etcd) -> None:
    # a TTL well above a loaded machine's keep-alive delays: this test is about the revoke at
    # stop, and a lease lapsed under load would have the node re-registering instead
    a, b = member(etcd, 1, ttl=6.0), member(etcd, 2, ttl=6.0)
    await a.start()
    assert json.loads(etcd.keys("/kvstore/p/nodes/")["/kvstore/p/nodes/n1"])["http"] == \
        "http://127.0.0.11:8700"
    seen: list[list[str]] = []
    a.watch(lambda v: seen.append(sorted(v)))
    await b.start()
    await until(lambda: set(a.view()) == {"n1", "n2"}, "a sees b")
    assert set(b.view()) == {"n1", "n2"} and b.view()["n1"] == info(1)
    assert [m.node_id for m in a.members()] == ["n1", "n2"]
    assert a.members()[1].weight == float(3 << 30)
    await b.stop()
    assert "/kvstore/p/nodes/n2" not in etcd.keys("/kvstore/p/nodes/")  # revoked, not lapsed
    await until(lambda: set(a.view()) == {"n1"}, "a drops b after its graceful stop")
    assert seen[-1] == ["n1"] and ["n1", "n2"] in seen
    await a.stop()
    assert etcd.keys("/kvstore/p/") == {}


async def test_lapsed_lease_drops_the_node(etcd: Etcd) -> None:
    a, b = member(etcd, 1), member(etcd, 2, ttl=2.0)
    await a.start()
    await b.start()
    await until(lambda: "n2" in a.view(), "a sees b")
    # b stops keeping its lease alive without revoking it (what a SIGKILL does to a process)
    assert b._task is not None
    b._task.cancel()
    await until(lambda: "n2" not in a.view(), "b's lease lapses")
    assert a.connected
    await a.stop()


async def test_lease_gone_behind_its_back_registers_again(etcd: Etcd) -> None:
    a = member(etcd, 1, ttl=3.0)
    await a.start()
    assert a._lease is not None
    etcd.post("/v3/lease/revoke", {"ID": str(a._lease.id)})  # what a lapse during a pause does
    assert etcd.keys("/kvstore/p/nodes/") == {}
    await until(lambda: a.registrations >= 2, "a registers again")
    await until(lambda: "/kvstore/p/nodes/n1" in etcd.keys("/kvstore/p/nodes/"), "key is back")
    await until(lambda: "n1" in a.view(), "a sees itself again")
    await a.stop()


async def test_etcd_down_keeps_the_view_and_back_reregisters(etcd: Etcd) -> None:
    a, b = member(etcd, 1), member(etcd, 2)
    await a.start()
    await b.start()
    await until(lambda: len(a.view()) == 2, "both registered")
    etcd.kill()
    await until(lambda: not a.connected, "a notices etcd is gone")
    assert set(a.view()) == {"n1", "n2"}  # the last view, kept
    etcd.start()
    await until(lambda: a.registrations >= 2 and b.registrations >= 2, "both register again")
    await until(lambda: len(a.view()) == 2, "a's view is whole again")
    assert set(etcd.keys("/kvstore/p/nodes/")) == {"/kvstore/p/nodes/n1", "/kvstore/p/nodes/n2"}
    await a.stop()
    await b.stop()


async def test_namespaces_are_recorded_and_watched(etcd: Etcd) -> None:
    a, b = member(etcd, 1), member(etcd, 2)
    got: list[tuple[str, object]] = []

    async def on_ns(name: str, value: object) -> None:
        got.append((name, value))

    b.on_namespace(on_ns)
    await a.start()
    await b.start()
    assert await a.publish_namespace("llama", {"owner": "t", "layout": {}})
    await until(lambda: ("llama", {"owner": "t", "layout": {}}) in got, "b sees the create")
    assert await a.publish_namespace("llama", None)
    await until(lambda: ("llama", None) in got, "b sees the delete")
    await a.stop()
    await b.stop()


def test_static_peers_file(tmp_path: Path) -> None:
    p = tmp_path / "peers.json"
    p.write_text(json.dumps([{"node_id": "a", "http": "http://127.0.0.11:8700",
                              "bulk": "127.0.0.11:8701", "capacity_bytes": 2},
                             {"id": "b", "http": "http://127.0.0.12:8700"}]))
    m = StaticMembership(load_peers(str(p)), self_id="a")
    assert sorted(m.view()) == ["a", "b"] and m.connected
    assert [x.weight for x in m.members()] == [2.0, 1.0]
    p.write_text("[{\"http\": \"x\"}]")
    with pytest.raises(InvalidArgument):
        load_peers(str(p))
    with pytest.raises(InvalidArgument):
        StaticMembership([info(1), info(1)])


def test_parse_endpoints() -> None:
    assert parse_endpoints("http://127.0.0.1:2379, 127.0.0.2:23") == [
        ("127.0.0.1", 2379), ("127.0.0.2", 23)]
    with pytest.raises(InvalidArgument):
        parse_endpoints("https://x:1")
    with pytest.raises(InvalidArgument):
        parse_endpoints("")


async def test_namespace_written_while_etcd_is_down_is_made_when_it_is_back(etcd: Etcd) -> None:
    a, b = member(etcd, 1), member(etcd, 2)
    got: list[tuple[str, object]] = []

    async def on_ns(name: str, value: object) -> None:
        got.append((name, value))

    b.on_namespace(on_ns)
    await a.start()
    await b.start()
    etcd.kill()
    await until(lambda: not a.connected, "a notices etcd is gone")
    assert not await a.publish_namespace("late", {"owner": ""})  # kept, not lost
    etcd.start()
    await until(lambda: ("late", {"owner": ""}) in got, "b gets it once etcd is back")
    assert "/kvstore/p/namespaces/late" in etcd.keys("/kvstore/p/namespaces/")
    await a.stop()
    await b.stop()


def test_owners_follow_the_shared_placement() -> None:
    from kvstore.cluster.placement import owners

    nodes = [info(i) for i in range(3)]
    m = StaticMembership(nodes, self_id="n1")
    members = [n.member() for n in nodes]
    mine = 0
    for k in range(300):
        key = f"blk-{k}"
        want = [x.node_id for x in owners("ns", key, members, 2)]
        assert [n.node_id for n in m.owners("ns", key, 2)] == want
        mine += m.is_mine("ns", key)
        assert m.is_mine("ns", key) == (want[0] == "n1")
    assert 0 < mine < 300
    assert StaticMembership(nodes, self_id="other").is_mine("ns", "k")  # not in the view


async def test_a_dead_first_etcd_url_fails_over_to_the_next(etcd: Etcd) -> None:
    from .conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    a = EtcdMembership("p", parse_endpoints(f"{dead},{etcd.url}"), info(1), lease_ttl_s=2.0,
                       call_timeout_s=0.3)
    await a.start()
    assert a.connected and "/kvstore/p/nodes/n1" in etcd.keys("/kvstore/p/nodes/")
    await a.stop()
