"""Load generators for bench_http: wrk (GET, PUT, POST), httperf (HEAD) and ab (HEAD fallback).

Each returns one run's record: requests, failed (non-2xx), socket errors, ok_rps (successful
requests per second), p50/p99 latency where the tool reports it, and ``cpu_us`` (the server
process's CPU time, user + system, per successful request, from /proc: on a shared machine a far
steadier figure than throughput, which moves with whatever else runs).

HEAD needs a tool that keeps the connection alive and knows a HEAD answer has no body: wrk 4.1
waits for a body of Content-Length bytes, and ab sends HTTP/1.0 ``Connection: Keep-Alive`` but
reuses the connection only when the answer says ``Connection: keep-alive``, which uvicorn never
writes, so ``ab -k`` opens a connection per request and measures accept and teardown, not the
request. httperf (one keep-alive HTTP/1.1 connection per process, ``conns`` processes) does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_RUNS = [0]  # wrk runs so far; PUT keys include it so no run overwrites another's keys


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_cpu(r: dict[str, float], pid: int, cpu0: float) -> dict[str, float]:
    ok = r["requests"] - r["failed"]
    r["cpu_us"] = (cpu_seconds(pid) - cpu0) / ok * 1e6 if ok > 0 else float("nan")
    return r


def wrk(url: str, seconds: float, threads: int, conns: int, script: str | None,
        body_file: Path | None, work: Path, name: str, pid: int) -> dict[str, float]:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency",
           "--timeout", "10s"]
    if script is not None:
        path = work / f"{name}.lua"
        path.write_text(script)
        cmd += ["-s", str(path)]
    _RUNS[0] += 1
    env = dict(os.environ, BENCH_BODY_FILE=str(body_file or ""), BENCH_RUN=str(_RUNS[0]))
    cpu0 = cpu_seconds(pid)
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
    return _with_cpu({
        "requests": total, "failed": bad, "socket_errors": sock_errors,
        "ok_rps": (total - bad) / elapsed if elapsed else 0.0,
        "p50_ms": float(p50.group(1)) * _UNIT[p50.group(2)] * 1e3 if p50 else float("nan"),
        "p99_ms": float(p99.group(1)) * _UNIT[p99.group(2)] * 1e3 if p99 else float("nan"),
    }, pid, cpu0)


def head_tool() -> str:
    return "httperf" if shutil.which("httperf") else "ab" if shutil.which("ab") else "none"


def head(host: str, port: int, path: str, seconds: float, conns: int,
         pid: int) -> dict[str, float]:
    tool = head_tool()
    if tool == "httperf":
        return httperf_head(host, port, path, seconds, conns, pid)
    if tool == "ab":
        return ab_head(f"http://{host}:{port}{path}", seconds, conns, pid)
    print("  HEAD skipped: neither httperf nor ab found (apt-get install httperf)", flush=True)
    return {"requests": 0, "failed": 0, "socket_errors": 0, "ok_rps": float("nan"),
            "p50_ms": float("nan"), "p99_ms": float("nan"), "cpu_us": float("nan")}


def httperf_head(host: str, port: int, path: str, seconds: float, conns: int,
                 pid: int) -> dict[str, float]:
    """``conns`` httperf processes, each one keep-alive connection issuing HEAD after HEAD, for
    ``seconds``; SIGINT makes each print its totals."""
    cmd = ["httperf", "--server", host, "--port", str(port), "--uri", path, "--method", "HEAD",
           "--num-conns", "1", "--num-calls", "100000000", "--hog"]
    cpu0 = cpu_seconds(pid)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(conns)]
    time.sleep(max(1.0, seconds))
    for p in procs:
        p.send_signal(signal.SIGINT)
    outs = [p.communicate(timeout=30)[0] for p in procs]
    r: dict[str, float] = {"requests": 0, "failed": 0, "socket_errors": 0, "ok_rps": 0.0,
                           "p50_ms": float("nan"), "p99_ms": float("nan")}
    for out in outs:
        m = re.search(r"replies (\d+) test-duration ([\d.]+) s", out)
        st = re.search(r"2xx=(\d+) 3xx=(\d+) 4xx=(\d+) 5xx=(\d+)", out)
        errs = re.search(r"Errors: total (\d+)", out)
        if m is None or st is None:
            raise SystemExit(f"httperf output not understood:\n{out}")
        replies, dur = int(m.group(1)), float(m.group(2))
        ok = int(st.group(1))
        r["requests"] += replies
        r["failed"] += replies - ok
        r["socket_errors"] += int(errs.group(1)) if errs else 0
        r["ok_rps"] += ok / dur if dur else 0.0
    return _with_cpu(r, pid, cpu0)


def ab_head(url: str, seconds: float, conns: int, pid: int) -> dict[str, float]:
    """HEAD with ApacheBench (a connection per request with uvicorn: see the module doc)."""
    cmd = ["ab", "-q", "-k", "-i", "-c", str(conns), "-t", str(max(1, round(seconds))),
           "-n", "10000000", url]
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    total = int(num(r"Complete requests:\s+(\d+)"))
    elapsed = num(r"Time taken for tests:\s+([\d.]+)")
    bad = int(num(r"Non-2xx responses:\s+(\d+)") + num(r"Failed requests:\s+(\d+)"))
    return _with_cpu({"requests": total, "failed": bad, "socket_errors": 0,
                      "ok_rps": (total - bad) / elapsed if elapsed else 0.0,
                      "p50_ms": num(r"\n\s+50%\s+(\d+)"), "p99_ms": num(r"\n\s+99%\s+(\d+)")},
                     pid, cpu0)
