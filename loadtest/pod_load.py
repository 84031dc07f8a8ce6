"""Pod load generator (the `loadgen` service of docker-compose.yml; runs anywhere).

    python loadtest/pod_load.py --nodes http://127.0.0.11:8700,http://127.0.0.12:8700 --seconds 10

Waits (bounded) for every node's /readyz, creates one bucket through the first node (the pod
makes it exist on all), then for ``--seconds`` PUTs blocks through each node in turn and GETs
each back through the node it went to, checking the bytes. Prints one line per node and a total:
requests per second and mismatches (which must be 0). Credentials: the usual AWS_* variables
(any value in development mode).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request

READY_WAIT_S = 120.0
BLOCK_BYTES_DEFAULT = 256 * 1024


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"pod_load: {url} not ready within {READY_WAIT_S:g}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", required=True, help="comma-separated node base URLs")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--block-bytes", type=int, default=BLOCK_BYTES_DEFAULT)
    ap.add_argument("--bucket", default="podload")
    args = ap.parse_args()
    import boto3
    from botocore.config import Config

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    urls = [u.strip() for u in args.nodes.split(",") if u.strip()]
    for u in urls:
        wait_ready(u)
    clients = [boto3.client("s3", endpoint_url=u, region_name="us-east-1",
                            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "dev"),
                            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "dev"),
                            config=Config(s3={"addressing_style": "path"})) for u in urls]
    try:
        clients[0].create_bucket(Bucket=args.bucket)
    except clients[0].exceptions.BucketAlreadyOwnedByYou:
        pass
    time.sleep(1.0)  # the pod-wide namespace reaches the other nodes by etcd watch
    ops = [0] * len(urls)
    bad = 0
    body = os.urandom(args.block_bytes)
    end = time.monotonic() + args.seconds
    i = 0
    while time.monotonic() < end:
        n = i % len(urls)
        key = f"blk-{i:09d}"
        clients[n].put_object(Bucket=args.bucket, Key=key, Body=body)
        got = clients[n].get_object(Bucket=args.bucket, Key=key)["Body"].read()
        bad += got != body
        ops[n] += 2
        i += 1
    for u, k in zip(urls, ops, strict=True):
        print(f"pod_load: {u}: {k / args.seconds:.1f} req/s")
    print(f"pod_load: total {sum(ops) / args.seconds:.1f} req/s, mismatches {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
