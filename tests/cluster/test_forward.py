"""Any-node access with real ``kvstore serve`` processes on 127.0.0.11-13 (static ``--peers``)
and boto3: a block PUT through one node is read byte-exact through another and lands on its
owner; a SIGKILLed owner's blocks turn into 404s while every other block keeps serving, with
no 5xx; the forwarded-request counter counts; a previous owner is asked after a join, and its hits are copied forward to the new owner."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from kvstore_client import Client

from kvstore.cluster.membership import StaticMembership, load_peers

from .conftest import free_port
from .nodes import PodNode, until

BUCKET = "pod"


def s3(node: PodNode):  # noqa: ANN201 - a boto3 client
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    return boto3.client("s3", endpoint_url=node.url, region_name="us-east-1",
                        aws_access_key_id="dev", aws_secret_access_key="dev",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


def write_peers(path: Path, ports: dict[int, tuple[int, int]]) -> Path:
    path.write_text(json.dumps([
        {"node_id": f"node{i}", "http": f"http://127.0.0.{10 + i}:{h}",
         "bulk": f"127.0.0.{10 + i}:{b}", "capacity_bytes": 32 << 20}
        for i, (h, b) in sorted(ports.items())]))
    return path


def start(tmp: Path, peers: Path, ports: dict[int, tuple[int, int]], ids: list[int]) -> list[PodNode]:
    # 8 MiB segments: a multipart object's parts are at least 5 MiB (S3's minimum part size)
    nodes = [PodNode(tmp, i, ["--peers", str(peers), "--forward-timeout", "0.5"],
                     "--port", str(ports[i][0]), "--bulk-port", str(ports[i][1]),
                     "--capacity", "64MiB", "--segment-size", "8MiB") for i in ids]
    return [n.wait_ready() for n in nodes]


def ports_for(ids: list[int]) -> dict[int, tuple[int, int]]:
    return {i: (free_port(f"127.0.0.{10 + i}"), free_port(f"127.0.0.{10 + i}")) for i in ids}


@pytest.fixture
def pod3(tmp_path: Path) -> Iterator[tuple[list[PodNode], StaticMembership]]:
    ports = ports_for([1, 2, 3])
    peers = write_peers(tmp_path / "peers.json", ports)
    nodes: list[PodNode] = []
    try:
        nodes = start(tmp_path, peers, ports, [1, 2, 3])
        for n in nodes:  # static membership: namespaces are not pod-wide, create on each
            s3(n).create_bucket(Bucket=BUCKET)
        yield nodes, StaticMembership(load_peers(str(peers)))
    finally:
        for n in nodes:
            n.kill()


def local_has(node: PodNode, keys: list[str], ns: str = BUCKET) -> list[bool]:
    """What ``node`` itself stores: its bulk port, which never forwards."""
    m = re.search(rf"bulk .*?{re.escape(node.host)}:(\d+)", node.out)
    assert m, node.out
    with Client(node.host, int(m.group(1)), namespace=ns, timeout=5) as c:
        return c.exists_many(keys)


def forwarded(node: PodNode, op: str, outcome: str) -> float:
    text = node.request("GET", "/metrics")[1].decode()
    m = re.search(rf'kvstore_forwarded_requests_total{{op="{op}",outcome="{outcome}"}} (\S+)',
                  text)
    return float(m.group(1)) if m else 0.0


def copies(node: PodNode, outcome: str) -> float:
    text = node.request("GET", "/metrics")[1].decode()
    m = re.search(rf'kvstore_copy_forward_total{{outcome="{outcome}"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_put_through_a_get_through_b_lands_on_owner_and_kill_is_a_miss(pod3) -> None:  # noqa: ANN001
    nodes, view = pod3
    a, b, c = nodes
    by_id = {n.node_id: n for n in nodes}
    keys = [f"blk{i:03d}" for i in range(24)]
    data = {k: os.urandom(1000 + 4099 * i) for i, k in enumerate(keys)}
    data[keys[0]] = os.urandom(3 << 20)
    owner = {k: view.owners(BUCKET, k)[0].node_id for k in keys}
    assert set(owner.values()) == {"node1", "node2", "node3"}
    for k in keys:
        assert s3(a).put_object(Bucket=BUCKET, Key=k, Body=data[k])["ResponseMetadata"][
            "HTTPStatusCode"] == 200
    for k in keys:  # byte-exact through another node; HEAD through a third
        assert s3(b).get_object(Bucket=BUCKET, Key=k)["Body"].read() == data[k]
        assert s3(c).head_object(Bucket=BUCKET, Key=k)["ContentLength"] == len(data[k])
    got = s3(b).get_object(Bucket=BUCKET, Key=keys[1], Range="bytes=10-99")["Body"].read()
    assert got == data[keys[1]][10:100]
    for n in nodes:  # each block is on its owner, and only there
        assert local_has(n, keys) == [owner[k] == n.node_id for k in keys]
    assert forwarded(b, "get", "ok") >= sum(1 for k in keys if owner[k] != "node2")
    assert forwarded(a, "put", "ok") == sum(1 for k in keys if owner[k] != "node1")
    # /v1 through any node sees the pod
    st, doc = c.request("POST", f"/v1/{BUCKET}/exists",
                        json.dumps({"keys": [*keys, "absent"]}).encode())
    assert st == 200 and doc["exists"] == [True] * len(keys) + [False], doc
    st, doc = a.request("POST", f"/v1/{BUCKET}/lookup", json.dumps({"keys": keys}).encode())
    assert st == 200 and doc["prefix_len"] == len(keys), doc
    st, doc = b.request("POST", f"/v1/{BUCKET}/prefetch", json.dumps({"keys": keys}).encode())
    assert st == 200, doc
    for n in nodes:  # a listing through any node shows the whole pod, in order, paged too
        listed = s3(n).list_objects_v2(Bucket=BUCKET)["Contents"]
        assert [o["Key"] for o in listed] == sorted(keys)
        assert {o["Key"]: o["Size"] for o in listed} == {k: len(v) for k, v in data.items()}
    pages = s3(b).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, PaginationConfig={
        "PageSize": 5})
    assert [o["Key"] for p in pages for o in p["Contents"]] == sorted(keys)
    assert forwarded(b, "list", "ok") >= 2
    gone = next(k for k in keys if owner[k] == "node3")
    s3(a).delete_object(Bucket=BUCKET, Key=gone)
    assert local_has(c, [gone]) == [False]
    keys.remove(gone)

    c.proc.send_signal(signal.SIGSTOP)  # a node that accepts but never answers: the timeout
    try:
        k3 = next(k for k in keys if owner[k] == "node3")
        for _ in range(4):  # misses within --forward-timeout; then the breaker skips node3
            with pytest.raises(ClientError) as e:
                s3(a).get_object(Bucket=BUCKET, Key=k3)
            assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert forwarded(a, "get", "failed") >= 3 and forwarded(a, "get", "breaker_open") >= 1
    finally:
        c.proc.send_signal(signal.SIGCONT)
    c.kill()  # SIGKILL: node3's blocks are misses, everything else keeps serving
    for k in keys:
        for n in (a, b):
            if owner[k] == "node3":
                with pytest.raises(ClientError) as e:
                    s3(n).get_object(Bucket=BUCKET, Key=k)
                assert e.value.response["Error"]["Code"] == "NoSuchKey"
                assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
            else:
                assert s3(n).get_object(Bucket=BUCKET, Key=k)["Body"].read() == data[k]
    new = next(f"new{i}" for i in range(1000)
               if view.owners(BUCKET, f"new{i}")[0].node_id == "node3")
    r = s3(a).put_object(Bucket=BUCKET, Key=new, Body=b"x" * 100)  # a skipped write, not a 5xx
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    st, doc = a.request("POST", f"/v1/{BUCKET}/exists", json.dumps({"keys": keys}).encode())
    assert st == 200 and doc["exists"] == [owner[k] != "node3" for k in keys]
    listed = s3(b).list_objects_v2(Bucket=BUCKET)["Contents"]  # the live nodes' keys
    assert [o["Key"] for o in listed] == sorted(k for k in keys if owner[k] != "node3")
    assert forwarded(a, "get", "failed") + forwarded(a, "get", "breaker_open") >= 1
    assert forwarded(a, "put", "failed") + forwarded(a, "put", "breaker_open") == 1
    assert by_id["node1"].proc.poll() is None and by_id["node2"].proc.poll() is None


def test_a_join_without_a_cliff_reads_ask_the_previous_owner(tmp_path: Path) -> None:
    """Blocks written to a 2-node pod; the pod restarts as 3 nodes (same data dirs): a block
    whose owner is now the new node is still read, from its previous owner (one extra hop)."""
    ports = ports_for([1, 2, 3])
    two = write_peers(tmp_path / "two.json", {i: ports[i] for i in (1, 2)})
    three = write_peers(tmp_path / "three.json", ports)
    keys = [f"chain{i:03d}" for i in range(30)]
    data = {k: os.urandom(2000 + i) for i, k in enumerate(keys)}
    nodes = start(tmp_path, two, ports, [1, 2])
    try:
        for n in nodes:
            s3(n).create_bucket(Bucket=BUCKET)
        for k in keys:
            s3(nodes[0]).put_object(Bucket=BUCKET, Key=k, Body=data[k])
        for n in nodes:
            assert n.stop() == 0
    finally:
        for n in nodes:
            n.kill()
    after = StaticMembership(load_peers(str(three)))
    before = StaticMembership(load_peers(str(two)))
    moved = [k for k in keys if after.owners(BUCKET, k)[0].node_id == "node3"]
    assert moved  # about a third
    for k in moved:  # the previous owner in the 3-node rank is the 2-node owner
        assert after.owners(BUCKET, k, 2)[1].node_id == before.owners(BUCKET, k)[0].node_id
    nodes = start(tmp_path, three, ports, [1, 2, 3])
    try:
        s3(nodes[2]).create_bucket(Bucket=BUCKET)
        assert local_has(nodes[2], moved) == [False] * len(moved)
        for n in nodes:
            for k in keys:  # every block of the warm pod still hits, through every node
                assert s3(n).get_object(Bucket=BUCKET, Key=k)["Body"].read() == data[k]
                assert s3(n).head_object(Bucket=BUCKET, Key=k)["ContentLength"] == len(data[k])
        # copy-forward: each hit at the previous owner was copied to the new owner, node3
        until(lambda: local_has(nodes[2], moved) == [True] * len(moved), "blocks copied forward")
        assert sum(copies(n, "ok") for n in nodes) >= len(moved)
        assert sum(copies(n, "failed") + copies(n, "dropped") for n in nodes) == 0
        by_id = {n.node_id: n for n in nodes}
        prev = {k: by_id[before.owners(BUCKET, k)[0].node_id] for k in moved}
        assert all(local_has(prev[k], [k]) == [True] for k in moved)  # copies, not moves
        gone, rewritten = moved[0], moved[1]
        s3(nodes[0]).delete_object(Bucket=BUCKET, Key=gone)  # at the owner and the previous one
        data[rewritten] = b"new bytes"
        s3(nodes[1]).put_object(Bucket=BUCKET, Key=rewritten, Body=data[rewritten])
        assert local_has(prev[gone], [gone]) == [False]  # nothing to come back from
        assert local_has(prev[rewritten], [rewritten]) == [False]  # no stale copy left there
        for n in nodes:
            with pytest.raises(ClientError) as e:
                s3(n).get_object(Bucket=BUCKET, Key=gone)
            assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        moved.remove(gone)
        for n in nodes[:2]:  # the previous owners gone: node3 serves the moved blocks itself
            n.kill()
        for k in moved:
            assert s3(nodes[2]).get_object(Bucket=BUCKET, Key=k)["Body"].read() == data[k]
    finally:
        for n in nodes:
            n.kill()


def test_with_credentials_peers_act_as_the_caller(tmp_path: Path) -> None:
    """Every node reads the same credentials file: the entry node reaches the owner as the
    caller (bulk HELLO for blocks, a SigV4-signed /v1 listing), and the owner's policy holds."""
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"tenants": [
        {"name": "acme", "access_key": "AKIAACME", "secret_key": "acme-secret"},
        {"name": "other", "access_key": "AKIAOTHER", "secret_key": "other-secret"}]}))
    ports = ports_for([1, 2])
    peers = write_peers(tmp_path / "peers.json", ports)
    nodes = [PodNode(tmp_path, i, ["--peers", str(peers), "--credentials", str(creds)],
                     "--port", str(ports[i][0]), "--bulk-port", str(ports[i][1]))
             for i in (1, 2)]
    try:
        a, b = (n.wait_ready() for n in nodes)

        def client(n: PodNode, ak: str, sk: str):  # noqa: ANN202
            os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
            return boto3.client("s3", endpoint_url=n.url, region_name="us-east-1",
                                aws_access_key_id=ak, aws_secret_access_key=sk,
                                config=Config(s3={"addressing_style": "path"},
                                              retries={"max_attempts": 1}))

        for n in (a, b):
            client(n, "AKIAACME", "acme-secret").create_bucket(Bucket=BUCKET)
        view = StaticMembership(load_peers(str(peers)))
        keys = [f"k{i}" for i in range(12)]
        assert {view.owners(BUCKET, k)[0].node_id for k in keys} == {"node1", "node2"}
        for k in keys:
            client(a, "AKIAACME", "acme-secret").put_object(Bucket=BUCKET, Key=k, Body=k.encode())
        for k in keys:
            got = client(b, "AKIAACME", "acme-secret").get_object(Bucket=BUCKET, Key=k)
            assert got["Body"].read() == k.encode()
        listed = client(b, "AKIAACME", "acme-secret").list_objects_v2(Bucket=BUCKET)
        assert [o["Key"] for o in listed["Contents"]] == sorted(keys)
        assert forwarded(b, "list", "ok") >= 1 and forwarded(b, "list", "failed") == 0
        with pytest.raises(ClientError) as e:  # another tenant is refused at the entry
            client(b, "AKIAOTHER", "other-secret").get_object(Bucket=BUCKET, Key=keys[0])
        assert e.value.response["Error"]["Code"] == "AccessDenied"
    finally:
        for n in nodes:
            n.kill()


