"""--max-connections-per-tenant: one tenant cannot hold every bulk connection slot. Past its
cap AUTH answers LimitExceeded and the connection closes; other tenants still connect; a
closed connection frees its slot. A real ``kvstore serve`` with two tenants on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kvstore_client import Client, LimitExceeded

from tests.serve_proc import child_env, free_ports

A = ("AKIDTA", "secret-a")
B = ("AKIDTB", "secret-b")
START_S = 30.0


def test_one_tenant_cannot_take_every_slot(tmp_path: Path) -> None:
    creds = tmp_path / "tenants.json"
    creds.write_text(json.dumps({"tenants": [
        {"name": "ta", "access_key": A[0], "secret_key": A[1], "namespaces": ["ta-*"]},
        {"name": "tb", "access_key": B[0], "secret_key": B[1], "namespaces": ["tb-*"]}]}))
    http, bulk = free_ports(2)
    out = tmp_path / "serve.out"
    with open(out, "wb") as o:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvstore", "serve", "--port", str(http), "--bulk-port",
             str(bulk), "--data-dir", str(tmp_path / "d"), "--capacity", "32MiB",
             "--segment-size", "4MiB", "--dram", "8MiB", "--credentials", str(creds),
             "--max-connections-per-tenant", "2"], stdout=o, stderr=subprocess.STDOUT, env=child_env())
    clients: list[Client] = []
    try:
        deadline = time.monotonic() + START_S
        while "kvstore: ready" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)

        def client(creds_: tuple[str, str], ns: str) -> Client:
            c = Client("127.0.0.1", bulk, namespace=ns, access_key=creds_[0],
                       secret_key=creds_[1], create=True, pool_size=1, retries=0)
            clients.append(c)
            return c

        a1, a2 = client(A, "ta-one"), client(A, "ta-two")
        a1.ping()
        a2.ping()  # two connections held (each client keeps its idle one)
        a3 = client(A, "ta-one")
        with pytest.raises(LimitExceeded, match="at most 2"):
            a3.ping()
        client(B, "tb-one").ping()  # another tenant is not affected
        a1.close()  # frees one of ta's slots
        for _ in range(100):  # the server sees the close within a few ms
            try:
                a3.ping()
                break
            except LimitExceeded:
                time.sleep(0.02)
        else:
            pytest.fail("the freed slot was never given back")
        assert proc.poll() is None
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(30)
