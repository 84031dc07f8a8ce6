"""kvstore's S3 path vs a bare ASGI app on the same uvicorn stack, measured with wrk.

    .venv/bin/python loadtest/bench_http.py              # 3 rounds of 5 s per case
    .venv/bin/python loadtest/bench_http.py --quick      # 1 round of 2 s

Both servers run as one process each on 127.0.0.1 with uvicorn, uvloop and httptools, access log
off: ``kvstore serve`` (development mode, so wrk sends no signatures) and this file's
``--bare-server`` mode, an ASGI app that returns / accepts the same 2 MiB bytes and nothing else.
In each round the two are measured back to back with the same wrk settings:

- GET of a 2 MiB object that lives in the DRAM tier (checked: flash hits do not move);
- PUT of 2 MiB bodies, every request to a new key (so kvstore really stores each one);
- HEAD of the 2 MiB object (with ApacheBench, ``ab -k -i``: wrk 4.1 cannot parse HEAD answers);
- POST /v1/{ns}/lookup of a 1,000-key chain (all present): req/s at -c8, p99 at -c1.

Ratios are kvstore / bare of successful requests per second, median over rounds (target >= 0.8
for GET and PUT). Any non-2xx answer is counted as a failure, never as throughput. Results go to
loadtest/results/http-<time>.md and .json with machine, settings and commit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvstore import keys, limits  # noqa: E402

OBJ_BYTES = 2 * limits.MiB
PAYLOAD = bytes(range(256)) * (OBJ_BYTES // 256)
CHAIN = 1000
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

HEAD_LUA = 'wrk.method = "HEAD"\n'  # marks the HEAD case; measured with ab (see ab_head)

LOOKUP_LUA = """
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
wrk.headers["Content-Type"] = "application/json"
f:close()
"""


# --- the bare app -------------------------------------------------------------------------------

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
        headers = [(b"etag", b'"0123456789abcdef"'), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"application/octet-stream"),
               (b"content-length", str(len(PAYLOAD)).encode()), (b"etag", b'"0123456789abcdef"')]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else PAYLOAD})


def run_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="on")


# --- helpers ------------------------------------------------------------------------------------

def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


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


_RUNS = 0  # wrk runs so far; PUT keys include it so no run overwrites another's keys
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk(url: str, seconds: float, threads: int, conns: int, script: str | None,
        body_file: Path | None, work: Path, name: str = "get") -> dict[str, float]:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency",
           "--timeout", "10s"]
    if script is not None:
        path = work / f"{name}.lua"
        path.write_text(script)
        cmd += ["-s", str(path)]
    global _RUNS
    _RUNS += 1
    env = dict(os.environ, BENCH_BODY_FILE=str(body_file or ""), BENCH_RUN=str(_RUNS))
    out = subprocess.run([*cmd, url], capture_output=True, text=True, env=env,
                         timeout=seconds + 60).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m is None:
        raise SystemExit(f"wrk output not understood:\n{out}")
    total = int(m.group(1))
    elapsed = float(m.group(2)) * _UNIT[m.group(3)]
    bad = int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1])
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock_errors = sum(int(x) for x in errs.groups()) if errs else 0
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    return {
        "requests": total, "failed": bad, "socket_errors": sock_errors,
        "ok_rps": (total - bad) / elapsed if elapsed else 0.0,
        "p50_ms": float(p50.group(1)) * _UNIT[p50.group(2)] * 1e3 if p50 else float("nan"),
        "p99_ms": float(p99.group(1)) * _UNIT[p99.group(2)] * 1e3 if p99 else float("nan"),
    }


def ab_head(url: str, seconds: float, conns: int) -> dict[str, float]:
    """HEAD load with ApacheBench: wrk 4.1 cannot parse bodiless HEAD answers that carry a
    Content-Length (it waits for the body), so HEAD goes through ab (apache2-utils)."""
    if shutil.which("ab") is None:
        print("  HEAD skipped: ab not found (apt-get install apache2-utils)", flush=True)
        return {"requests": 0, "failed": 0, "socket_errors": 0, "ok_rps": float("nan"),
                "p50_ms": float("nan"), "p99_ms": float("nan")}
    cmd = ["ab", "-q", "-k", "-i", "-c", str(conns), "-t", str(max(1, round(seconds))),
           "-n", "10000000", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    total = int(num(r"Complete requests:\s+(\d+)"))
    elapsed = num(r"Time taken for tests:\s+([\d.]+)")
    bad = int(num(r"Non-2xx responses:\s+(\d+)") + num(r"Failed requests:\s+(\d+)"))
    return {"requests": total, "failed": bad, "socket_errors": 0,
            "ok_rps": (total - bad) / elapsed if elapsed else 0.0,
            "p50_ms": num(r"\n\s+50%\s+(\d+)"), "p99_ms": num(r"\n\s+99%\s+(\d+)")}


def machine() -> dict[str, object]:
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "wrk": sh("dpkg-query", "-W", "-f=${Version}", "wrk") or "unknown"}


def git_commit() -> str:
    head = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", str(ROOT), "status", "--porcelain", "--", "kvstore")
    return head + ("-dirty" if dirty else "")


# --- the run ------------------------------------------------------------------------------------

class Servers:
    """kvstore serve and the bare app, each its own process on a free port."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.kv_port, self.bare_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'clients'}"
        self.kv_log = open(work / "kvstore.log", "wb")  # noqa: SIM115 - closed in stop()
        self.kv = subprocess.Popen(
            [sys.executable, "-m", "kvstore", "serve", "--port", str(self.kv_port),
             "--bulk-port", str(free_port()), "--data-dir", str(work / "data"),
             "--capacity", args.capacity, "--segment-size", "64MiB", "--dram", args.dram,
             "--device", args.device, "--log-level", "warning"],
            stdout=self.kv_log, stderr=subprocess.STDOUT, env=env)
        self.bare = subprocess.Popen([sys.executable, __file__, "--bare-server",
                                      str(self.bare_port)], env=env)
        wait_port(self.kv_port, self.kv)
        wait_port(self.bare_port, self.bare)
        deadline = time.monotonic() + START_SECONDS_MAX
        while b"kvstore: ready" not in (work / "kvstore.log").read_bytes():
            if time.monotonic() > deadline or self.kv.poll() is not None:
                raise SystemExit("kvstore did not become ready")
            time.sleep(0.05)
        self.device = re.search(rb"device: (\w+)", (work / "kvstore.log").read_bytes()).group(1)

    def stop(self) -> int:
        for p in (self.kv, self.bare):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        code = self.kv.wait(limits.shutdown_seconds_max + 10)
        self.bare.wait(30)
        self.kv_log.close()
        return code