def test_a_forwarded_put_keeps_its_s3_metadata(pod3) -> None:  # noqa: ANN001
    """PUT through a node that does not own the block: the owner stores the S3 metadata it
    came with (carried in the bulk PUT), so HEAD and GET through the owner and through a third
    node answer the same content type, encoding, user metadata, ETag and Last-Modified."""
    nodes, view = pod3
    by_id = {n.node_id: n for n in nodes}
    key = next(f"meta{i}" for i in range(1000) if view.owners(BUCKET, f"meta{i}")[0].node_id
               == "node2")
    a, b, c = by_id["node1"], by_id["node2"], by_id["node3"]
    body = os.urandom(5000)
    put = s3(a).put_object(Bucket=BUCKET, Key=key, Body=body, ContentType="text/x-kv",
                           ContentEncoding="identity", Metadata={"model": "llama", "layer": "7"})
    assert local_has(b, [key]) == [True] and local_has(a, [key]) == [False]
    seen = []
    for n in (b, c, a):
        for got in (s3(n).head_object(Bucket=BUCKET, Key=key),
                    s3(n).get_object(Bucket=BUCKET, Key=key)):
            seen.append((got["ContentType"], got.get("ContentEncoding"), got["Metadata"],
                         got["ETag"], got["LastModified"]))
        assert s3(n).get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert seen[0] == ("text/x-kv", "identity", {"model": "llama", "layer": "7"}, put["ETag"],
                       seen[0][4])
    assert all(s == seen[0] for s in seen), seen


