"""What endless HTTP headers cost `kvstore serve`: how much of one header a connection may send,
the server's peak RSS, and the health probe's latency while a few connections stream them.

    .venv/bin/python loadtest/head_flood.py                      # 4 connections, 16 MiB each
    .venv/bin/python loadtest/head_flood.py --repo /path/to/other/checkout   # e.g. old code

It starts one `python -m kvstore serve` from ``--repo`` (development mode, memory device,
``--http-header-timeout 60`` so that only a head bound, not the deadline, stops a flooder), then
``--flooders`` connections each send a request line and one header whose value grows by 64 KiB
writes up to ``--header-mib`` MiB, while a prober sends ``GET /healthz`` on a new connection
every 20 ms (for at least ``--probe-seconds``). Reported: per flooder the bytes it got to send before the server closed (or all of
them) and the answer's status line; probe latency p50/p99/max during the flood; the server's
peak RSS (``VmHWM``) before and after. Written to ``loadtest/results/head-flood-<time>.json``
(``--out``), with the machine, the settings and the commit of ``--repo``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from loadtest.idle_sockets import start_server  # noqa: E402 - the same launcher

CHUNK = 64 * 1024


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def flood(port: int, total: int, out: dict[str, object]) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    sent, t0 = 0, time.monotonic()
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-huge: ")
        chunk = b"h" * CHUNK
        while sent < total:
            s.sendall(chunk)
            sent += CHUNK
        s.sendall(b"\r\n\r\n")
    except OSError:
        pass  # closed by the server
    answer = b""
    try:
        s.settimeout(120)
        while not answer.endswith(b"\n") and len(answer) < 200:
            got = s.recv(200)
            if not got:
                break
            answer += got
    except OSError:
        pass
    s.close()
    out.update(sent_bytes=sent, seconds=round(time.monotonic() - t0, 2),
               answer=answer.split(b"\r\n", 1)[0].decode("latin-1"))


def probe(port: int, stop: threading.Event, lat: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
            lat.append(time.perf_counter() - t0)
        except OSError:
            lat.append(float("inf"))
        time.sleep(0.02)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else -1.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout to run (default: this)")
    p.add_argument("--flooders", type=int, default=4)
    p.add_argument("--header-mib", type=int, default=16)
    p.add_argument("--probe-seconds", type=float, default=3.0,
                   help="probe for at least this long from the flood's start (default 3)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="head-flood-") as tmp:
        proc, http_port, _ = start_server(a.repo, tmp, ["--http-header-timeout", "60"])
        try:
            rss_before = peak_rss_mib(proc.pid)
            lat: list[float] = []
            stop = threading.Event()
            prober = threading.Thread(target=probe, args=(http_port, stop, lat), daemon=True)
            prober.start()
            results: list[dict[str, object]] = [{} for _ in range(a.flooders)]
            t0 = time.monotonic()
            threads = [threading.Thread(target=flood, args=(http_port, a.header_mib << 20, r))
                       for r in results]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            flood_s = round(time.monotonic() - t0, 2)
            time.sleep(max(0.0, a.probe_seconds - flood_s))  # probes for at least this long
            stop.set()
            prober.join(60)
            rss_after = peak_rss_mib(proc.pid)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)
    commit = subprocess.run(["git", "-C", str(a.repo), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    report = {
        "what": "head flood: endless HTTP header values",
        "tree": "this checkout" if a.repo.resolve() == ROOT else "--repo", "commit": commit,
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.platform()}",
        "settings": {"flooders": a.flooders, "header_mib": a.header_mib, "chunk_bytes": CHUNK,
                     "http_header_timeout_s": 60, "probe_seconds_min": a.probe_seconds},
        "flooders": results, "flood_seconds": flood_s,
        "probe_ms": {"n": len(lat), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                     "max": pct(lat, 1.0)},
        "server_peak_rss_mib": {"before": rss_before, "after": rss_after},
        "server_alive": alive,
    }
    print(json.dumps(report, indent=2))
    out = a.out or ROOT / "loadtest" / "results" / f"head-flood-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
