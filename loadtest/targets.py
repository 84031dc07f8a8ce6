"""Stores that replay drives, each started on loopback by the script and stopped after.

kvstore's lookups take a lease on the prefix they found (what its engine connectors do), so
eviction cannot take a promised block before its GET; S3 and Redis have no such thing, and a
replay counts the blocks they promised and then lost (``lost_hits``).

A target answers three calls on a chain of block keys, as an engine connector would:
``lookup(keys) -> n`` (the longest stored prefix), ``get_many(keys) -> values or None``, and
``put_many(keys, values)``. Each runs the store's own way of doing it: the bulk SDK's one-round
lookup, S3's HEAD per block until the first miss, Redis' pipelined EXISTS.

- ``kvstore``: ``kvstore serve`` on 127.0.0.1 (a temp data dir, ``--capacity``), bulk SDK.
- ``kvstore-s3``: the same server through boto3 (path-style, explicit credentials and region,
  ``AWS_EC2_METADATA_DISABLED=true``).
- ``kvstore-pod``: ``kvstore pod up --nodes 3`` (etcd and 3 nodes on 127.0.0.11-13), PodClient.
- ``redis``: Debian's ``redis-server`` with persistence off and ``maxmemory`` = ``--capacity``
  (``allkeys-lru``), redis-py.

The other stores the issue names (Mooncake Store, SeaweedFS's S3, kvstore's Redis protocol)
are in ``targets_more.py``, and LMCache's ``lmcache_server`` in ``target_lmcache.py``; each adds
its targets to ``TARGETS``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS_MAX = 60.0
STOP_SECONDS_MAX = 30.0
NS = "replay"
REDIS_BASELINE_BYTES = 2 * 2**20
LEASE_SECONDS = 10.0


class Target(Protocol):
    name: str

    def lookup(self, keys: Sequence[str]) -> int: ...
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    def put_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None: ...
    def close(self) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_SECONDS_MAX)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'clients'}"
    return env


def _wait_for(log: Path, proc: subprocess.Popen[bytes], marker: str, what: str) -> None:
    deadline = time.monotonic() + START_SECONDS_MAX
    while marker not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise SystemExit(f"{what} did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


def segment_for(capacity: str) -> int:
    """Segments of an eighth of the capacity (a power of two, 1-64 MiB): whole-segment eviction
    then frees an eighth at a time."""
    cap = parse_size(capacity)
    segment = 2**20
    while segment * 2 <= min(64 * 2**20, cap // 8):
        segment *= 2
    return segment


class KvstoreServer:
    """One ``kvstore serve`` process on 127.0.0.1 in a temp directory."""

    def __init__(self, capacity: str, dram: str = "64MiB", extra: Sequence[str] = ()) -> None:
        segment = segment_for(capacity)
        self.tmp = Path(tempfile.mkdtemp(prefix="kvs-replay-"))
        self.host = "127.0.0.1"
        self.port, self.bulk_port = free_port(), free_port()
        self.log = self.tmp / "serve.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvstore", "serve", "--host", self.host,
                 "--port", str(self.port), "--bulk-port", str(self.bulk_port),
                 "--data-dir", str(self.tmp / "data"), "--capacity", capacity,
                 "--dram", dram, "--segment-size", str(segment), "--log-level", "warning", *extra],
                stdout=out, stderr=subprocess.STDOUT, env=_env())
        _wait_for(self.log, self.proc, "kvstore: ready", "kvstore serve")

    def close(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


class KvstoreBulk:
    name = "kvstore"

    def __init__(self, capacity: str, concurrency: int) -> None:
        from kvstore_client import Client

        self.server = KvstoreServer(capacity)
        self.client = Client(self.server.host, self.server.bulk_port, namespace=NS, create=True,
                             pool_size=max(1, concurrency))

    def lookup(self, keys: Sequence[str]) -> int:
        # a lease pins the found prefix until the GET, as an engine connector asks for
        return int(self.client.lookup(list(keys), lease_seconds=LEASE_SECONDS))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(self.client.get_many(list(keys)))

    def put_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        self.client.put_many(list(keys), list(values))

    def close(self) -> None:
        self.client.close()
        self.server.close()


class KvstoreS3:
    name = "kvstore-s3"

    def __init__(self, capacity: str, concurrency: int) -> None:
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        import boto3
        from botocore.config import Config

        self.server = KvstoreServer(capacity)
        self.s3 = boto3.client(
            "s3", endpoint_url=f"http://{self.server.host}:{self.server.port}",
            aws_access_key_id="dev", aws_secret_access_key="dev", region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          max_pool_connections=max(10, concurrency)))
        self.s3.create_bucket(Bucket=NS)

    def lookup(self, keys: Sequence[str]) -> int:
        from botocore.exceptions import ClientError

        for i, k in enumerate(keys):
            try:
                self.s3.head_object(Bucket=NS, Key=k)
            except ClientError:
                return i
        return len(keys)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        from botocore.exceptions import ClientError

        out: list[bytes | None] = []
        for k in keys:
            try:
                out.append(self.s3.get_object(Bucket=NS, Key=k)["Body"].read())
            except ClientError:
                out.append(None)
        return out

    def put_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        for k, v in zip(keys, values, strict=True):
            self.s3.put_object(Bucket=NS, Key=k, Body=v)

    def close(self) -> None:
        self.server.close()


class KvstorePod:
    name = "kvstore-pod"

    def __init__(self, capacity: str, concurrency: int, nodes: int = 3) -> None:
        from kvstore_client import PodClient

        self.tmp = Path(tempfile.mkdtemp(prefix="kvs-replay-pod-"))
        self.log = self.tmp / "pod.log"
        self.etcd_port = free_port()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvstore", "pod", "up", "--nodes", str(nodes),
                 "--pod", NS, "--port", "0", "--bulk-port", "0",
                 "--data-dir", str(self.tmp / "data"), "--capacity", capacity,
                 "--segment-size", str(segment_for(capacity)), "--dram", "64MiB",
                 "--etcd-port", str(self.etcd_port)],
                stdout=out, stderr=subprocess.STDOUT, env=_env())
        _wait_for(self.log, self.proc, "kvstore pod: ready", "kvstore pod up")
        self.client = PodClient(etcd=f"http://127.0.0.1:{self.etcd_port}", pod=NS,
                                namespace=NS, create=True)

    def lookup(self, keys: Sequence[str]) -> int:
        # a lease pins the found prefix until the GET, as an engine connector asks for
        return int(self.client.lookup(list(keys), lease_seconds=LEASE_SECONDS))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(self.client.get_many(list(keys)))

    def put_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        self.client.put_many(list(keys), list(values))

    def close(self) -> None:
        self.client.close()
        _stop(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Redis:
    name = "redis"

    def __init__(self, capacity: str, concurrency: int) -> None:
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis target: no redis-server (Debian package redis-server)")
        self.tmp = Path(tempfile.mkdtemp(prefix="kvs-replay-redis-"))
        self.port = free_port()
        self.log = self.tmp / "redis.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", str(self.tmp),
                 # the data budget plus Redis' own baseline (~1 MiB empty), so that both stores
                 # hold about the same number of blocks
                 "--maxmemory", str(parse_size(capacity) + REDIS_BASELINE_BYTES),
                 "--maxmemory-policy", "allkeys-lru",
                 "--proto-max-bulk-len", str(512 * 2**20)],
                stdout=out, stderr=subprocess.STDOUT)
        _wait_for(self.log, self.proc, "Ready to accept connections", "redis-server")
        self.refused = 0
        self.r = redis.Redis(host="127.0.0.1", port=self.port,
                             max_connections=max(2, concurrency * 2))

    def lookup(self, keys: Sequence[str]) -> int:
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.exists(k)
        n = 0
        for hit in pipe.execute():
            if not hit:
                break
            n += 1
        return n

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(self.r.mget(list(keys))) if keys else []

    def put_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        import redis

        pipe = self.r.pipeline(transaction=False)
        for k, v in zip(keys, values, strict=True):
            pipe.set(k, v)
        for res in pipe.execute(raise_on_error=False):
            if isinstance(res, redis.exceptions.OutOfMemoryError):
                self.refused += 1  # a full cache refusing a write: a miss later, not a failure
            elif isinstance(res, Exception):
                raise res

    def close(self) -> None:
        self.r.close()
        _stop(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


def parse_size(text: str) -> int:
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "B": 1}
    t = text.strip().upper()
    for u, mult in units.items():
        if t.endswith(u):
            return int(float(t[: -len(u)]) * mult)
    return int(t)


TARGETS: dict[str, Any] = {"kvstore": KvstoreBulk, "kvstore-s3": KvstoreS3,
                           "kvstore-pod": KvstorePod, "redis": Redis}


import target_lmcache  # noqa: E402,F401  (these two add their targets to TARGETS; they import
import targets_more  # noqa: E402,F401  this module)


def start(name: str, capacity: str, concurrency: int) -> Target:
    try:
        cls = TARGETS[name]
    except KeyError:
        raise SystemExit(f"unknown target {name!r}; one of {', '.join(TARGETS)}") from None
    return cls(capacity, concurrency)  # type: ignore[no-any-return]
