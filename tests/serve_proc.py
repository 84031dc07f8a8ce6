"""A real ``kvstore serve`` process on 127.0.0.1 for the crash, fault and soak suites: started on
free ports, waited for (``kvstore: ready``), SIGKILLed or stopped; plain-HTTP S3 and /v1 helpers
(development mode: unsigned requests are accepted).

``ServeChild`` is the plain launcher the other suites build on (``tests/test_serve.py``'s
``Serve``, the pod's ``PodNode``): the caller's flags, output in files, a wait for the ready line.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
START_SECONDS_MAX = 60.0
STOP_SECONDS_MAX = 30.0


# ports handed out lately by ``free_port``, per host: the kernel may answer the same free port
# to two binds in a row, and a test asking twice (a server's HTTP and bulk ports) got one port
# for both, which serve refuses ("--port and --bulk-port must differ")
_RECENT_PORTS: dict[str, collections.deque[int]] = {}
_PORTS_LOCK = threading.Lock()
_PORT_TRIES_MAX = 100


def free_port(host: str = "127.0.0.1") -> int:
    """A free port on ``host`` that this process has not handed out among its last 64."""
    with _PORTS_LOCK:
        recent = _RECENT_PORTS.setdefault(host, collections.deque(maxlen=64))
        for _ in range(_PORT_TRIES_MAX):
            with socket.socket() as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if port not in recent:
                recent.append(port)
                return port
    raise RuntimeError(f"no fresh free port on {host} in {_PORT_TRIES_MAX} binds")


def free_ports(n: int, host: str = "127.0.0.1") -> tuple[int, ...]:
    """``n`` distinct free ports (``free_port`` never hands one out twice in a row)."""
    assert 0 < n <= 64
    return tuple(free_port(host) for _ in range(n))


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``kvstore serve`` child: this one without ``KVSTORE_*`` (a test sets
    what it means to), plus ``extra``, with this tree and its clients/ first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(REPO / "clients"),
                                                      os.environ.get("PYTHONPATH")]))
    return env


class ServeChild:
    """One ``kvstore serve`` with the caller's flags, run in ``tmp``; its stdout and stderr go
    to ``tmp/NAME.out`` and ``tmp/NAME.err``."""

    def __init__(self, tmp: Path, args: Sequence[str], env: Mapping[str, str] | None = None,
                 name: str = "serve") -> None:
        self.name = name
        self.out_path, self.err_path = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "kvstore", "serve", *args],
                                         stdout=out, stderr=err, env=child_env(env), cwd=tmp)

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def wait_ready_port(self, timeout_s: float, host: str = "127.0.0.1") -> int:
        """Wait for 'kvstore: ready' (the test fails if it exits or times out first); return
        the HTTP port it printed for ``host``."""
        deadline = time.monotonic() + timeout_s
        while "kvstore: ready" not in self.out:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited {self.proc.returncode}: {self.err[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{self.name} not ready in {timeout_s}s: {self.err[-2000:]}")
            time.sleep(0.05)
        m = re.search(rf"on http://{re.escape(host)}:(\d+)", self.out)
        assert m, self.out
        return int(m.group(1))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class ServeProc:
    def __init__(self, data_dir: Path, logs: Path, *args: str, name: str = "serve") -> None:
        self.http, self.bulk = free_ports(2)
        self.out, self.err = logs / f"{name}.out", logs / f"{name}.err"
        env = child_env()
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
