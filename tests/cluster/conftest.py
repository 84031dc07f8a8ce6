"""A real etcd (Debian's ``etcd-server``, 3.4) on 127.0.0.1 with free ports and a temporary
data directory, started per test and stopped after it; ``restart()`` after a SIGKILL brings it
back on the same ports and data."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve_proc import free_port  # the pod tests import it from here too

ETCD_START_S = 10.0


class Etcd:
    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "etcd"
        self.port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Etcd:
        binary = shutil.which("etcd")
        if binary is None:
            pytest.fail("etcd not installed: apt-get install etcd-server")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--name", "t", "--data-dir", str(self.data),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                 "--initial-cluster", f"t=http://127.0.0.1:{self.peer_port}"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ETCD_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"etcd exited: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        pytest.fail("etcd did not listen in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def post(self, path: str, body: dict) -> dict:
        """One call to etcd's v3 JSON gateway (no etcdctl needed)."""
        req = urllib.request.Request(f"{self.url}{path}", method="POST",
                                     data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def keys(self, prefix: str) -> dict[str, str]:
        """The keys under ``prefix``, decoded."""
        b64 = base64.b64encode(prefix.encode()).decode()
        end = base64.b64encode(prefix[:-1].encode() + bytes([prefix.encode()[-1] + 1])).decode()
        doc = self.post("/v3/kv/range", {"key": b64, "range_end": end})
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
                for kv in doc.get("kvs", [])}


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    e = Etcd(tmp_path).start()
    try:
        yield e
    finally:
        e.stop()
        assert os.path.isdir(e.data)
