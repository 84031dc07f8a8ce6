"""kvstore's S3 path vs a bare ASGI app on the same uvicorn stack, measured with wrk and httperf.

    .venv/bin/python loadtest/bench_http.py              # 3 rounds of 5 s per case
    .venv/bin/python loadtest/bench_http.py --quick      # 1 round of 2 s
    .venv/bin/python loadtest/bench_http.py --baseline DIR   # also an older tree, A/B per round

Both servers run as one process each on 127.0.0.1 with uvicorn, uvloop and httptools, access log
off: ``kvstore serve`` (development mode, so no signatures are sent) and this file's
``--bare-server`` mode, an ASGI app that answers the same status and the same response headers
(names and value sizes) and nothing else. In each round they are measured back to back with the
same load settings:

- GET of a 2 MiB object that lives in the DRAM tier (checked: flash hits do not move);
- PUT of 2 MiB bodies, every request to a new key (so kvstore really stores each one; the bare
  app reads and discards the body);
- HEAD of the 2 MiB object: httperf, one keep-alive connection per process, as many processes
  as wrk connections (``http_load``: ab -k opens a connection per request against uvicorn);
- POST /v1/{ns}/lookup of a 1,000-key chain (all present): req/s at -c8, p99 at -c1.

Ratios are kvstore / bare of successful requests per second, median over rounds (targets: GET
>= 0.9, PUT >= 0.7, HEAD >= 0.8), and, steadier on a shared machine, bare / kvstore of server CPU
time per request. ``--baseline DIR`` serves a third process from another source tree (e.g. ``git
archive`` of an older commit) measured in the same rounds, so old and new are compared under the
same noise. Any non-2xx answer is counted as a failure, never as throughput. Results go to
loadtest/results/http-<time>.md and .json with machine, settings and commit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtest"))

import bench_http_report  # noqa: E402
import http_load  # noqa: E402
from bench_http_report import report  # noqa: E402

from kvstore import keys, limits  # noqa: E402

OBJ_BYTES = 2 * limits.MiB
PAYLOAD = bytes(range(256)) * (OBJ_BYTES // 256)
CHAIN = 1000
assert (OBJ_BYTES, CHAIN) == (bench_http_report.OBJ_BYTES, bench_http_report.CHAIN)
START_SECONDS_MAX = 60.0
BUCKET = "bench"
LOOKUP_NS = "bench-lookup"

PUT_LUA = """
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
local run = os.getenv("BENCH_RUN")  -- every wrk run writes new keys
local n = 0
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
function request()
  n = n + 1
  return wrk.format("PUT", "/@BUCKET@/put-" .. run .. "-" .. tid .. "-" .. n,
                    {["Content-Type"] = "application/octet-stream"}, body)