def kv_stats(port: int) -> dict[str, float]:
    status, body = request(port, "GET", "/v1/stats")
    assert status == 200, body
    return json.loads(body)["stats"]


def prepare(srv: Servers, work: Path) -> tuple[Path, Path]:
    """The 2 MiB object in both servers' namespaces, and a 1,000-key chain that is present."""
    assert request(srv.kv_port, "PUT", f"/{BUCKET}", headers={"content-length": "0"})[0] == 200
    status, body = request(srv.kv_port, "PUT", f"/{BUCKET}/obj", PAYLOAD)
    assert status == 200, body
    status, body = request(srv.kv_port, "GET", f"/{BUCKET}/obj")
    assert status == 200 and body == PAYLOAD, "kvstore returned different bytes"
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
    ap.add_argument("--seconds", type=float, default=5.0, help="per wrk run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="kvstore/bare pairs per case")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--conns", type=int, default=8, help="wrk connections (default 8)")
    ap.add_argument("--capacity", default="8GiB", help="kvstore flash budget")
    ap.add_argument("--dram", default="1GiB", help="kvstore DRAM tier")
    ap.add_argument("--device", default="auto", help="kvstore device")
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
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="kvstore-bench-http-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    srv = Servers(work, args)
    results: dict[str, list[dict[str, float]]] = {}

    def measure(case: str, port: int, path: str, script: str | None, body: Path | None,
                threads: int | None = None, conns: int | None = None) -> dict[str, float]:
        url = f"http://127.0.0.1:{port}{path}"
        if script == HEAD_LUA:
            r = ab_head(url, args.seconds, conns or args.conns)
        else:
            r = wrk(url, args.seconds, threads or args.threads, conns or args.conns, script, body,
                    work, name=case.split("/")[0])
        results.setdefault(case, []).append(r)
        print(f"  {case:14s} {r['ok_rps']:9.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
              f"p99 {r['p99_ms']:7.2f} ms  failed {r['failed'] + r['socket_errors']}", flush=True)
        return r

    try:
        body_file, lookup_file = prepare(srv, work)
        before = kv_stats(srv.kv_port)
        obj = f"/{BUCKET}/obj"
        for i in range(args.rounds):  # GET first: PUTs later must not push the object out of DRAM
            print(f"round {i + 1}/{args.rounds}: GET", flush=True)
            measure("get/kvstore", srv.kv_port, obj, None, None)
            measure("get/bare", srv.bare_port, obj, None, None)
        after = kv_stats(srv.kv_port)
        flash_hits = after.get("hits_flash", 0) - before.get("hits_flash", 0)
        dram_hits = after.get("hits_dram", 0) - before.get("hits_dram", 0)
        print("HEAD and lookup", flush=True)
        measure("head/kvstore", srv.kv_port, obj, HEAD_LUA, None)
        measure("head/bare", srv.bare_port, obj, HEAD_LUA, None)
        lookup_path = f"/v1/{LOOKUP_NS}/lookup"
        measure("lookup/c8", srv.kv_port, lookup_path, LOOKUP_LUA, lookup_file)
        measure("lookup/c1", srv.kv_port, lookup_path, LOOKUP_LUA, lookup_file, 1, 1)
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}: PUT", flush=True)
            measure("put/kvstore", srv.kv_port, "", PUT_LUA, body_file)
            measure("put/bare", srv.bare_port, "", PUT_LUA, body_file)
        final = kv_stats(srv.kv_port)
        status, body = request(srv.kv_port, "POST", "/v1/check")
        check = json.loads(body)
    finally:
        exit_code = srv.stop()
    return report(args, results, srv.device.decode(), {
        "get_dram_hits": dram_hits, "get_flash_hits": flash_hits, "check_ok": check.get("ok"),
        "puts_stored": final.get("puts", 0) - after.get("puts", 0),
        "kvstore_exit_code": exit_code})


