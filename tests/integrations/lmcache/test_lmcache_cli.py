"""LMCache 0.5.6 itself against a real ``kvstore serve`` on 127.0.0.1: ``lmcache bench l2`` with
the kvstore ``native_plugin`` (data verified), ``lmcache server`` started with the documented
``--l2-adapter`` snippet, LMCache's built-in ``s3`` adapter storing and loading 32 MiB chunks
(virtual-host addressing: needs ``kvstore serve --domain``), and its C++ ``resp`` adapter against
``kvstore serve --resp-port``. LMCache runs from its own venv (``make
test-integrations-lmcache`` builds ``.venv-integrations/lmcache`` and sets
KVSTORE_REQUIRE_LMCACHE=1); without that variable the module is skipped, so ``make test`` stays
fast on a checkout that has the venv."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from kvstore_client import Client

from ..served import (
    ACCESS_KEY,
    REGION,
    REPO,
    SECRET_KEY,
    doc_json,
    s3_client,
    served,
)

LMCACHE = Path(os.environ.get("KVSTORE_LMCACHE_BIN",
                              REPO / ".venv-integrations/lmcache/bin/lmcache"))
if not os.environ.get("KVSTORE_REQUIRE_LMCACHE"):
    pytest.skip(f"LMCache runs in make test-integrations-lmcache ({LMCACHE})",
                allow_module_level=True)
assert LMCACHE.exists(), f"no LMCache at {LMCACHE}: make test-integrations-lmcache builds it"

pytestmark = pytest.mark.timeout(300)
NS = "lmcache-it"
BENCH_S = 240.0
START_S = 90.0
NSS_WRAPPER = "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so"  # Debian libnss-wrapper


def _env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    e.update(LMCACHE_TRACK_USAGE="false", LMCACHE_DISABLE_BANNER="1",
             AWS_EC2_METADATA_DISABLED="true",
             PYTHONPATH=os.pathsep.join([str(REPO / "clients"), e.get("PYTHONPATH", "")]))
    e.update(extra)
    return e


def _bench(adapter: dict[str, object], tmp: Path, *, keys: int, size_kb: int, rounds: int = 2,
           env: dict[str, str] | None = None) -> dict[str, dict[str, object]]:
    out = tmp / "bench.json"
    p = subprocess.run(
        [str(LMCACHE), "bench", "l2", "--l2-adapter", json.dumps(adapter), "--num-keys",
         str(keys), "--data-size-kb", str(size_kb), "--rounds", str(rounds), "--no-skip-verify",
         "--lookup-max-hit-rate", "1.0", "--format", "json", "--output", str(out)],
        env=env or _env(), capture_output=True, text=True, timeout=BENCH_S)
    text = p.stdout + p.stderr
    assert p.returncode == 0 and out.exists(), text[-4000:]
    assert f"[Verify] All {keys} keys data verified OK" in text, text[-4000:]
    ops = json.loads(out.read_text())["metrics"]
    by_op = {v["operation"].lower(): v for k, v in ops.items() if k.startswith("op_")}
    for op in ("store", "lookup", "load"):
        assert by_op[op]["total_success"] == by_op[op]["total_keys"] > 0, by_op[op]
    return by_op


def _plugin(port: int) -> dict[str, object]:
    """The documented adapter JSON, pointed at this server."""
    return doc_json("lmcache-native-plugin", port=port, namespace=NS, access_key=ACCESS_KEY,
                    secret_key=SECRET_KEY)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bench_l2_native_plugin_verified(tmp_path: Path) -> None:
    with served(tmp_path) as srv:
        _bench(_plugin(srv.bulk_port), tmp_path, keys=16, size_kb=1024)
        with Client(port=srv.bulk_port, namespace=NS, access_key=ACCESS_KEY,
                    secret_key=SECRET_KEY) as c:
            assert c.stats()["blocks"] >= 16  # LMCache's chunks are kvstore blocks


def test_lmcache_server_starts_with_the_documented_adapter(tmp_path: Path) -> None:
    with served(tmp_path) as srv:
        http_port = _free_port()
        log = tmp_path / "lmcache-server.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [str(LMCACHE), "server", "--host", "127.0.0.1", "--port", str(_free_port()),
                 "--http-host", "127.0.0.1", "--http-port", str(http_port),
                 "--l1-manager", json.dumps({"type": "DRAM", "tag": "_default", "size_gb": 0.25,
                                             "eviction": {"eviction_policy": "LRU"}}),
                 "--l2-adapter", json.dumps(_plugin(srv.bulk_port))],
                env=_env(), stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline, status = time.monotonic() + START_S, ""
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status",
                                                timeout=5) as r:
                        status = r.read().decode()
                    break
                except OSError:
                    time.sleep(0.5)
            assert status, log.read_text()[-4000:]
            assert "Created native plugin L2 adapter: kvstore_connectors.lmcache" \
                   ".KVStoreL2Client" in log.read_text()
            assert json.loads(status)["is_healthy"] is True
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


def test_s3_adapter_stores_and_loads_32mib_chunks(tmp_path: Path) -> None:
    assert os.path.exists(NSS_WRAPPER), "apt-get install libnss-wrapper"
    domain, bucket = "kvstore.test", "lmcache-s3"
    hosts = tmp_path / "hosts"  # bucket.domain -> 127.0.0.1 for this process tree only
    hosts.write_text(f"127.0.0.1 {bucket}.{domain}\n")
    with served(tmp_path, "--domain", domain) as srv:
        s3 = s3_client(srv.endpoint)
        s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        adapter = {"type": "s3", "s3_endpoint": f"{bucket}.{domain}:{srv.http_port}",
                   "s3_region": REGION, "disable_tls": True, "s3_prefer_http2": False,
                   "s3_num_io_threads": 4, "aws_access_key_id": ACCESS_KEY,
                   "aws_secret_access_key": SECRET_KEY}
        _bench(adapter, tmp_path, keys=2, size_kb=32 * 1024, rounds=1,
               env=_env(LD_PRELOAD=NSS_WRAPPER, NSS_WRAPPER_HOSTS=str(hosts)))
        listed = s3.list_objects_v2(Bucket=bucket)["Contents"]  # type: ignore[attr-defined]
        assert len(listed) >= 2 and all(o["Size"] == 32 << 20 for o in listed)


def test_resp_adapter_against_resp_port(tmp_path: Path) -> None:
    port = _free_port()
    with served(tmp_path, "--resp-port", str(port), "--resp-namespace", NS) as srv:
        _bench({"type": "resp", "host": "127.0.0.1", "port": port, "num_workers": 4,
                "username": ACCESS_KEY, "password": SECRET_KEY}, tmp_path, keys=16,
               size_kb=1024)
        with Client(port=srv.bulk_port, namespace=NS, access_key=ACCESS_KEY,
                    secret_key=SECRET_KEY) as c:
            assert c.stats()["blocks"] >= 16


def test_redis_server_baseline_runs(tmp_path: Path) -> None:
    """The bench script's Redis side: the same bench against Debian's redis-server."""
    exe = shutil.which("redis-server")
    assert exe, "apt-get install redis-server"
    port = _free_port()
    red = subprocess.Popen([exe, "--save", "", "--appendonly", "no", "--port", str(port),
                            "--bind", "127.0.0.1", "--dir", str(tmp_path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        _bench({"type": "resp", "host": "127.0.0.1", "port": port, "num_workers": 4},
               tmp_path, keys=16, size_kb=1024)
    finally:
        red.terminate()
        red.wait(15)
