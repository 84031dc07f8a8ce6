"""LOOKUP with a lease on the bulk port (127.0.0.1): the result says how many blocks the
leased-bytes budget pinned (``leased``), next to ``found``."""

from __future__ import annotations

import os

from kvstore_client import Client
from kvstore_client.client import SyncConnection

from kvstore import limits
from kvstore.engine.leases import lease_span
from kvstore.protocol import messages as msg
from kvstore.protocol.frames import FrameType
from kvstore.testing import BackgroundBulkServer

NS = "bulk-leases"


def test_lookup_result_reports_the_leased_count(bulk: BackgroundBulkServer) -> None:
    size = 2 * limits.MiB
    keys = [f"b{i:02d}" for i in range(20)]
    with Client(port=bulk.port, namespace=NS, create=True, timeout=10) as c:
        assert all(c.put_many(keys, [os.urandom(size) for _ in keys]))
    assert bulk.engine is not None
    budget = bulk.engine.stats()["leased_bytes_budget"]
    fits = budget // lease_span(size)
    assert 0 < fits < len(keys)
    conn = SyncConnection("127.0.0.1", bulk.port, "dev", "", NS, create=True, timeout=10)
    try:
        h = conn.run(conn.core.simple(FrameType.LOOKUP, msg.keys_request(keys, lease=30.0)))
        assert (h["found"], h["leased"]) == (20, fits)
        h = conn.run(conn.core.simple(FrameType.LOOKUP, msg.keys_request(keys)))
        assert (h["found"], h["leased"]) == (20, 0)
    finally:
        conn.close()
    assert bulk.engine.stats()["leases_active"] == fits
