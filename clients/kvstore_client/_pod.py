"""The I/O-free half of the pod client: membership, circuit breakers, counters, and the plans
that split a batch by owner and merge the answers in the caller's order.

``PodClient`` (threads) and ``AsyncPodClient`` (tasks) drive the same plans: a plan is a
generator that yields ``{node_id: [key indexes]}`` (the parts of one parallel round) and is sent
back ``{node_id: answer or FAILED}``; it returns the merged result. Placement is
``kvstore_wire.placement`` (weighted rendezvous), the one function the servers use too.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvstore_wire import placement
from kvstore_wire.errors import InvalidArgument, KVStoreError, ProtocolError
from kvstore_wire.placement import Member

from kvstore_client import podlimits

log = logging.getLogger("kvstore_client.pod")

FAILED: Any = object()  # a node's part did not answer (timeout, refused, reset, bad bytes)
Parts = dict[str, list[int]]
Plan = Generator[Parts, dict[str, Any], Any]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One storage node: a stable id, its bulk-port endpoint, and its placement weight."""

    node_id: str
    host: str
    port: int
    weight: float = 1.0

    def __post_init__(self) -> None:
        Member(self.node_id, self.weight)  # validates id and weight
        if not 0 < self.port < 65536:
            raise InvalidArgument(f"node {self.node_id!r}: bad port {self.port!r}")

    @classmethod
    def parse(cls, spec: NodeSpec | dict[str, Any] | tuple[Any, ...] | str) -> NodeSpec:
        """A ``NodeSpec``, a dict (``node_id``/``id``, ``host``, ``port``, ``weight``), a tuple
        ``(node_id, "host:port"[, weight])`` or a string ``"id=host:port[@weight]"``."""
        if isinstance(spec, NodeSpec):
            return spec
        if isinstance(spec, dict):
            return cls(str(spec.get("node_id", spec.get("id"))), str(spec["host"]),
                       int(spec["port"]), float(spec.get("weight", 1.0)))
        if isinstance(spec, str):
            name, _, rest = spec.partition("=")
            where, _, w = rest.partition("@")
            spec = (name, where, float(w or 1.0))
        node_id, addr, *weight = spec
        host, _, port = str(addr).rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"node {node_id!r}: endpoint must be host:port, got {addr!r}")
        return cls(str(node_id), host, int(port), float(weight[0]) if weight else 1.0)


class MembershipSource(Protocol):
    """Where a pod client learns the pod's nodes. ``version`` changes whenever ``nodes()`` does
    (the client rebuilds its view then); a watcher (etcd, under
    ``/kvstore/<pod>/nodes/<id>``) updates both from its own thread or task."""

    @property
    def version(self) -> int: ...

    def nodes(self) -> Sequence[NodeSpec]: ...

    def close(self) -> None: ...


class StaticMembership:
    """A fixed list of nodes (pods without etcd; tests)."""

    def __init__(self, nodes: Iterable[NodeSpec | dict[str, Any] | tuple[Any, ...] | str]) -> None:
        self._nodes = [NodeSpec.parse(n) for n in nodes]
        ids = [n.node_id for n in self._nodes]
        if not ids:
            raise InvalidArgument("a pod needs at least one node")
        if len(set(ids)) != len(ids):
            raise InvalidArgument(f"duplicate node ids in {ids}")

    @property
    def version(self) -> int:
        return 0

    def nodes(self) -> Sequence[NodeSpec]:
        return list(self._nodes)

    def close(self) -> None:
        pass


