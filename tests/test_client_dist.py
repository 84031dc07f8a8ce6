"""The client distribution on its own: ``pip install ./clients`` into a fresh venv installs
nothing of the server, and the README's client example, run by that venv's Python outside the
repository, works against a real ``kvstore serve`` on loopback.

The second test installs the server from a clean clone the way ``make`` does
(``pip install -e '.[test]'``) into another fresh venv; it takes about a minute, so it runs
under ``make test-client-dist`` (``KVSTORE_TEST_CLIENT_DIST=1``). Both use pip as configured on
the machine (its index), like ``make test``'s own install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVER_ONLY = {"fastapi", "uvicorn", "pyuring", "prometheus-client", "starlette", "numpy",
               "kvstore"}
INSTALL_SECONDS_MAX = 600
RUN_SECONDS_MAX = 60
START_SECONDS_MAX = 30.0
LAYOUT = {"model": "meta-llama/Llama-3.1-8B", "dtype": "bf16", "num_layers": 32,
          "num_kv_heads": 8, "head_dim": 128, "tokens_per_block": 16}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The environment without anything that would put this checkout on a child's path."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("KVSTORE_")}


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, env=_clean_env(),
                   timeout=INSTALL_SECONDS_MAX)
    return path / "bin"


def _pip(bindir: Path, *args: str, cwd: Path) -> str:
    r = subprocess.run([str(bindir / "python"), "-m", "pip", *args], cwd=cwd, env=_clean_env(),
                       capture_output=True, text=True, timeout=INSTALL_SECONDS_MAX)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _installed(bindir: Path, cwd: Path) -> dict[str, str]:
    rows = json.loads(_pip(bindir, "list", "--format", "json", cwd=cwd))
    return {r["name"].lower().replace("_", "-"): r["version"] for r in rows}


def readme_client_example(bulk_port: int) -> str:
    """The first Python block of README.md that uses ``kvstore_client``, aimed at ``bulk_port``."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    code = next(b for b in blocks if "from kvstore_client import" in b)
    assert "8701" in code, "the README example no longer names the bulk port"
    return code.replace("8701", str(bulk_port))


class _Server:
    """``python -m kvstore serve`` from this checkout (the dev interpreter), on loopback."""

    def __init__(self, tmp: Path) -> None:
        self.http, self.bulk = _free_port(), _free_port()
        env = _clean_env()
        env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'clients'}"
        self.out = tmp / "serve.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvstore", "serve", "--host", "127.0.0.1",
                 "--port", str(self.http), "--bulk-port", str(self.bulk),
                 "--data-dir", str(tmp / "data"), "--capacity", "64MiB",
                 "--segment-size", "8MiB", "--dram", "16MiB"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        deadline = time.monotonic() + START_SECONDS_MAX
        while "kvstore: ready" not in self.out.read_text():
            assert self.proc.poll() is None, self.out.read_text()[-3000:]
            assert time.monotonic() < deadline, self.out.read_text()[-3000:]
            time.sleep(0.05)

    def create_namespace(self, name: str) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http}/v1/namespaces", method="POST",
            data=json.dumps({"name": name, "layout": LAYOUT}).encode(),
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status in (200, 201)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _run_example(python: Path, tmp: Path, bulk_port: int) -> str:
    script = tmp / "readme_example.py"
    script.write_text(readme_client_example(bulk_port))
    r = subprocess.run([str(python), "-I", str(script)], cwd=tmp, env=_clean_env(),
                       capture_output=True, text=True, timeout=RUN_SECONDS_MAX)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_client_dist_alone_runs_the_readme_example(tmp_path: Path) -> None:
    bindir = _venv(tmp_path / "venv")
    # a copy, so the build cannot leave anything in the checkout
    src = tmp_path / "clients"
    shutil.copytree(REPO / "clients", src, ignore=shutil.ignore_patterns("__pycache__"))
    _pip(bindir, "install", "-q", str(src), cwd=tmp_path)
    installed = _installed(bindir, tmp_path)
    assert "kvstore-client" in installed
    assert not SERVER_ONLY & set(installed), sorted(SERVER_ONLY & set(installed))
    assert set(installed) - {"pip", "setuptools", "wheel"} == {
        "kvstore-client", "msgpack", "xxhash"}, installed
    srv = _Server(tmp_path)
    try:
        srv.create_namespace("llama-demo")
        out = _run_example(bindir / "python", tmp_path, srv.bulk)
    finally:
        srv.stop()
    assert "cached prefix: 4 blocks" in out, out


@pytest.mark.skipif(os.environ.get("KVSTORE_TEST_CLIENT_DIST") != "1",
                    reason="installs the server's dependencies into a fresh venv (about a "
                           "minute): run by `make test-client-dist`")
def test_server_install_from_a_clean_clone_pulls_the_client_dist(tmp_path: Path) -> None:
    clone = tmp_path / "repo"  # what is committed at this checkout's HEAD
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(clone)], check=True,
                   timeout=INSTALL_SECONDS_MAX)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", head], check=True)
    bindir = _venv(tmp_path / "venv")
    _pip(bindir, "install", "-q", "-e", ".[test]", cwd=clone)  # make test's install line
    installed = _installed(bindir, clone)
    assert {"kvstore", "kvstore-client", "fastapi", "pyuring"} <= set(installed)
    code = ("import kvstore.limits as s, kvstore_wire.limits as w, kvstore.errors as e, "
            "kvstore_wire.errors as we, kvstore_client, kvstore.server; "
            "assert s.block_bytes_max is w.block_bytes_max and e.KVStoreError is we.KVStoreError;"
            "print(kvstore_client.__file__)")
    r = subprocess.run([str(bindir / "python"), "-c", code], cwd=tmp_path, env=_clean_env(),
                       capture_output=True, text=True, timeout=RUN_SECONDS_MAX)
    assert r.returncode == 0, r.stderr[-3000:]
    # the client the server venv imports is the installed distribution, not a copy in kvstore
    assert "site-packages" in r.stdout, r.stdout
