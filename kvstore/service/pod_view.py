"""The pod's nodes with their figures, for ``GET /v1/pod/stats`` (the ``/ui`` pod table).

Each live node's unauthenticated ``/metrics`` is read in parallel, bounded by
``cluster.status.STATUS_HTTP_TIMEOUT_S`` each (a node that does not answer is listed as
unreachable), through the same parser ``kvstore pod status`` uses. At most ``pod_nodes_max``
nodes: the reads are bounded in count and time.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from kvstore import limits
from kvstore.cluster.membership import Membership
from kvstore.cluster.status import node_stats, summarize


async def pod_stats(membership: Membership | None,
                    tls: ssl.SSLContext | None = None) -> dict[str, Any]:
    """``tls``: the node's peer context (its pod CA and certificate) for nodes on HTTPS."""
    if membership is None:
        return {"kind": "none", "self": "", "nodes": []}
    view = membership.view()
    ids = sorted(view)[:limits.pod_nodes_max]
    got = await asyncio.gather(*(asyncio.to_thread(node_stats, view[i].http, tls) for i in ids))
    nodes = []
    for node_id, (stats, error) in zip(ids, got, strict=True):
        info = view[node_id]
        row: dict[str, Any] = {"node_id": node_id, "http": info.http, "bulk": info.bulk,
                               "capacity_bytes": info.capacity_bytes,
                               "self": node_id == membership.self_id,
                               "reachable": stats is not None}
        if stats is None:
            row["error"] = error
        else:
            row.update(summarize(stats))
        nodes.append(row)
    return {"kind": membership.kind, "self": membership.self_id, "nodes": nodes}