class Breaker:
    """Per-node circuit breaker: closed, open (calls skip the node), half-open (one probe)."""

    def __init__(self, node_id: str, failures: int, open_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.failures_to_open = failures
        self.open_seconds = open_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0
        self.opened_at: float | None = None
        self.cooldown = open_seconds
        self.probing = False
        self.probe_at = 0.0

    @property
    def state(self) -> str:
        with self._lock:
            if self.opened_at is None:
                return "closed"
            if self.probing or self._clock() - self.opened_at >= self.cooldown:
                return "half-open"
            return "open"

    def allow(self) -> bool:
        """May a call go to this node now? In half-open, only the first caller (the probe); a
        probe that never reported back (its caller died) is written off after a cooldown."""
        with self._lock:
            if self.opened_at is None:
                return True
            now = self._clock()
            if now - self.opened_at < self.cooldown:
                return False
            if self.probing and now - self.probe_at < self.cooldown:
                return False
            self.probing, self.probe_at = True, now
            return True

    def success(self) -> None:
        with self._lock:
            if self.opened_at is not None:
                log.warning("pod node %s answers again: breaker closed", self.node_id)
            self.failures, self.opened_at, self.probing = 0, None, False
            self.cooldown = self.open_seconds

    def failure(self) -> bool:
        """Count a failure; True when this one opened (or re-opened) the breaker."""
        with self._lock:
            self.failures += 1
            if self.probing:  # the half-open probe failed: open again, for longer
                self.probing = False
                self.cooldown = min(self.cooldown * 2, podlimits.breaker_open_seconds_max)
                self.opened_at = self._clock()
                return True
            if self.opened_at is None and self.failures >= self.failures_to_open:
                self.opened_at = self._clock()
                log.warning("pod node %s failed %d times: breaker open for %.3gs",
                            self.node_id, self.failures, self.cooldown)
                return True
            return False


@dataclass
class PodCounters:
    """What the pod layer did on this client (``PodClient.stats()["client"]``)."""

    node_failures: int = 0        # per-node parts that timed out or failed
    breaker_opens: int = 0
    breaker_skips: int = 0        # (key, node) pairs not sent because the breaker was open
    read_fallbacks: int = 0       # keys asked again at their next replica
    read_misses_failed: int = 0   # keys answered "miss" because no owner answered
    writes_skipped: int = 0       # (key, replica) writes not done: node open or failed
    per_node_failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, d in deltas.items():
                setattr(self, name, getattr(self, name) + d)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()
                    if k != "lock"}


def etcd_membership(etcd: str | Sequence[str] | None, pod: str | None,
                    membership: MembershipSource | None) -> MembershipSource | None:
    """The membership a pod client was asked for: ``etcd=`` (with ``pod=``, the optional etcd
    extra) or whatever ``membership=`` was given."""
    if not etcd:
        return membership
    if membership is not None or not pod:
        raise InvalidArgument("etcd= needs pod= and no membership=")
    from kvstore_client.pod_etcd import EtcdMembership

    return EtcdMembership(etcd, pod)


def is_node_failure(exc: BaseException) -> bool:
    """Errors that mean "this node did not answer properly" (a miss / a skipped write), as
    opposed to the caller's mistakes (bad key, access denied, limit), which are raised."""
    if isinstance(exc, (OSError, TimeoutError, EOFError, ProtocolError)):
        return True
    if isinstance(exc, KVStoreError):
        return exc.retryable or exc.name == "BadDigest"
    return False


def check_replicas(replicas: int) -> int:
    if not 1 <= replicas <= podlimits.replicas_max:
        raise InvalidArgument(f"replicas must be 1..{podlimits.replicas_max}, got {replicas}")
    return replicas


def check_timeout(timeout: float) -> float:
    lo, hi = podlimits.node_timeout_seconds_min, podlimits.node_timeout_seconds_max
    if not (math.isfinite(timeout) and lo <= timeout <= hi):
        raise InvalidArgument(f"node timeout must be {lo}..{hi} s, got {timeout!r}")
    return timeout


# -- plans -----------------------------------------------------------------------------------
Owners = Sequence[Sequence[str]]  # per key: its owners' node ids, best first
Allow = Callable[[str], bool]     # breaker check (counts a skip when it says no)


def owners_of(namespace: str, keys: Sequence[str], members: Sequence[Member],
              replicas: int) -> list[list[str]]:
    return [[m.node_id for m in placement.owners(namespace, k, members, replicas)] for k in keys]


def _pick(owners: Sequence[str], start: int, allow: Allow) -> int:
    """Index of the first owner at or after ``start`` whose breaker lets a call through."""
    for j in range(start, len(owners)):
        if allow(owners[j]):
            return j
    return len(owners)


