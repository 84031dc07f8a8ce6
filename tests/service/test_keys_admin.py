"""Encryption at rest end to end, as an operator runs it: `kvstore keygen`, `kvstore serve
--master-key-file`, `kvstore rotate-key`, real processes on 127.0.0.1 and real files."""

from __future__ import annotations

import http.client
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.test_serve import REPO, SMALL, START_SECONDS_MAX, Serve, free_port, put_bucket, stop

MARK = b"PLAINTEXT-PROMPT-OF-TENANT-A:"
BODY = MARK * 40000  # ~1.1 MiB: spans several record chunks


def kvstore(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'clients'}"
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True,
                          text=True, env=env, cwd=tmp, timeout=START_SECONDS_MAX)


def s3(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"content-length": str(len(body))})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def serve(tmp: Path, data: Path, key: Path, name: str) -> tuple[Serve, int]:
    srv = Serve(tmp, ["--port", str(free_port()), "--bulk-port", str(free_port()),
                      "--data-dir", str(data), "--master-key-file", str(key), *SMALL], name=name)
    return srv, srv.wait_ready()


def test_keygen_writes_a_private_key_and_never_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "master.key"
    r = kvstore(tmp_path, "keygen", str(key))
    assert r.returncode == 0, r.stderr
    raw = key.read_bytes()
    assert len(raw) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    r = kvstore(tmp_path, "keygen", str(key))
    assert r.returncode == 1 and "never overwritten" in r.stderr
    assert key.read_bytes() == raw


def test_serve_encrypts_and_rotation_switches_the_key(tmp_path: Path) -> None:
    data, old, new = tmp_path / "data", tmp_path / "old.key", tmp_path / "new.key"
    for k in (old, new):
        assert kvstore(tmp_path, "keygen", str(k)).returncode == 0
    srv, port = serve(tmp_path, data, old, "first")
    try:
        assert put_bucket(port, "tenant-a") == 200
        assert s3(port, "PUT", "/tenant-a/prompt", BODY)[0] == 200
        assert s3(port, "GET", "/tenant-a/prompt") == (200, BODY)
        stop(srv)
    finally:
        srv.kill()
    files = [p for p in data.iterdir() if p.is_file()]
    assert any(p.suffix == ".kvs" for p in files)
    assert [p.name for p in files if MARK in p.read_bytes()] == []

    wrong = Serve(tmp_path, ["--port", str(free_port()), "--bulk-port", str(free_port()),
                             "--data-dir", str(data), "--master-key-file", str(new), *SMALL],
                  name="wrong")
    try:
        assert wrong.wait_exit(START_SECONDS_MAX) == 1
    finally:
        wrong.kill()
    assert "master key does not match" in wrong.err and "Traceback" not in wrong.err

    r = kvstore(tmp_path, "rotate-key", "--old", str(old), "--new", str(new),
                "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    r = kvstore(tmp_path, "rotate-key", "--old", str(old), "--new", str(new),
                "--data-dir", str(data))
    assert r.returncode == 1 and "master key" in r.stderr  # old no longer opens it
    srv, port = serve(tmp_path, data, new, "rotated")
    try:
        assert s3(port, "GET", "/tenant-a/prompt") == (200, BODY)
        stop(srv)
    finally:
        srv.kill()
