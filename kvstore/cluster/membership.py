"""``Membership``: the current view of a pod's live nodes, and who is told when it changes.

A node is a ``NodeInfo`` (id, HTTP and bulk endpoints, capacity, start epoch); placement sees
it as a ``Member`` weighted by capacity. Two sources:

- ``StaticMembership``: a fixed list (``kvstore serve --peers FILE``, a JSON list of nodes);
- ``kvstore.cluster.etcd.EtcdMembership``: nodes registered under etcd leases, watched.

The view is a plain mapping replaced as a whole on every change (readers never see it half
updated); ``watch(callback)`` calls ``callback(view)`` after each change, on the event loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kvstore.cluster.placement import Member, owners
from kvstore.errors import InvalidArgument

log = logging.getLogger("kvstore.cluster")

View = Mapping[str, "NodeInfo"]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One storage node as the pod knows it (the JSON value of its etcd key)."""

    node_id: str
    http: str  # base URL of the S3 API and /v1, e.g. http://127.0.0.11:8700
    bulk: str  # host:port of the bulk binary protocol ("" if this build has none)
    capacity_bytes: int
    epoch: float = 0.0  # start time (Unix seconds): tells a restarted node from the old one

    def member(self) -> Member:
        return Member(self.node_id, float(max(1, self.capacity_bytes)))

    def to_json(self) -> bytes:
        d = asdict(self)
        d.pop("node_id")
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_dict(cls, node_id: str, d: Mapping[str, Any]) -> NodeInfo:
        try:
            return cls(node_id=str(node_id), http=str(d["http"]), bulk=str(d.get("bulk", "")),
                       capacity_bytes=int(d.get("capacity_bytes", 1)),
                       epoch=float(d.get("epoch", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"node {node_id!r}: bad description {dict(d)!r}: {exc}") from None

    @classmethod
    def from_json(cls, node_id: str, raw: bytes) -> NodeInfo:
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise InvalidArgument(f"node {node_id!r}: value is not JSON: {exc}") from None
        if not isinstance(d, dict):
            raise InvalidArgument(f"node {node_id!r}: value is not a JSON object")
        return cls.from_dict(node_id, d)


class Membership:
    """The view of live nodes. Subclasses feed it through ``_set_view``."""

    kind = "none"

    def __init__(self, self_id: str = "") -> None:
        self.self_id = self_id
        self._view: dict[str, NodeInfo] = {}
        self._watchers: list[Callable[[View], None]] = []

    # -- reading ---------------------------------------------------------------------------
    def view(self) -> View:
        """The live nodes by id (a snapshot: later changes replace it, never mutate it)."""
        return self._view

    def members(self) -> list[Member]:
        """The live nodes as placement's ``Member``s, by id."""
        return [self._view[k].member() for k in sorted(self._view)]

    def owners(self, ns: str, key: str, replicas: int = 1) -> list[NodeInfo]:
        """The live nodes that own block ``key`` of ``ns``, best first (weighted rendezvous
        over the current view: what the SDK's placement computes for the same view)."""
        view = self._view
        return [view[m.node_id] for m in owners(ns, key, self.members(), replicas)]

    def is_mine(self, ns: str, key: str, replicas: int = 1) -> bool:
        """Whether this node is one of the block's owners (True while the view is empty or
        lacks this node: a node alone serves everything)."""
        if self.self_id not in self._view:
            return True
        return any(n.node_id == self.self_id for n in self.owners(ns, key, replicas))

    @property
    def connected(self) -> bool:
        """Whether the view is being kept current (always True for a static list)."""
        return True

    # -- change ----------------------------------------------------------------------------
    def watch(self, callback: Callable[[View], None]) -> Callable[[], None]:
        """Call ``callback(view)`` after every change; returns a function that stops it."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _set_view(self, view: dict[str, NodeInfo]) -> None:
        if view == self._view:
            return
        gone = sorted(set(self._view) - set(view))
        came = sorted(set(view) - set(self._view))
        self._view = view
        if gone or came:
            log.info("pod view: %d node(s)%s%s", len(view),
                     f"; joined {', '.join(came)}" if came else "",
                     f"; left {', '.join(gone)}" if gone else "")
        for cb in list(self._watchers):
            try:
                cb(view)
            except Exception:  # noqa: BLE001 - one bad watcher must not stop the others
                log.exception("membership watcher failed")

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Begin keeping the view (and, for a registering source, register this node)."""

    async def stop(self) -> None:
        """Deregister (where it registered) and stop watching. Safe to call twice."""

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "self": self.self_id, "connected": self.connected,
                "nodes": {k: asdict(v) for k, v in sorted(self._view.items())}}


class StaticMembership(Membership):
    """A fixed list of nodes: every node is taken to be live."""

    kind = "static"

    def __init__(self, nodes: list[NodeInfo], self_id: str = "") -> None:
        super().__init__(self_id)
        ids = [n.node_id for n in nodes]
        if len(set(ids)) != len(ids):
            raise InvalidArgument(f"node ids must be unique, got {ids}")
        self._set_view({n.node_id: n for n in nodes})


def parse_peers(doc: object) -> list[NodeInfo]:
    """Nodes from a peers document: a JSON list of ``{"node_id", "http", "bulk",
    "capacity_bytes"}`` objects (``id`` is accepted for ``node_id``)."""
    if not isinstance(doc, list) or not doc:
        raise InvalidArgument("peers: expected a non-empty JSON list of nodes")
    out = []
    for i, d in enumerate(doc):
        if not isinstance(d, dict):
            raise InvalidArgument(f"peers[{i}]: expected an object, got {d!r}")
        node_id = d.get("node_id", d.get("id"))
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgument(f"peers[{i}]: needs a non-empty node_id")
        out.append(NodeInfo.from_dict(node_id, d))
    return out


def load_peers(path: str) -> list[NodeInfo]:
    """``parse_peers`` of a JSON file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise InvalidArgument(f"peers file {path!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidArgument(f"peers file {path!r}: not JSON: {exc}") from None
    return parse_peers(doc)