def read_plan(owners: Owners, allow: Allow, is_hit: Callable[[Any], bool],
              miss: Any, counters: PodCounters) -> Plan:
    """Per-key reads (get, exists): each key to its first live owner; a miss or a failure
    asks the next replica (at most one try per replica). Answer: per-key values, caller order."""
    n = len(owners)
    out: list[Any] = [miss] * n
    tried = [0] * n
    pending = list(range(n))
    failed: set[int] = set()
    while pending:
        parts: Parts = {}
        for i in pending:
            j = _pick(owners[i], tried[i], allow)
            tried[i] = j + 1
            if j < len(owners[i]):
                parts.setdefault(owners[i][j], []).append(i)
            elif i in failed or not owners[i]:
                counters.add(read_misses_failed=1)
        if not parts:
            break
        answers = yield parts
        pending = []
        for node, idxs in parts.items():
            got = answers[node]
            for pos, i in enumerate(idxs):
                if got is not FAILED and is_hit(got[pos]):
                    out[i] = got[pos]
                    failed.discard(i)
                    continue
                if got is FAILED:
                    failed.add(i)
                if tried[i] < len(owners[i]):
                    counters.add(read_fallbacks=1)
                    pending.append(i)
                elif i in failed:
                    counters.add(read_misses_failed=1)
    return out


def write_plan(owners: Owners, allow: Allow, counters: PodCounters) -> Plan:
    """Writes (put): every key to all its live owners in one round. ``True`` for a key when
    some replica stored it in this call (see ``Client.put_many``)."""
    parts: Parts = {}
    for i, own in enumerate(owners):
        for node in own:
            if allow(node):
                parts.setdefault(node, []).append(i)
            else:
                counters.add(writes_skipped=1)
    out = [False] * len(owners)
    if not parts:
        return out
    answers = yield parts
    for node, idxs in parts.items():
        got = answers[node]
        if got is FAILED:
            counters.add(writes_skipped=len(idxs))
            continue
        for pos, i in enumerate(idxs):
            out[i] = out[i] or bool(got[pos])
    return out


def count_plan(owners: Owners, allow: Allow, every_replica: bool) -> Plan:
    """Batch calls that answer a count (delete: every replica; prefetch: the first live one,
    the next on failure). Only the first live owner's answers are counted, so a key deleted
    on two replicas counts once."""
    total = 0
    tried = [0] * len(owners)
    pending = list(range(len(owners)))
    while pending:
        parts: Parts = {}
        counted: dict[str, list[int]] = {}
        for i in pending:
            j = _pick(owners[i], tried[i], allow)
            tried[i] = j + 1
            if j >= len(owners[i]):
                continue
            counted.setdefault(owners[i][j], []).append(i)
            if every_replica:
                tried[i] = len(owners[i])
                for node in owners[i][j + 1:]:
                    if allow(node):
                        parts.setdefault(f"\0{node}", []).append(i)  # uncounted part
        parts.update(counted)
        if not parts:
            break
        answers = yield parts
        pending = []
        for node, idxs in counted.items():
            if answers[node] is FAILED:
                pending.extend(i for i in idxs if tried[i] < len(owners[i]))
            else:
                total += int(answers[node])
    return total


def lookup_plan(owners: Owners, allow: Allow, counters: PodCounters) -> Plan:
    """Longest present prefix of a chain across the pod. Each node is asked for the longest
    present prefix of *its* keys (in chain order), all nodes in one parallel round: a node's
    answer L says its first L keys are present and its (L+1)-th is not, so the pod's prefix
    ends at the earliest key some node reports absent. With replicas, keys not known present
    (from that point on) are asked again at their next replica, one more round per replica."""
    n = len(owners)
    present = [False] * n
    tried = [0] * n
    failed: set[int] = set()
    start = 0
    while True:
        parts: Parts = {}
        for i in range(start, n):
            if present[i]:
                continue
            j = _pick(owners[i], tried[i], allow)
            tried[i] = j + 1
            if j < len(owners[i]):
                parts.setdefault(owners[i][j], []).append(i)
        if not parts:
            break
        answers = yield parts
        for node, idxs in parts.items():
            got = answers[node]
            if got is FAILED:
                failed.update(idxs)
                continue
            for i in idxs[:int(got)]:
                present[i] = True
                failed.discard(i)
        start = next((i for i in range(n) if not present[i]), n)
        if start == n or tried[start] >= len(owners[start]):
            break  # the prefix can only grow if its first absent key has another owner
        counters.add(read_fallbacks=1)
    prefix = next((i for i in range(n) if not present[i]), n)
    if prefix < n and prefix in failed:
        counters.add(read_misses_failed=1)
    return prefix
