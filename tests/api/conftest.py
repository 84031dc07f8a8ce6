"""A real kvstore HTTP server for API tests: uvicorn on 127.0.0.1, a free port, a real engine on
a temporary directory (POSIX device), stopped and closed after the test.

Usage::

    def test_x(live_server):
        srv = live_server()                       # development mode (any signature)
        srv = live_server(tenants=Tenants.from_dict({...}))
        srv.url, srv.state, srv.port

The app is ``kvstore.api.app.create_app(state)`` when that module exists (S3 and /v1 together),
else the S3 app alone.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from kvstore import limits
from kvstore.auth import Tenants
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.io_uring.posix import PosixDevice
from kvstore.service import Node
from kvstore.service.runner import EngineRunner

# No SDK in these tests may probe the cloud metadata address.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

START_SECONDS_MAX = 10.0


@dataclass
class LiveServer:
    url: str
    port: int
    state: Node
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=limits.shutdown_seconds_max + 5)
        self.state.runner.close()
        self.state.engine.close()


def build_app(state: Node) -> Any:
    try:
        from kvstore.api.app import create_app
    except ImportError:
        from kvstore.api.s3.app import S3App

        return S3App(state)
    return create_app(state)


def start_server(data_dir: Path, tenants: Tenants | None = None, *,
                 capacity_bytes: int = 512 * limits.MiB, segment_bytes: int = 64 * limits.MiB,
                 dram_bytes: int = 128 * limits.MiB, region: str = "us-east-1",
                 domain: str | None = None, etag: str = "md5") -> LiveServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = Engine.open(EngineConfig(data_dir=str(data_dir), capacity_bytes=capacity_bytes,
                                      segment_bytes=segment_bytes, dram_bytes=dram_bytes),
                         PosixDevice())
    runner = EngineRunner(threads=4)
    runner.start()
    state = Node(engine=engine, runner=runner, tenants=tenants or Tenants.development(),
                 region=region, domain=domain, etag=etag)
    app = build_app(state)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", loop="asyncio", http="httptools",
                            timeout_graceful_shutdown=int(limits.shutdown_seconds_max))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_SECONDS_MAX
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            runner.close()
            engine.close()
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return LiveServer(f"http://127.0.0.1:{port}", port, state, server, thread)


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``live_server(tenants=None)`` starts a server; all are stopped after the test."""
    started: list[LiveServer] = []

    def start(tenants: Tenants | None = None, **kw: Any) -> LiveServer:
        srv = start_server(tmp_path / f"data{len(started)}", tenants, **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LiveServer]]:
    """Like ``live_server``, shared by the tests of one module (faster; state carries over)."""
    started: list[LiveServer] = []
    base = tmp_path_factory.mktemp("kvstore-api")

    def start(tenants: Tenants | None = None, **kw: Any) -> LiveServer:
        srv = start_server(base / f"data{len(started)}", tenants, **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


TENANT_DOC = {"tenants": [
    {"name": "acme", "access_key": "AKIAACME", "secret_key": "acme-secret-key",
     "namespaces": ["acme-*", "shared-*"]},
    {"name": "globex", "access_key": "AKIAGLOBEX", "secret_key": "globex-secret-key",
     "namespaces": ["globex-*", "shared-*"]},
]}


def boto_client(url: str, access_key: str = "AKIADEV", secret_key: str = "dev-secret",
                **config: Any) -> Any:
    """A boto3 S3 client for ``url`` with explicit credentials and region, path-style."""
    import boto3
    from botocore.config import Config

    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                 connect_timeout=5, read_timeout=30, **config)
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1", config=cfg)


@pytest.fixture
def s3_client() -> Callable[..., Any]:
    """``s3_client(url, access_key=..., secret_key=...)`` builds a boto3 client."""
    return boto_client


def pseudo_random(n: int, seed: int) -> bytes:
    """``n`` bytes that differ by ``seed`` and compress poorly (SHAKE-256 output)."""
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(n)


def bucket_client(url: str, bucket: str) -> Any:
    """A development-mode boto3 client for ``url`` with ``bucket`` created."""
    c = boto_client(url)
    c.create_bucket(Bucket=bucket)
    return c


def upload_parts(s3: Any, bucket: str, key: str, parts: list[bytes],
                 **create: Any) -> tuple[str, list[dict[str, Any]]]:
    """A multipart upload of ``parts`` (CreateMultipartUpload with ``create``, each part with
    its algorithm's checksum when ``ChecksumAlgorithm`` is given), not completed: its id and
    the parts as CompleteMultipartUpload lists them (ETags and part checksums)."""
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    listed = []
    for i, p in enumerate(parts, 1):
        kw = {"ChecksumAlgorithm": create["ChecksumAlgorithm"]} \
            if "ChecksumAlgorithm" in create else {}
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i, Body=p, **kw)
        item = {"PartNumber": i, "ETag": r["ETag"]}
        item.update({k: v for k, v in r.items() if k.startswith("Checksum")
                     and k != "ChecksumType"})
        listed.append(item)
    return uid, listed


def recv_until(sock: Any, marker: bytes) -> bytes:
    """What a raw socket receives up to and including ``marker`` (or until it closes)."""
    buf = b""
    while marker not in buf:
        piece = sock.recv(65536)
        if not piece:
            break
        buf += piece
    return buf
