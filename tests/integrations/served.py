"""A real ``kvstore serve`` process on 127.0.0.1 for the engine integration tests: its own data
dir on the real filesystem (blocks on flash), ports picked by the kernel, a tenants file so S3
clients sign with SigV4 for real (access key ``AKIDENGINE``), always killed at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START_S = 60.0
STOP_S = 10.0
ACCESS_KEY, SECRET_KEY, REGION = "AKIDENGINE", "engine-secret-key", "us-east-1"


class Served:
    def __init__(self, tmp: Path, extra: list[str], credentials: bool = True) -> None:
        self.tmp = tmp
        args = ["--host", "127.0.0.1", "--port", "0", "--bulk-port", "0",
                "--data-dir", str(tmp / "data"), "--capacity", "2GiB", "--segment-size",
                "64MiB", "--dram", "64MiB", *extra]
        if credentials:
            creds = tmp / "tenants.json"
            creds.write_text(json.dumps({"tenants": [
                {"name": "engines", "access_key": ACCESS_KEY, "secret_key": SECRET_KEY,
                 "namespaces": ["*"]}]}))
            args += ["--credentials", str(creds)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "clients"),
                                             env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.out_path, self.err_path = tmp / "kvstore.out", tmp / "kvstore.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "kvstore", "serve", *args],
                                         stdout=out, stderr=err, env=env, cwd=tmp)
        self.http_port = self.bulk_port = 0

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def wait_ready(self) -> Served:
        deadline = time.monotonic() + START_S
        while "kvstore: ready" not in self.out:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvstore exited {self.proc.returncode}: {self.err[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kvstore not ready in {START_S}s: {self.err[-3000:]}")
            time.sleep(0.05)
        http = re.search(r"on http://127\.0\.0\.1:(\d+)", self.out)
        bulk = re.search(r"bulk on tcp://127\.0\.0\.1:(\d+)", self.out)
        assert http and bulk, self.out
        self.http_port, self.bulk_port = int(http.group(1)), int(bulk.group(1))
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_S)


@contextmanager
def served(tmp: Path, *extra: str, credentials: bool = True) -> Iterator[Served]:
    s = Served(tmp, list(extra), credentials)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def serve_flags() -> str:
    """The flags ``kvstore serve`` of this tree declares (to tell whether a flag another branch
    adds, such as ``--resp-port`` or ``--domain``, is there yet): read from the package that
    declares them (kvstore/config/), since ``--help`` of a tree under work may not render."""
    return "".join(p.read_text() for p in sorted((REPO / "kvstore" / "config").glob("*.py")))


def s3_client(endpoint: str, **config: object) -> object:
    """boto3 with explicit credentials and region; never the instance metadata service."""
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name=REGION,
                        config=Config(s3={"addressing_style": "path"}, **config))


def doc_json(name: str, **override: object) -> dict[str, object]:
    """The JSON block after ``<!-- tested: NAME -->`` in docs/integrations.md, with ``override``
    merged into it (and into its ``adapter_params`` when it has one): the configuration a user
    pastes is the one the test runs."""
    text = (REPO / "docs" / "integrations.md").read_text()
    marker = f"<!-- tested: {name} -->"
    assert marker in text, f"{marker} missing from docs/integrations.md"
    block = text.split(marker, 1)[1].split("```json", 1)[1].split("```", 1)[0]
    cfg: dict[str, object] = json.loads(block)
    inner = cfg.get("adapter_params")
    target = inner if isinstance(inner, dict) else cfg
    for k, v in override.items():
        assert k in target, f"{k} is not in the documented {name} configuration"
        target[k] = v
    return cfg
