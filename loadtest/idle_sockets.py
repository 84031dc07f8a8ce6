"""How long a silent or slow peer keeps a connection of `kvstore serve` open, and whether health
probes still answer while the connection cap is full of them.

    .venv/bin/python loadtest/idle_sockets.py                 # hold each socket up to 60 s
    .venv/bin/python loadtest/idle_sockets.py --hold 30 --flood 1100
    .venv/bin/python loadtest/idle_sockets.py --repo /path/to/other/checkout   # e.g. old code

It starts one `python -m kvstore serve` (development mode, memory device, default timeouts
unless ``-- FLAGS`` are given after the options) on free loopback ports, then opens at once:

- ``http-idle``: an HTTP connection that sends nothing;
- ``http-half-line``: sends ``GET /hea`` and stops;
- ``http-partial-headers``: a request line and one header, no blank line;
- ``http-slow-body``: a PUT with ``Content-Length: 1048576`` sending one byte a second;
- ``bulk-no-hello``: a bulk connection that never sends HELLO;
- ``bulk-idle``: an authenticated bulk connection (kvstore_client) that then sends nothing;

and reports for each how many seconds the server kept it open ("open" = still open when
``--hold`` ended). With ``--flood N`` it then opens N idle HTTP sockets and N idle bulk sockets
and reports what a new ``GET /healthz``, a new ``GET /v1/namespaces`` and a new bulk handshake
get while they are open, and how long until those answer normally again.

The report is printed and written to ``loadtest/results/idle-sockets-<time>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS_MAX = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(repo: Path, tmp: str, extra: list[str]) -> tuple[subprocess.Popen[bytes], int,
                                                                   int]:
    http_port, bulk_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env["PYTHONPATH"] = f"{repo}:{repo / 'clients'}"
    out = open(os.path.join(tmp, "serve.out"), "wb")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore", "serve", "--port", str(http_port), "--bulk-port",
         str(bulk_port), "--data-dir", os.path.join(tmp, "data"), "--device", "memory",
         "--capacity", "64MiB", "--segment-size", "4MiB", "--dram", "8MiB",
         "--log-level", "error", *extra],
        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    deadline = time.monotonic() + START_SECONDS_MAX
    path = os.path.join(tmp, "serve.out")
    while "kvstore: ready" not in Path(path).read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"server did not start: {Path(path).read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return proc, http_port, bulk_port


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    return s


def bulk_authenticated(repo: Path, port: int) -> socket.socket:
    sys.path[:0] = [str(repo), str(repo / "clients")]
    from kvstore_client.client import SyncConnection

    conn = SyncConnection("127.0.0.1", port, "dev", "", "idle-probe", create=True, timeout=5)
    conn.sock.setblocking(False)
    return conn.sock


def closed(s: socket.socket) -> bool:
    """True when the peer closed (EOF or reset); reads and drops whatever it sent."""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def watch(socks: dict[str, socket.socket], hold: float, slow: set[str]) -> dict[str, float | None]:
    """Seconds until each socket was closed by the server; None if still open after ``hold``."""
    t0 = time.monotonic()
    lived: dict[str, float | None] = {name: None for name in socks}
    open_ = dict(socks)
    next_byte = t0 + 1.0
    while open_ and time.monotonic() - t0 < hold:
        select.select(list(open_.values()), [], [], 0.05)
        now = time.monotonic()
        for name, s in list(open_.items()):
            gone = closed(s)
            if not gone and name in slow and now >= next_byte:
                try:
                    s.send(b"x")
                except OSError:
                    gone = True
            if gone:
                lived[name] = round(now - t0, 2)
                del open_[name]
                s.close()
        if now >= next_byte:
            next_byte += 1.0
    for s in open_.values():
        s.close()
    return lived


def http_status(port: int, path: str) -> str:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        c.close()
        return str(r.status)
    except OSError as exc:
        return type(exc).__name__


def bulk_status(repo: Path, port: int) -> str:
    try:
        s = bulk_authenticated(repo, port)
    except Exception as exc:  # noqa: BLE001 - the answer is what we report
        return type(exc).__name__
    s.close()
    return "ok"


def flood(repo: Path, http_port: int, bulk_port: int, n: int, hold: float) -> dict[str, object]:
    socks = []
    for port in (http_port, bulk_port):
        for _ in range(n):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
    time.sleep(0.5)  # let the server accept them
    during = {"healthz": http_status(http_port, "/healthz"),
              "v1_namespaces": http_status(http_port, "/v1/namespaces"),
              "bulk_handshake": bulk_status(repo, bulk_port)}
    t0 = time.monotonic()
    recovered = None
    while time.monotonic() - t0 < hold:
        if (http_status(http_port, "/v1/namespaces") == "200"
                and bulk_status(repo, bulk_port) == "ok"):
            recovered = round(time.monotonic() - t0, 2)
            break
        time.sleep(0.5)
    for s in socks:
        s.close()
    return {"flood_sockets_per_port": n, "while_flooded": during,
            "normal_again_after_s": recovered if recovered is not None else f"> {hold:g}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hold", type=float, default=60.0, help="seconds to hold each socket")
    p.add_argument("--flood", type=int, default=0, help="idle sockets per port for the cap test")
    p.add_argument("--repo", type=Path, default=ROOT, help="checkout whose server to start")
    p.add_argument("--out", type=Path, default=None, help="report file (default: results/)")
    p.add_argument("serve_flags", nargs="*", help="extra `kvstore serve` flags (after --)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, http_port, bulk_port = start_server(a.repo.resolve(), tmp, a.serve_flags)
        try:
            commit = subprocess.run(["git", "-C", str(a.repo), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
            socks = {
                "http-idle": connect(http_port),
                "http-half-line": connect(http_port),
                "http-partial-headers": connect(http_port),
                "http-slow-body": connect(http_port),
                "bulk-no-hello": connect(bulk_port),
                "bulk-idle": bulk_authenticated(a.repo.resolve(), bulk_port),
            }
            socks["http-half-line"].send(b"GET /hea")
            socks["http-partial-headers"].send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks["http-slow-body"].send(b"PUT /bkt/key HTTP/1.1\r\nHost: x\r\n"
                                         b"Content-Length: 1048576\r\n\r\n")
            lived = watch(socks, a.hold, {"http-slow-body"})
            report: dict[str, object] = {
                "repo": a.repo.resolve().name, "commit": commit, "hold_s": a.hold,
                "serve_flags": a.serve_flags,
                "seconds_open": {k: (v if v is not None else f"open after {a.hold:g}")
                                 for k, v in lived.items()},
            }
            if a.flood:
                report["flood"] = flood(a.repo.resolve(), http_port, bulk_port, a.flood, a.hold)
            metrics = http_status(http_port, "/metrics")
            if metrics == "200":
                c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
                c.request("GET", "/metrics")
                text = c.getresponse().read().decode()
                report["timeout_counters"] = re.findall(
                    r"^kvstore_connection_timeouts_total\{.*$", text, re.M)
            report["machine"] = f"{platform.node()} {os.cpu_count()} CPUs, {platform.platform()}"
            text = json.dumps(report, indent=2)
            print(text)
            out = a.out or ROOT / "loadtest" / "results" / time.strftime(
                "idle-sockets-%Y%m%d-%H%M%S.json")
            out.write_text(text + "\n")
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
