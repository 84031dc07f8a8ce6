"""Placement (``kvstore_wire.placement``): golden vectors, balance, minimal movement, weights."""

from __future__ import annotations

import collections
import hashlib
import struct

import pytest
from kvstore_wire.errors import InvalidArgument
from kvstore_wire.placement import PERSON, Member, draw, owners, rank

NODES = [Member("node-a"), Member("node-b"), Member("node-c")]

# (namespace, key, node id) -> blake2b-64 digest, hex: another implementation must match these
GOLDEN_DIGESTS = [
    ("ns", "00" * 16, "node-a", "8308f712df77ac8b"),
    ("llama", "0123456789abcdef0123456789abcdef", "node-b", "4817d1cde981c787"),
    ("bucket", "photos/a.jpg", "node-c", "b4763e194f9ba989"),
]
GOLDEN_RANKS = [
    ("ns", "00" * 16, ["node-a", "node-c", "node-b"]),
    ("llama", "0123456789abcdef0123456789abcdef", ["node-a", "node-b", "node-c"]),
    ("bucket", "photos/a.jpg", ["node-c", "node-b", "node-a"]),
]


@pytest.mark.parametrize(("ns", "key", "node", "digest"), GOLDEN_DIGESTS)
def test_golden_digests(ns: str, key: str, node: str, digest: str) -> None:
    raw = ns.encode()
    got = hashlib.blake2b(struct.pack("<H", len(raw)) + raw + key.encode() + node.encode(),
                          digest_size=8, person=PERSON).hexdigest()
    assert got == digest
    assert draw(ns, key, node) == (int.from_bytes(bytes.fromhex(digest), "little") + 0.5) / 2**64


@pytest.mark.parametrize(("ns", "key", "order"), GOLDEN_RANKS)
def test_golden_ranks(ns: str, key: str, order: list[str]) -> None:
    assert [m.node_id for m in rank(ns, key, NODES)] == order
    assert [m.node_id for m in owners(ns, key, NODES, replicas=2)] == order[:2]


def test_equal_weights_balance_within_five_percent() -> None:
    n = 60_000
    counts = collections.Counter(owners("ns", f"{i:032x}", NODES)[0].node_id for i in range(n))
    assert max(counts.values()) / (n / len(NODES)) <= 1.05, counts


def test_weights_set_the_share() -> None:
    n = 60_000
    nodes = [Member("node-a", 1.0), Member("node-b", 2.0), Member("node-c", 1.0)]
    counts = collections.Counter(owners("ns", f"{i:032x}", nodes)[0].node_id for i in range(n))
    assert abs(counts["node-b"] / n - 0.5) < 0.02, counts


def test_removing_a_node_moves_only_its_keys() -> None:
    keys = [f"{i:032x}" for i in range(20_000)]
    before = {k: owners("ns", k, NODES)[0].node_id for k in keys}
    after = {k: owners("ns", k, NODES[:2])[0].node_id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == "node-c" for k in moved)
    # and the new owner of a moved key is the next in its old rank: where a read looks next
    assert all(after[k] == rank("ns", k, NODES)[1].node_id for k in moved)


def test_namespace_enters_the_hash() -> None:
    keys = [f"{i:032x}" for i in range(2_000)]
    same = sum(owners("a", k, NODES)[0] == owners("b", k, NODES)[0] for k in keys)
    assert same < 0.45 * len(keys)  # independent placements agree about a third of the time


def test_bad_members_and_replicas_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        Member("")
    with pytest.raises(InvalidArgument):
        Member("x" * 65)
    with pytest.raises(InvalidArgument):
        Member("a", 0.0)
    with pytest.raises(InvalidArgument):
        owners("ns", "k", NODES, replicas=0)
    assert owners("ns", "k", NODES, replicas=5) == rank("ns", "k", NODES)
