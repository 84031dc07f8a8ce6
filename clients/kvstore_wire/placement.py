"""Placement: which storage nodes of a pod own a block (DESIGN section 6).

Weighted rendezvous (highest-random-weight) hashing, one pure function shared by the servers
and the SDK, pinned by golden vectors (``tests/test_placement.py``) so another language can
match it byte for byte:

- ``u = (int.from_bytes(blake2b(len(ns) u16le || ns || key || node_id, digest_size=8,
  person=b"kvs-place-v1"), "little") + 0.5) / 2**64``, a uniform draw in (0, 1) per
  (block, node); ``ns`` and ``node_id`` are UTF-8, ``key`` is the block key as sent (the
  32-character hex of a chained key, or any other key string), UTF-8 too.
- ``score = weight / -ln(u)`` (Schindelhauer and Schomaker's weighted rendezvous): a node's
  share of keys is its weight over the total weight, and removing a node moves only its keys.
- Owners are the ``replicas`` highest scores, ties broken by node id; the rest of the order is
  where a read looks next after a membership change (the previous owner).

A namespace enters the hash so that two namespaces' identical keys (the same prefix under two
layouts) do not pile onto one node.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kvstore_wire.errors import InvalidArgument

PERSON = b"kvs-place-v1"
NODE_ID_BYTES_MAX = 64


@dataclass(frozen=True, slots=True)
class Member:
    """One storage node as placement sees it: a stable id and a positive weight (capacity)."""

    node_id: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        raw = self.node_id.encode()
        if not raw or len(raw) > NODE_ID_BYTES_MAX:
            raise InvalidArgument(f"node id must be 1..{NODE_ID_BYTES_MAX} bytes, got {len(raw)}")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise InvalidArgument(f"node {self.node_id!r}: weight must be positive, got "
                                  f"{self.weight!r}")


def draw(namespace: str, key: str, node_id: str) -> float:
    """The uniform draw in (0, 1) of (block, node)."""
    ns = namespace.encode()
    h = hashlib.blake2b(struct.pack("<H", len(ns)) + ns + key.encode() + node_id.encode(),
                        digest_size=8, person=PERSON)
    return (int.from_bytes(h.digest(), "little") + 0.5) / 2.0**64


def score(namespace: str, key: str, member: Member) -> float:
    """A node's weighted rendezvous score for a block: highest wins."""
    return member.weight / -math.log(draw(namespace, key, member.node_id))


def rank(namespace: str, key: str, members: Sequence[Member]) -> list[Member]:
    """Every member, best owner first (ties by node id, so the order is total)."""
    return sorted(members, key=lambda m: (-score(namespace, key, m), m.node_id))


def owners(namespace: str, key: str, members: Sequence[Member], replicas: int = 1) -> list[Member]:
    """The ``replicas`` owners of a block (fewer when the pod has fewer live members)."""
    if replicas < 1:
        raise InvalidArgument(f"replicas must be at least 1, got {replicas}")
    return rank(namespace, key, members)[:replicas]
