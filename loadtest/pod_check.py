"""End-to-end check of a running pod over S3 (what `make compose-test` runs in the compose pod).

    python loadtest/pod_check.py --nodes http://node1:8700,http://node2:8700,http://node3:8700

Waits (bounded) for every node's /readyz, then:
  0. asks every node for its view of the pod (GET /v1/pod, SigV4-signed): each must list all
     ``--nodes`` (membership learned from etcd);
  1. creates a bucket through the first node;
  2. shows it pod-wide: HeadBucket and ListBuckets through every other node find it (bounded
     wait, the namespace travels by etcd watch);
  3. PUTs one random block through each node into that bucket and GETs it back byte-exact
     through the node that holds it;
  4. GETs each block through a *different* node: byte-exact (any-node forwarding) or a 404 miss
     are both accepted and reported; wrong bytes or any other status fail the check;
  5. deletes the blocks and the bucket through the first node.
Exits 0 when every step passed. Credentials: the usual AWS_* variables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request

READY_WAIT_S = 120.0
NAMESPACE_WAIT_S = 10.0
POLL_S = 0.2
BLOCK_BYTES = 256 * 1024


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
    raise SystemExit(f"pod_check: {url} not ready within {READY_WAIT_S:g}s")


def pod_view(url: str, key: str, secret: str) -> dict:
    """GET {url}/v1/pod signed with SigV4 (the /v1 plane takes the S3 credentials)."""
    import json

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="GET", url=f"{url}/v1/pod",
                     headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials(key, secret), "s3", "us-east-1").add_auth(req)
    r = urllib.request.Request(req.url, headers=dict(req.headers.items()), method="GET")
    with urllib.request.urlopen(r, timeout=5) as resp:
        return json.loads(resp.read())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", required=True, help="comma-separated node base URLs (2 or more)")
    ap.add_argument("--bucket", default=f"podcheck-{os.getpid()}")
    args = ap.parse_args()
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    urls = [u.strip() for u in args.nodes.split(",") if u.strip()]
    if len(urls) < 2:
        raise SystemExit("pod_check: needs two or more nodes")
    for u in urls:
        wait_ready(u)
    s3 = [boto3.client("s3", endpoint_url=u, region_name="us-east-1",
                       aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "dev"),
                       aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "dev"),
                       config=Config(s3={"addressing_style": "path"},
                                     retries={"max_attempts": 1})) for u in urls]
    bucket = args.bucket
    failed = 0
    key = os.environ.get("AWS_ACCESS_KEY_ID", "dev")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "dev")

    for u in urls:
        t0 = time.monotonic()
        while True:
            view = pod_view(u, key, secret)
            if len(view.get("nodes", {})) >= len(urls) or time.monotonic() - t0 > NAMESPACE_WAIT_S:
                break
            time.sleep(POLL_S)
        ok = len(view.get("nodes", {})) == len(urls)
        failed += not ok
        print(f"pod_check: {'ok' if ok else 'FAIL'} {u} is {view.get('self')!r} and sees "
              f"{len(view.get('nodes', {}))} node(s) via {view.get('kind')}: "
              f"{', '.join(sorted(view.get('nodes', {})))}")

    s3[0].create_bucket(Bucket=bucket)
    print(f"pod_check: created bucket {bucket} through {urls[0]}")
    for u, c in zip(urls[1:], s3[1:], strict=True):
        t0 = time.monotonic()
        while True:
            try:
                c.head_bucket(Bucket=bucket)
                break
            except ClientError:
                if time.monotonic() - t0 > NAMESPACE_WAIT_S:
                    print(f"pod_check: FAIL bucket {bucket} not seen through {u} "
                          f"within {NAMESPACE_WAIT_S:g}s")
                    return 1
                time.sleep(POLL_S)
        names = [b["Name"] for b in c.list_buckets()["Buckets"]]
        ok = bucket in names
        failed += not ok
        print(f"pod_check: {'ok' if ok else 'FAIL'} bucket {bucket} seen through {u} after "
              f"{time.monotonic() - t0:.2f}s (HeadBucket; ListBuckets lists it: {ok})")

    bodies = {}
    for n, (u, c) in enumerate(zip(urls, s3, strict=True)):
        key = f"block-via-node{n + 1}"
        body = os.urandom(BLOCK_BYTES)
        bodies[key] = body
        c.put_object(Bucket=bucket, Key=key, Body=body)
        got = c.get_object(Bucket=bucket, Key=key)["Body"].read()
        ok = got == body
        failed += not ok
        print(f"pod_check: {'ok' if ok else 'FAIL'} PUT {key} ({len(body)} bytes) through {u}, "
              f"GET through {u}: {'byte-exact' if ok else 'WRONG BYTES'}")

    for n, key in enumerate(bodies):
        m = (n + 1) % len(urls)
        try:
            got = s3[m].get_object(Bucket=bucket, Key=key)["Body"].read()
            ok = got == bodies[key]
            verdict = "byte-exact (forwarded)" if ok else "WRONG BYTES"
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            ok = status == 404
            verdict = "404 miss (the block lives on another node)" if ok else f"HTTP {status}"
        failed += not ok
        print(f"pod_check: {'ok' if ok else 'FAIL'} GET {key} through {urls[m]}: {verdict}")

    for n, key in enumerate(bodies):
        s3[n].delete_object(Bucket=bucket, Key=key)
    s3[0].delete_bucket(Bucket=bucket)
    print(f"pod_check: {'FAILED ' + str(failed) + ' check(s)' if failed else 'all checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