def test_multipart_copy_and_delete_objects_through_a_non_owner(pod3) -> None:  # noqa: ANN001
    """Through node1, for blocks node2 owns: a multipart upload's parts stay on node1 and the
    completed object lands on node2; CopyObject reads its source through the pod and writes
    its destination through the pod; DeleteObjects deletes each key at its owner."""
    nodes, view = pod3
    by_id = {n.node_id: n for n in nodes}
    a, b, c = by_id["node1"], by_id["node2"], by_id["node3"]

    def owned_by(node_id: str, stem: str, n: int = 1) -> list[str]:
        return [k for k in (f"{stem}{i}" for i in range(2000))
                if view.owners(BUCKET, k)[0].node_id == node_id][:n]

    cl = s3(a)
    mp_key = owned_by("node2", "mp")[0]
    up = cl.create_multipart_upload(Bucket=BUCKET, Key=mp_key, ContentType="text/x-mp",
                                    Metadata={"kind": "multipart"})
    parts_data = [os.urandom(5 << 20), os.urandom(1234)]  # S3's smallest part, then the last
    done = []
    for i, pd in enumerate(parts_data, 1):
        r = cl.upload_part(Bucket=BUCKET, Key=mp_key, UploadId=up["UploadId"], PartNumber=i,
                           Body=pd)
        done.append({"PartNumber": i, "ETag": r["ETag"]})
    fin = cl.complete_multipart_upload(Bucket=BUCKET, Key=mp_key, UploadId=up["UploadId"],
                                       MultipartUpload={"Parts": done})
    assert local_has(b, [mp_key]) == [True] and local_has(a, [mp_key]) == [False]
    got = s3(c).get_object(Bucket=BUCKET, Key=mp_key)
    assert got["Body"].read() == b"".join(parts_data)
    assert got["ETag"] == fin["ETag"] and got["ETag"].endswith('-2"')
    assert got["ContentType"] == "text/x-mp" and got["Metadata"] == {"kind": "multipart"}

    src = owned_by("node3", "src")[0]  # source on node3, destination on node2, through node1
    dst = owned_by("node2", "dst")[0]
    body = os.urandom(7000)
    cl.put_object(Bucket=BUCKET, Key=src, Body=body, ContentType="text/x-src",
                  Metadata={"from": "src"})
    cp = cl.copy_object(Bucket=BUCKET, Key=dst, CopySource={"Bucket": BUCKET, "Key": src})
    assert local_has(b, [dst]) == [True] and local_has(a, [dst]) == [False]
    got = s3(c).get_object(Bucket=BUCKET, Key=dst)
    assert got["Body"].read() == body and got["ETag"] == cp["CopyObjectResult"]["ETag"]
    assert got["ContentType"] == "text/x-src" and got["Metadata"] == {"from": "src"}
    part_src = owned_by("node3", "psrc")[0]  # UploadPartCopy reads its source through the pod
    cl.put_object(Bucket=BUCKET, Key=part_src, Body=body)
    up2 = cl.create_multipart_upload(Bucket=BUCKET, Key=dst)
    pc = cl.upload_part_copy(Bucket=BUCKET, Key=dst, UploadId=up2["UploadId"], PartNumber=1,
                             CopySource={"Bucket": BUCKET, "Key": part_src},
                             CopySourceRange="bytes=0-999")
    cl.complete_multipart_upload(Bucket=BUCKET, Key=dst, UploadId=up2["UploadId"],
                                 MultipartUpload={"Parts": [
                                     {"PartNumber": 1, "ETag": pc["CopyPartResult"]["ETag"]}]})
    assert s3(b).get_object(Bucket=BUCKET, Key=dst)["Body"].read() == body[:1000]

    doomed = owned_by("node2", "del", 3) + owned_by("node3", "del", 3) + owned_by("node1", "del", 2)
    for k in doomed:
        cl.put_object(Bucket=BUCKET, Key=k, Body=k.encode())
    r = cl.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in doomed]})
    assert sorted(d["Key"] for d in r["Deleted"]) == sorted(doomed) and not r.get("Errors")
    for n in nodes:
        assert local_has(n, doomed) == [False] * len(doomed)
