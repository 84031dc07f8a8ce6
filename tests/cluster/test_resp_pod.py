"""The Redis listener in a pod: real ``kvstore serve --resp-port`` processes on 127.0.0.11-12
(static ``--peers``). Values SET through one node land on their owners and are read byte-exact
(GET, MGET), counted (EXISTS) and deleted (DEL) through the other, as the S3 front end does."""

from __future__ import annotations

import os
import re
from pathlib import Path

import redis

from kvstore.cluster.membership import StaticMembership, load_peers

from .nodes import PodNode
from .test_forward import BUCKET, local_has, ports_for, s3, write_peers


def resp(node: PodNode) -> redis.Redis:
    m = re.search(rf"redis://{re.escape(node.host)}:(\d+)", node.out)
    assert m, node.out
    return redis.Redis(host=node.host, port=int(m.group(1)), socket_timeout=10)


def test_resp_reads_and_writes_reach_the_owner(tmp_path: Path) -> None:
    ports = ports_for([1, 2])
    peers = write_peers(tmp_path / "peers.json", ports)
    nodes = [PodNode(tmp_path, i, ["--peers", str(peers), "--forward-timeout", "2"],
                     "--port", str(ports[i][0]), "--bulk-port", str(ports[i][1]),
                     "--resp-port", "0", "--resp-namespace", BUCKET) for i in (1, 2)]
    try:
        a, b = [n.wait_ready() for n in nodes]
        for n in (a, b):  # static membership: namespaces are not pod-wide
            s3(n).create_bucket(Bucket=BUCKET)
        view = StaticMembership(load_peers(str(peers)))
        keys = [f"r{i:02d}" for i in range(16)]
        owner = {k: view.owners(BUCKET, k)[0].node_id for k in keys}
        assert set(owner.values()) == {"node1", "node2"}
        data = {k: os.urandom(100 + 70_001 * i) for i, k in enumerate(keys)}
        ra, rb = resp(a), resp(b)
        for k in keys[:8]:
            assert ra.set(k, data[k]) is True
        assert ra.mset({k: data[k] for k in keys[8:]}) is True
        for n in (a, b):  # each block on its owner, and only there
            assert local_has(n, keys) == [owner[k] == n.node_id for k in keys]
        assert [rb.get(k) for k in keys] == [data[k] for k in keys]
        assert rb.mget([*keys, "absent"]) == [*(data[k] for k in keys), None]
        assert rb.exists(*keys, "absent") == len(keys)
        assert rb.set(keys[0], b"x", nx=True) is None  # NX sees the owner's block
        assert rb.delete(*keys[:4]) == 4
        for n in (a, b):
            assert local_has(n, keys[:4]) == [False] * 4
        assert ra.get(keys[0]) is None and ra.get(keys[5]) == data[keys[5]]
    finally:
        for n in nodes:
            n.kill()
