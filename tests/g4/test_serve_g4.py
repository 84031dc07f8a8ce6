"""`kvstore serve --g4 s3://BUCKET/PREFIX --g4-endpoint URL` end to end (a real subprocess
spilling to a real SeaweedFS on 127.0.0.1), and how the flags resolve (``config.resolve_g4``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from kvstore.config import ConfigError, from_argv
from kvstore.testing_s3 import KvstoreS3, SeaweedS3

ENDPOINT = ["--g4-endpoint", "http://127.0.0.1:9"]
AWS = {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk"}


def test_g4_flags_resolve_once_with_credentials_from_env_or_file(tmp_path: Path) -> None:
    cfg = from_argv(["--g4", "s3://cold-bucket/pods/a", *ENDPOINT], {**AWS, "AWS_REGION": "eu-1"})
    g = cfg.g4
    assert g is not None and (g.bucket, g.prefix, g.region) == ("cold-bucket", "pods/a", "eu-1")
    assert (g.access_key, g.secret_key) == ("ak", "sk") and "sk" not in repr(cfg)
    creds = tmp_path / "g4.json"
    creds.write_text(json.dumps({"access_key_id": "fa", "secret_access_key": "fs"}))
    g = from_argv(["--g4", "s3://cold-bucket", *ENDPOINT, "--g4-credentials", str(creds),
                   "--g4-region", "r2"], {}).g4
    assert g is not None and (g.access_key, g.secret_key, g.region, g.prefix) == (
        "fa", "fs", "r2", "")
    assert from_argv([], AWS).g4 is None


@pytest.mark.parametrize(("argv", "env", "match"), [
    (["--g4", "s3://cold-bucket/p"], AWS, "--g4-endpoint"),
    (["--g4", "http://x/y", *ENDPOINT], AWS, "s3://BUCKET"),
    (["--g4", "s3://cold-bucket/p", *ENDPOINT], {}, "credentials"),
    (ENDPOINT, AWS, "need --g4"),
    (["--g4", "s3://cold-bucket/p", *ENDPOINT, "--g4-spill-rate", "1KiB"], AWS, "spill-rate"),
])
def test_g4_flag_errors(argv: list[str], env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_argv(argv, env)


def test_serve_with_g4_spills_and_reads_through(seaweed: SeaweedS3) -> None:
    """A node of 4 MiB flash takes 16 MiB of S3 PUTs and serves every one back byte-exact,
    the cold ones from G4 (its stats say so)."""
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    extra = ("--g4", f"s3://{seaweed.bucket}/serve", "--g4-endpoint", seaweed.endpoint,
             "--g4-region", seaweed.region)
    node = KvstoreS3(bucket="hot-bucket", capacity="4MiB",
                     extra=(*extra, "--segment-size", "1MiB", "--dram", "1MiB"),
                     env={"AWS_ACCESS_KEY_ID": seaweed.access_key,
                          "AWS_SECRET_ACCESS_KEY": seaweed.secret_key})
    node.start()
    try:
        c = boto3.client("s3", endpoint_url=node.endpoint, region_name="us-east-1",
                         aws_access_key_id="dev", aws_secret_access_key="dev",
                         config=Config(s3={"addressing_style": "path"}))
        data = {f"obj-{i:03d}": os.urandom(128 * 1024) for i in range(128)}
        for i, (k, v) in enumerate(data.items()):
            c.put_object(Bucket="hot-bucket", Key=k, Body=v)
            if i % 16 == 15:
                wait_queue_empty(node)
        wait_queue_empty(node)
        for k, v in data.items():
            assert c.get_object(Bucket="hot-bucket", Key=k)["Body"].read() == v
        stats = node_stats(node)
        assert stats["g4_spilled_blocks"] > 0 and stats["hits_lower"] > 0, stats
        metrics = http_get(node, "/metrics").decode()
        for name in ("kvstore_g4_spilled_bytes", "kvstore_g4_upload_queue_segments",
                     'kvstore_g4_read_latency_ms{quantile="0.99"}',
                     'kvstore_engine_hits_total{tier="g4"}'):
            assert name in metrics, name
    finally:
        node.close()


def http_get(node: KvstoreS3, path: str) -> bytes:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def node_stats(node: KvstoreS3) -> dict[str, float]:
    return dict(json.loads(http_get(node, "/v1/stats"))["stats"])


def wait_queue_empty(node: KvstoreS3, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while node_stats(node).get("g4_upload_queue_segments", 0):
        assert time.monotonic() < deadline, "spill queue never drained"
        time.sleep(0.05)
