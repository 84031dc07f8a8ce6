"""``kvstore pod up --nodes 2`` for real (etcd + two serve processes on 127.0.0.11/12), then
``kvstore pod status --json``, then SIGTERM stops everything; and the message without etcd."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.tlscerts import CA

from .conftest import Etcd
from .nodes import PodNode, env, until

START_S = 60.0


def _listening(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def test_pod_up_status_and_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "up.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvstore", "pod", "up", "--nodes", "2", "--port", "0",
             "--bulk-port", "0", "--capacity", "32MiB", "--segment-size", "4MiB", "--dram",
             "8MiB", "--device", "posix", "--pod", "cli"],
            stdout=f, stderr=subprocess.STDOUT, env=env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + START_S
        while "kvstore pod: ready" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        text = out.read_text()
        etcd_url = re.search(r"kvstore pod: etcd on (\S+)", text).group(1)  # type: ignore[union-attr]
        urls = re.findall(r"kvstore pod: node\d\s+(http://\S+)\s+bulk (\S+)", text)
        assert [u.split("//")[1].split(":")[0] for u, _ in urls] == ["127.0.0.11", "127.0.0.12"]
        # a block through node 1 so status has something to count
        req = urllib.request.Request(f"{urls[0][0]}/bkt", method="PUT", data=b"")
        urllib.request.urlopen(req, timeout=5).close()
        # node2 learns the bucket from etcd's watch a moment later (as S3's CreateBucket, it
        # is eventually consistent); a GET through node2 before then is its NoSuchBucket
        deadline = time.monotonic() + 10
        while b'"bkt"' not in urllib.request.urlopen(f"{urls[1][0]}/v1/namespaces",
                                                     timeout=5).read():
            assert time.monotonic() < deadline, "node2 never saw bkt"
            time.sleep(0.05)
        req = urllib.request.Request(f"{urls[0][0]}/bkt/k", method="PUT", data=b"z" * 100)
        urllib.request.urlopen(req, timeout=5).close()
        for u, _ in urls:  # a GET of it through each node: node2 forwards its GET to node1
            urllib.request.urlopen(f"{u}/bkt/k", timeout=5).close()
        st = subprocess.run([sys.executable, "-m", "kvstore", "pod", "status", "--etcd",
                             etcd_url, "--pod", "cli", "--json"], capture_output=True,
                            text=True, env=env(), timeout=30)
        assert st.returncode == 0, st.stderr
        doc = json.loads(st.stdout)
        assert [n["node_id"] for n in doc["nodes"]] == ["node1", "node2"]
        assert doc["nodes"][1]["forwarded"]["get"]["ok"] == 1  # per node, by op and outcome
        assert doc["nodes"][1]["forwarded_requests"] >= 1 and "get" not in doc["nodes"][0][
            "forwarded"]  # node1 owns the block (its PUT dropped a stale copy at node2: delete)
        assert doc["total"]["forwarded_requests"] == sum(n["forwarded_requests"]
                                                         for n in doc["nodes"])
        assert all(n["reachable"] and n["registered"] for n in doc["nodes"])
        assert doc["nodes"][0]["blocks"] == 1 and doc["total"]["blocks"] == 1
        assert doc["total"]["capacity_bytes"] == 2 * 32 << 20 and "bkt" in doc["namespaces"]
        assert doc["replicas"]["bkt"] == 1
        human = subprocess.run([sys.executable, "-m", "kvstore", "pod", "status", "--etcd",
                                etcd_url, "--pod", "cli"], capture_output=True, text=True,
                               env=env(), timeout=30)
        assert "2 node(s), 2 reachable" in human.stdout, human.stdout
        assert re.search(r"node2 .* forwarded \d+ \(0 failed; get 1", human.stdout), human.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, out.read_text()
        assert "kvstore pod: stopped" in out.read_text()
        assert not any(_listening(u.split("//")[1]) or _listening(b) for u, b in urls)
        assert not _listening(etcd_url.split("//")[1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_pod_up_without_etcd_names_the_package(tmp_path: Path) -> None:
    e = env()
    e["PATH"] = str(tmp_path)  # no etcd on it
    res = subprocess.run([sys.executable, "-m", "kvstore", "pod", "up", "--nodes", "1"],
                         capture_output=True, text=True, env=e, timeout=30)
    assert res.returncode == 1 and "etcd-server" in res.stderr


def test_pod_status_with_etcd_down_exits_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run([sys.executable, "-m", "kvstore", "pod", "status", "--etcd",
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                         env=env(), timeout=30)
    assert res.returncode == 1 and "no etcd answered" in res.stderr


def test_pod_status_reaches_nodes_that_require_signatures(etcd: Etcd, tmp_path: Path) -> None:
    """Nodes served with credentials refuse unsigned /v1 calls; `pod status` reads their
    /metrics instead (unsigned, as Prometheus scrapes it), so they show as reachable."""
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"tenants": [{"name": "acme", "access_key": "AKIDACME",
                                              "secret_key": "acme-secret-key"}]}))
    node = PodNode(tmp_path, 1, ["--pod", "signed", "--etcd", etcd.url, "--etcd-lease-ttl", "2",
                    "--etcd-timeout", "0.3"],
                   "--credentials", str(creds))
    try:
        node.wait_ready()
        assert node.request("GET", "/v1/stats")[0] == 403  # unsigned: refused
        until(lambda: _registered(etcd.url, "signed"), "node1 registered")
        st = subprocess.run([sys.executable, "-m", "kvstore", "pod", "status", "--etcd",
                             etcd.url, "--pod", "signed", "--json"], capture_output=True,
                            text=True, env=env(), timeout=30)
        assert st.returncode == 0, st.stderr
        (row,) = json.loads(st.stdout)["nodes"]
        assert row["reachable"] and row["registered"] and row["blocks"] == 0, row
    finally:
        node.kill()


def _status(etcd_url: str, pod: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvstore", "pod", "status", "--etcd", etcd_url,
                           "--pod", pod, "--json", *flags], capture_output=True, text=True,
                          env=env(), timeout=30)


def test_pod_status_with_a_private_ca_and_mutual_tls(etcd: Etcd, tmp_path: Path) -> None:
    """A node served with TLS and mutual TLS (a CA made in the test): `pod status` reads its
    /metrics over HTTPS only with --tls-ca (the private CA) and --tls-cert/--tls-key (a client
    certificate the node's --tls-client-ca accepts); without them the node is DOWN and the
    reason says which check failed."""
    ca = CA(tmp_path, "pod-ca")
    server = ca.issue("node1", server=True, ips=("127.0.0.11",))
    client = ca.issue("operator", server=False)
    node = PodNode(tmp_path, 1, ["--pod", "tls", "--etcd", etcd.url, "--etcd-lease-ttl", "2",
                                 "--etcd-timeout", "0.3"],
                   "--tls-cert", str(server.cert), "--tls-key", str(server.key),
                   "--tls-client-ca", str(ca.pem))
    try:
        deadline = time.monotonic() + START_S  # (PodNode.wait_ready expects http://)
        while "kvstore: ready" not in node.out:
            assert node.proc.poll() is None and time.monotonic() < deadline, node.err[-2000:]
            time.sleep(0.05)
        assert re.search(rf"on https://{re.escape(node.host)}:\d+", node.out), node.out
        until(lambda: _status(etcd.url, "tls").returncode == 0
              and len(json.loads(_status(etcd.url, "tls").stdout)["nodes"]) == 1,
              "node1 registered")
        # the system trust store does not know the pod's CA
        (row,) = json.loads(_status(etcd.url, "tls").stdout)["nodes"]
        assert row["http"].startswith("https://") and not row["reachable"], row
        assert "CERTIFICATE_VERIFY_FAILED" in row["error"], row
        # the CA alone: the server is verified, but it wants a client certificate
        (row,) = json.loads(_status(etcd.url, "tls", "--tls-ca", str(ca.pem)).stdout)["nodes"]
        assert not row["reachable"], row
        st = _status(etcd.url, "tls", "--tls-ca", str(ca.pem), "--tls-cert", str(client.cert),
                     "--tls-key", str(client.key))
        assert st.returncode == 0, st.stderr
        doc = json.loads(st.stdout)
        (row,) = doc["nodes"]
        assert row["reachable"] and row["registered"] and row["blocks"] == 0, row
        assert doc["total"]["reachable"] == 1
        # the text form too
        txt = subprocess.run([sys.executable, "-m", "kvstore", "pod", "status", "--etcd",
                              etcd.url, "--pod", "tls", "--tls-ca", str(ca.pem), "--tls-cert",
                              str(client.cert), "--tls-key", str(client.key)],
                             capture_output=True, text=True, env=env(), timeout=30)
        assert txt.returncode == 0 and "1 reachable" in txt.stdout and " up " in txt.stdout, txt
        # bad TLS arguments: exit 2, naming the flag
        st = _status(etcd.url, "tls", "--tls-ca", str(tmp_path / "missing.pem"))
        assert st.returncode == 2 and "--tls-ca" in st.stderr, st.stderr
        st = _status(etcd.url, "tls", "--tls-key", str(client.key))
        assert st.returncode == 2 and "--tls-key needs --tls-cert" in st.stderr, st.stderr
    finally:
        node.kill()


def _registered(etcd_url: str, pod: str) -> bool:
    st = subprocess.run([sys.executable, "-m", "kvstore", "pod", "status", "--etcd", etcd_url,
                         "--pod", pod, "--json"], capture_output=True, text=True, env=env(),
                        timeout=30)
    return st.returncode == 0 and len(json.loads(st.stdout)["nodes"]) == 1
