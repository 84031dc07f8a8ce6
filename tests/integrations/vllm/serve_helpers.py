"""A real `kvstore serve` on 127.0.0.1 for the vLLM integration tests, started with
KVSTORE_SERVER_PYTHON (the main venv's interpreter; the engine venv holds only the client
distribution)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
START_SECONDS_MAX = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(AWS_EC2_METADATA_DISABLED="true", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               LMCACHE_TRACK_USAGE="false", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    return env


class Server:
    """`kvstore serve` from this checkout on loopback (HTTP and bulk ports)."""

    def __init__(self, tmp: Path, tenants: dict[str, Any] | None = None) -> None:
        """``tenants``: a credentials document (``--credentials``); None: development mode."""
        python = os.environ.get("KVSTORE_SERVER_PYTHON")
        if not python:
            raise RuntimeError("KVSTORE_SERVER_PYTHON must name an interpreter with the "
                               "kvstore server installed (the Makefile sets it)")
        self.http, self.bulk = free_port(), free_port()
        env = clean_env()
        env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'clients'}"
        self.out = tmp / "serve.out"
        creds: list[str] = []
        if tenants is not None:
            (tmp / "tenants.json").write_text(json.dumps(tenants))
            creds = ["--credentials", str(tmp / "tenants.json")]
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [python, "-m", "kvstore", "serve", "--host", "127.0.0.1",
                 "--port", str(self.http), "--bulk-port", str(self.bulk),
                 "--data-dir", str(tmp / "data"), "--capacity", "256MiB",
                 "--segment-size", "8MiB", "--dram", "32MiB", *creds],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        deadline = time.monotonic() + START_SECONDS_MAX
        while "kvstore: ready" not in self.out.read_text():
            assert self.proc.poll() is None, self.out.read_text()[-3000:]
            assert time.monotonic() < deadline, self.out.read_text()[-3000:]
            time.sleep(0.1)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return dict(self.get("/v1/stats")["stats"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def doc_json(tag: str) -> Any:
    """The JSON block of docs/integrations.md marked ``<!-- tested: TAG -->``: the tests run
    the configuration users paste."""
    text = (REPO / "docs" / "integrations.md").read_text()
    marker = f"<!-- tested: {tag} -->"
    assert marker in text, f"docs/integrations.md lost its {marker} block"
    block = text.split(marker, 1)[1].split("```json", 1)[1].split("```", 1)[0]
    return json.loads(block)
