"""``kvstore serve`` processes in a pod, each on its own loopback address (127.0.0.1x)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

START_S = 30.0
REPO = Path(__file__).resolve().parents[2]
SMALL = ["--capacity", "32MiB", "--segment-size", "4MiB", "--dram", "8MiB", "--device", "posix"]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    e["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'clients'}"
    return e


class PodNode:
    def __init__(self, tmp: Path, i: int, pod_args: list[str], *extra: str) -> None:
        self.host = f"127.0.0.{10 + i}"
        self.node_id = f"node{i}"
        self.out_path, self.err_path = tmp / f"{self.node_id}.out", tmp / f"{self.node_id}.err"
        args = ["--host", self.host, "--port", "0", "--bulk-port", "0", "--node-id",
                self.node_id, "--data-dir", str(tmp / self.node_id), *SMALL, *pod_args, *extra]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "kvstore", "serve", *args],
                                         stdout=out, stderr=err, env=env(), cwd=tmp)
        self.port = 0

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def wait_ready(self) -> PodNode:
        deadline = time.monotonic() + START_S
        while "kvstore: ready" not in self.out:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.node_id} exited {self.proc.returncode}: {self.err[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{self.node_id} not ready in {START_S}s: {self.err[-2000:]}")
            time.sleep(0.05)
        m = re.search(rf"on http://{re.escape(self.host)}:(\d+)", self.out)
        assert m, self.out
        self.port = int(m.group(1))
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            headers = {"content-length": str(len(body or b""))}
            if body and body[:1] == b"{":
                headers["content-type"] = "application/json"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw)
        finally:
            conn.close()

    def view(self) -> dict[str, Any]:
        status, doc = self.request("GET", "/v1/pod")
        assert status == 200, doc
        return doc

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def until(cond: Any, what: str, wait_s: float = 10.0) -> None:
    for _ in range(int(wait_s / 0.02)):
        if cond():
            return
        time.sleep(0.02)
    pytest.fail(f"not within {wait_s}s: {what}")
