"""Copy-forward is bounded: past ``limits.copy_forward_inflight_max`` copies in flight on a node,
one more is dropped (counted), never queued."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from kvstore import limits
from kvstore.api.metrics import Metrics
from kvstore.auth import Tenant
from kvstore.cluster.membership import NodeInfo, StaticMembership
from kvstore.service import pod_blocks
from kvstore.service.forward import Forwarder


def _count(m: Metrics, outcome: str) -> float:
    text = m.render().decode()
    got = re.search(rf'kvstore_copy_forward_total{{outcome="{outcome}"}} (\S+)', text)
    return float(got.group(1)) if got else 0.0


def test_copies_past_the_bound_are_dropped_and_counted() -> None:
    async def main() -> None:
        nodes = [NodeInfo("n1", "http://127.0.0.11:1", "127.0.0.11:2", 1),
                 NodeInfo("n2", "http://127.0.0.12:1", "127.0.0.12:2", 1)]
        metrics = Metrics()
        fw = Forwarder(StaticMembership(nodes, "n1"), metrics=lambda: metrics)
        loop = asyncio.get_running_loop()
        busy = [loop.create_future() for _ in range(limits.copy_forward_inflight_max)]
        fw.copies.update({("ns", f"busy{i}"): f for i, f in enumerate(busy)})  # at the bound
        bs: Any = None  # not reached: a dropped copy reads nothing
        pod_blocks.copy_forward(bs, fw, Tenant("t", "ak", "sk"), "ns", "k",
                                (b"x", b"", 0.0, 0.0), [nodes[1]])
        assert _count(metrics, "dropped") == 1 and _count(metrics, "started") == 0
        assert len(fw.copies) == limits.copy_forward_inflight_max
        fw.cancel_copies("ns", ["busy0"])  # a delete of a block being copied cancels its copy
        assert busy[0].cancelled() and ("ns", "busy0") not in fw.copies
        for f in busy:
            f.cancel()

    asyncio.run(main())
