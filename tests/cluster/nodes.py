"""``kvstore serve`` processes in a pod, each on its own loopback address (127.0.0.1x)."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.serve_proc import ServeChild, child_env

START_S = 30.0
SMALL = ["--capacity", "32MiB", "--segment-size", "4MiB", "--dram", "8MiB", "--device", "posix"]


def env() -> dict[str, str]:
    """The environment of a `kvstore` child process (the pod CLI's too)."""
    return child_env()


class PodNode(ServeChild):
    def __init__(self, tmp: Path, i: int, pod_args: list[str], *extra: str) -> None:
        self.host = f"127.0.0.{10 + i}"
        self.node_id = f"node{i}"
        args = ["--host", self.host, "--port", "0", "--bulk-port", "0", "--node-id",
                self.node_id, "--data-dir", str(tmp / self.node_id), *SMALL, *pod_args, *extra]
        super().__init__(tmp, args, name=self.node_id)
        self.port = 0

    def wait_ready(self) -> PodNode:
        self.port = self.wait_ready_port(START_S, self.host)
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


def until(cond: Any, what: str, wait_s: float = 10.0) -> None:
    for _ in range(int(wait_s / 0.02)):
        if cond():
            return
        time.sleep(0.02)
    pytest.fail(f"not within {wait_s}s: {what}")