end
""".replace("@BUCKET@", BUCKET)

HEAD_LUA = 'wrk.method = "HEAD"\n'  # marks the HEAD case; measured by http_load.head

LOOKUP_LUA = """
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
wrk.headers["Content-Type"] = "application/json"
f:close()
"""


# --- the bare app -------------------------------------------------------------------------------

BARE_ETAG = b'"0123456789abcdef0123456789abcdef"'  # an MD5 ETag's size
BARE_REQUEST_ID = b"0123456789ABCDEF0123"

async def bare_app(scope: dict, receive, send) -> None:  # noqa: ANN001 - ASGI callables
    """Returns / accepts the same bytes as kvstore, with no store behind it."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    method = scope["method"]
    if method in ("PUT", "POST"):
        size = 0
        while True:
            msg = await receive()
            size += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"etag", BARE_ETAG), (b"x-amz-request-id", BARE_REQUEST_ID),
            (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    # the headers kvstore's GetObject / HeadObject answer, in its order
    headers = [(b"etag", BARE_ETAG), (b"last-modified", b"Wed, 02 Dec 2026 01:00:00 GMT"),
               (b"accept-ranges", b"bytes"), (b"x-amz-request-id", BARE_REQUEST_ID),
               (b"content-type", b"binary/octet-stream"),
               (b"content-length", str(len(PAYLOAD)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else PAYLOAD})


def run_bare(port: int) -> None:
    import uvicorn

    from kvstore.server import http_config_options

    # kvstore's own uvicorn settings (no Server header, no proxy-headers middleware): the two
    # servers differ only in the app
    uvicorn.run(bare_app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_level="warning", **http_config_options())


# --- helpers ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_SECONDS_MAX
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


def request(port: int, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --- the run ------------------------------------------------------------------------------------

class Servers:
    """kvstore serve (and, with --baseline, a second one from another tree) and the bare app,
    each its own process on a free port."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.kv_port, self.bare_port = free_port(), free_port()
        self.work = work
        self.logs: list[object] = []
        self.kv = self._kvstore(ROOT, self.kv_port, "kvstore", args)
        self.base_port = free_port() if args.baseline else 0
        self.base = self._kvstore(Path(args.baseline), self.base_port, "baseline", args) \
            if args.baseline else None
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
        self.bare = subprocess.Popen([sys.executable, __file__, "--bare-server",
                                      str(self.bare_port)], env=env)
        wait_port(self.bare_port, self.bare)
        for name, port, proc in self.kvstores():
            wait_port(port, proc)
            deadline = time.monotonic() + START_SECONDS_MAX
            while b"kvstore: ready" not in (work / f"{name}.log").read_bytes():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{name} did not become ready")
                time.sleep(0.05)
        self.device = re.search(rb"device: (\w+)", (work / "kvstore.log").read_bytes()).group(1)

    def _kvstore(self, root: Path, port: int, name: str,
                 args: argparse.Namespace) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
        env["PYTHONPATH"] = f"{root}{os.pathsep}{root / 'clients'}"
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        return subprocess.Popen(
            [sys.executable, "-m", "kvstore", "serve", "--port", str(port),
             "--bulk-port", str(free_port()), "--data-dir", str(self.work / f"data-{name}"),
             "--capacity", args.capacity, "--segment-size", "64MiB", "--dram", args.dram,
             "--device", args.device, "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(root))

    def kvstores(self) -> list[tuple[str, int, subprocess.Popen]]:
        out = [("kvstore", self.kv_port, self.kv)]
        if self.base is not None:
            out.append(("baseline", self.base_port, self.base))
        return out

    def stop(self) -> int:
        procs = [p for _n, _port, p in self.kvstores()] + [self.bare]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        code = self.kv.wait(limits.shutdown_seconds_max + 10)
        if self.base is not None:
            self.base.wait(limits.shutdown_seconds_max + 10)
        self.bare.wait(30)
        for log in self.logs:
            log.close()  # type: ignore[attr-defined]
        return code


def kv_stats(port: int) -> dict[str, float]:
    status, body = request(port, "GET", "/v1/stats")
    assert status == 200, body
    return json.loads(body)["stats"]


def prepare_object(port: int) -> None:
    """The 2 MiB object, read back byte for byte."""
    assert request(port, "PUT", f"/{BUCKET}", headers={"content-length": "0"})[0] == 200
    status, body = request(port, "PUT", f"/{BUCKET}/obj", PAYLOAD)
    assert status == 200, body
    status, body = request(port, "GET", f"/{BUCKET}/obj")
    assert status == 200 and body == PAYLOAD, "kvstore returned different bytes"


def prepare(srv: Servers, work: Path) -> tuple[Path, Path]:
    """The 2 MiB object in every server's namespace, and a 1,000-key chain that is present."""
    for _name, port, _p in srv.kvstores():
        prepare_object(port)
    status, body = request(srv.bare_port, "GET", f"/{BUCKET}/obj")
    assert status == 200 and body == PAYLOAD
    status, body = request(srv.kv_port, "POST", "/v1/namespaces",
                           json.dumps({"name": LOOKUP_NS}).encode(),
                           {"content-type": "application/json"})
    assert status == 201, body
    layout = keys.Layout(model="bench", dtype="bfloat16", num_layers=1, num_kv_heads=1,
                         head_dim=1, tokens_per_block=16)
    chain = keys.block_keys(layout.fingerprint(), list(range(16 * CHAIN)), 16)
    conn = http.client.HTTPConnection("127.0.0.1", srv.kv_port, timeout=60)
    for k in chain:
        conn.request("PUT", f"/{LOOKUP_NS}/{k}", body=b"kv" * 8)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    conn.close()
    lookup_body = json.dumps({"keys": chain}).encode()
    status, body = request(srv.kv_port, "POST", f"/v1/{LOOKUP_NS}/lookup", lookup_body,
                           {"content-type": "application/json"})
    assert status == 200 and json.loads(body)["prefix_len"] == CHAIN, body
    body_file, lookup_file = work / "body.bin", work / "lookup.json"
    body_file.write_bytes(PAYLOAD)
    lookup_file.write_bytes(lookup_body)
    return body_file, lookup_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=5.0, help="per load run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="kvstore/bare pairs per case")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--conns", type=int, default=8, help="wrk connections (default 8)")
    ap.add_argument("--head-conns", type=int, default=4,
                    help="HEAD keep-alive connections, one httperf process each (default 4: "
                         "httperf spends ~40 us of CPU a request, on the same cores)")
    ap.add_argument("--capacity", default="8GiB", help="kvstore flash budget")
    ap.add_argument("--dram", default="1GiB", help="kvstore DRAM tier")
    ap.add_argument("--device", default="auto", help="kvstore device")
    ap.add_argument("--baseline", metavar="DIR", help="also serve this source tree (A/B)")
    ap.add_argument("--cases", default="get,head,lookup,put",
                    help="comma-separated subset of get,head,lookup,put")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s")
    ap.add_argument("--out", default=str(ROOT / "loadtest" / "results"))
    args = ap.parse_args()
    if args.bare_server:
        run_bare(args.bare_server)
        return 0
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    if not 1 <= args.rounds <= 20 or not 1 <= args.seconds <= 120:
        raise SystemExit("--rounds must be 1..20 and --seconds 1..120")
    if not 1 <= args.head_conns <= 64:
        raise SystemExit("--head-conns must be 1..64")
    args.cases = [c for c in args.cases.split(",") if c]
    if not set(args.cases) <= {"get", "head", "lookup", "put"}:
        raise SystemExit("--cases: a subset of get,head,lookup,put")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    if args.baseline and not (Path(args.baseline) / "kvstore" / "__main__.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: not a kvstore source tree")
    work = Path(tempfile.mkdtemp(prefix="kvstore-bench-http-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    srv = Servers(work, args)
    results: dict[str, list[dict[str, float]]] = {}
    targets = [(n, port, p.pid) for n, port, p in srv.kvstores()] + \
        [("bare", srv.bare_port, srv.bare.pid)]

    def measure(case: str, port: int, pid: int, path: str, script: str | None,
                body: Path | None, threads: int | None = None,
                conns: int | None = None) -> dict[str, float]:
        if script == HEAD_LUA:
            r = http_load.head("127.0.0.1", port, path, args.seconds, args.head_conns, pid)
        else:
            r = http_load.wrk(f"http://127.0.0.1:{port}{path}", args.seconds,
                              threads or args.threads, conns or args.conns, script, body, work,
                              case.split("/")[0], pid)
        results.setdefault(case, []).append(r)
        print(f"  {case:16s} {r['ok_rps']:9.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
              f"p99 {r['p99_ms']:7.2f} ms  cpu {r['cpu_us']:7.1f} us/req  "
              f"failed {r['failed'] + r['socket_errors']}", flush=True)
        return r

    def rounds(op: str, path: str, script: str | None, body: Path | None) -> None:
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}: {op.upper()}", flush=True)
            order = targets if i % 2 == 0 else targets[::-1]  # alternate who goes first
            for name, port, pid in order:
                measure(f"{op}/{name}", port, pid, path, script, body)

    dram_hits = flash_hits = 0.0
    try:
        body_file, lookup_file = prepare(srv, work)
        before = kv_stats(srv.kv_port)
        obj = f"/{BUCKET}/obj"
        if "get" in args.cases:  # first: PUTs later must not push the object out of DRAM
            rounds("get", obj, None, None)
        after = kv_stats(srv.kv_port)
        flash_hits = after.get("hits_flash", 0) - before.get("hits_flash", 0)
        dram_hits = after.get("hits_dram", 0) - before.get("hits_dram", 0)
        if "head" in args.cases:
            rounds("head", obj, HEAD_LUA, None)
        if "lookup" in args.cases:
            lookup_path = f"/v1/{LOOKUP_NS}/lookup"
            measure("lookup/c8", srv.kv_port, srv.kv.pid, lookup_path, LOOKUP_LUA, lookup_file)
            measure("lookup/c1", srv.kv_port, srv.kv.pid, lookup_path, LOOKUP_LUA, lookup_file,
                    1, 1)
        if "put" in args.cases:
            rounds("put", "", PUT_LUA, body_file)
        final = kv_stats(srv.kv_port)
        status, body = request(srv.kv_port, "POST", "/v1/check")
        check = json.loads(body)
    finally:
        exit_code = srv.stop()
    return report(args, results, srv.device.decode(), {
        "get_dram_hits": dram_hits, "get_flash_hits": flash_hits, "check_ok": check.get("ok"),
        "check_problems": check.get("problems", [])[:20],
        "puts_stored": final.get("puts", 0) - after.get("puts", 0),
        "kvstore_exit_code": exit_code, "head_tool": http_load.head_tool()})


if __name__ == "__main__":
    sys.exit(main())