def report(args: argparse.Namespace, results: dict[str, list[dict[str, float]]], device: str,
           facts: dict[str, object]) -> int:
    def med(case: str, field: str = "ok_rps") -> float:
        return statistics.median(r[field] for r in results[case])

    def ratio(op: str) -> float:
        return statistics.median(k["ok_rps"] / b["ok_rps"] if b["ok_rps"] else 0.0
                                 for k, b in zip(results[f"{op}/kvstore"], results[f"{op}/bare"],
                                                 strict=True))

    failed = sum(r["failed"] + r["socket_errors"] for rs in results.values() for r in rs)
    summary = {
        "get_ratio": ratio("get"), "put_ratio": ratio("put"), "head_ratio": ratio("head"),
        "get_kvstore_gbps": med("get/kvstore") * OBJ_BYTES / 1e9,
        "get_bare_gbps": med("get/bare") * OBJ_BYTES / 1e9,
        "put_kvstore_gbps": med("put/kvstore") * OBJ_BYTES / 1e9,
        "put_bare_gbps": med("put/bare") * OBJ_BYTES / 1e9,
        "head_kvstore_rps": med("head/kvstore"), "head_bare_rps": med("head/bare"),
        "lookup_c8_rps": med("lookup/c8"), "lookup_c8_p99_ms": med("lookup/c8", "p99_ms"),
        "lookup_c1_rps": med("lookup/c1"), "lookup_c1_p99_ms": med("lookup/c1", "p99_ms"),
        "failed_requests": failed,
    }
    doc = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
           "machine": machine(), "device": device,
           "settings": {"object_bytes": OBJ_BYTES, "seconds": args.seconds, "rounds": args.rounds,
                        "wrk_threads": args.threads, "wrk_conns": args.conns,
                        "chain_keys": CHAIN, "dram": args.dram, "capacity": args.capacity,
                        "server": "uvicorn, loop=uvloop, http=httptools, 1 process each"},
           "summary": summary, "facts": facts, "runs": results}
    m = doc["machine"]
    lines = [
        f"# kvstore HTTP vs bare ASGI ({doc['when']}, commit {doc['commit']})", "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, kernel {m['kernel']}, "
        f"Python {m['python']}, wrk {m['wrk']}; kvstore device {device}.",
        f"Settings: 2 MiB objects, wrk -t{args.threads} -c{args.conns}, {args.seconds:g} s per "
        f"run, {args.rounds} round(s), kvstore --dram {args.dram}; both servers uvicorn + uvloop "
        "+ httptools, one process each, on 127.0.0.1.", "",
        "| case | kvstore | bare ASGI | ratio (target) |", "|---|---:|---:|---:|",
        f"| GET 2 MiB (DRAM tier) | {summary['get_kvstore_gbps']:.2f} GB/s | "
        f"{summary['get_bare_gbps']:.2f} GB/s | {summary['get_ratio']:.2f} (>= 0.8) |",
        f"| PUT 2 MiB (new key each) | {summary['put_kvstore_gbps']:.2f} GB/s | "
        f"{summary['put_bare_gbps']:.2f} GB/s | {summary['put_ratio']:.2f} (>= 0.8) |",
        f"| HEAD (ab -k -c{args.conns}) | {summary['head_kvstore_rps']:.0f} req/s | "
        f"{summary['head_bare_rps']:.0f} req/s | {summary['head_ratio']:.2f} |",
        f"| lookup 1,000-key chain, -c{args.conns} | {summary['lookup_c8_rps']:.0f} req/s, p99 "
        f"{summary['lookup_c8_p99_ms']:.2f} ms | | |",
        f"| lookup 1,000-key chain, -c1 | {summary['lookup_c1_rps']:.0f} req/s, p99 "
        f"{summary['lookup_c1_p99_ms']:.2f} ms | | (p99 < 2 ms) |", "",
        f"GET served from DRAM: {facts['get_dram_hits']} DRAM hits, {facts['get_flash_hits']} "
        f"flash hits during the GET runs. PUT runs stored {facts['puts_stored']} new blocks. "
        f"Failed requests (non-2xx or socket errors): {failed}. check() ok: {facts['check_ok']}. "
        f"kvstore exit code after SIGTERM: {facts['kvstore_exit_code']}.",
    ]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"http-{stamp}.md").write_text(text)
    (out / f"http-{stamp}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: loadtest/results/http-{stamp}.md and .json")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
