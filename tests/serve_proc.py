"""A real ``kvstore serve`` process on 127.0.0.1 for the crash, fault and soak suites: started on
free ports, waited for (``kvstore: ready``), SIGKILLed or stopped; plain-HTTP S3 and /v1 helpers
(development mode: unsigned requests are accepted)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
START_SECONDS_MAX = 60.0
STOP_SECONDS_MAX = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProc:
    def __init__(self, data_dir: Path, logs: Path, *args: str, name: str = "serve") -> None:
        self.http, self.bulk = free_port(), free_port()
        while self.bulk == self.http:
            self.bulk = free_port()
        self.out, self.err = logs / f"{name}.out", logs / f"{name}.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(REPO / "clients"),
                                                          os.environ.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "kvstore", "serve", "--host", "127.0.0.1",
               "--port", str(self.http), "--bulk-port", str(self.bulk),
               "--data-dir", str(data_dir), *args]
        self._out_from = self.out.stat().st_size if self.out.exists() else 0
        self._err_from = self.err.stat().st_size if self.err.exists() else 0
        with open(self.out, "ab") as o, open(self.err, "ab") as e:  # logs of every restart
            self.proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env, cwd=str(logs))

    def ready(self) -> bool:
        with open(self.out, "rb") as f:
            f.seek(self._out_from)
            return b"kvstore: ready" in f.read()

    def errors(self) -> str:
        """This start's stderr (its log)."""
        with open(self.err, "rb") as f:
            f.seek(self._err_from)
            return f.read().decode(errors="replace")

    def wait_ready(self) -> ServeProc:
        deadline = time.monotonic() + START_SECONDS_MAX
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server did not start: {self.errors()[-3000:]}")
            time.sleep(0.02)
        return self

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(STOP_SECONDS_MAX)

    # --- HTTP ------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                timeout: float = 30.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if body is not None:
                hdrs.setdefault("Content-Length", str(len(body)))
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, obj: Any = None) -> tuple[int, Any]:
        body = None if obj is None else json.dumps(obj).encode()
        status, raw = self.request(method, path, body, {"content-type": "application/json"})
        return status, (json.loads(raw) if raw else None)

    def check(self) -> list[str]:
        """POST /v1/check: the engine's cross-check of index, segments and accounting."""
        status, doc = self.json("POST", "/v1/check")
        assert status == 200, doc
        return list(doc["problems"])

    def list_keys(self, bucket: str, *, missing_ok: bool = False) -> list[str]:
        """Every key of an S3 bucket (ListObjectsV2, all pages); ``missing_ok``: [] for a
        bucket that does not exist."""
        import re
        from urllib.parse import quote

        keys: list[str] = []
        token = ""
        for _ in range(10_000):
            q = "?list-type=2&max-keys=1000" + (f"&continuation-token={quote(token)}"
                                                if token else "")
            status, raw = self.request("GET", f"/{bucket}{q}")
            if missing_ok and status == 404 and b"NoSuchBucket" in raw:
                return []
            assert status == 200, raw[:500]
            text = raw.decode()
            keys += re.findall(r"<Key>([^<]*)</Key>", text)
            m = re.search(r"<NextContinuationToken>([^<]*)</NextContinuationToken>", text)
            if "<IsTruncated>true</IsTruncated>" not in text or m is None:
                return keys
            token = m.group(1)
        raise AssertionError("listing did not end")
