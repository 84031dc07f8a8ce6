"""LMCache's own L2 benchmark (``lmcache bench l2``) against kvstore and a real Redis, side by
side in one run (a script, not a test), data verification on:

(a) kvstore through the ``native_plugin`` adapter (``kvstore_connectors.lmcache``, bulk port),
    blocks on flash (``--dram 0``: every load is read from the data dir);
(b) kvstore through LMCache's C++ ``resp`` adapter pointed at ``kvstore serve --resp-port``
    (run only when this tree's ``kvstore serve`` has the flag), DRAM tier off as in (a);
(c) Debian's ``redis-server`` (persistence off) through the same ``resp`` adapter.

Each kvstore runs as its own ``kvstore serve`` process on 127.0.0.1 with a fresh data dir; the
LMCache side runs from the LMCache venv (``make test-integrations-lmcache`` builds it). Writes
loadtest/results/lmcache-*.{json,md} with GB/s for store and load.

    .venv/bin/python loadtest/bench_lmcache.py [--lmcache .venv-integrations/lmcache/bin/lmcache]
        [--num-keys 32] [--data-size-kb 2048] [--rounds 5] [--in-flight 1 4]
"""

from __future__ import annotations

import argparse
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
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_engine import git_commit, machine  # noqa: E402

START_S = 60.0
BENCH_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "clients")])
    e["LMCACHE_TRACK_USAGE"] = "false"
    e["LMCACHE_DISABLE_BANNER"] = "1"
    e["AWS_EC2_METADATA_DISABLED"] = "true"
    return e


class Kvstore:
    def __init__(self, work: Path, extra: list[str]) -> None:
        self.out = work / "kvstore.out"
        args = ["--host", "127.0.0.1", "--port", str(free_port()), "--bulk-port",
                str(free_port()), "--data-dir", str(work / "data"), "--capacity", "4GiB",
                "--segment-size", "256MiB", "--dram", "0", *extra]
        self.bulk_port = int(args[args.index("--bulk-port") + 1])
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "kvstore", "serve", *args],
                                         stdout=out, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + START_S
        while "kvstore: ready" not in self.out.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kvstore did not start: {self.out.read_text()[-2000:]}")
            time.sleep(0.05)
        m = re.search(r"kvstore: device: (\w+)", self.out.read_text())
        self.device = m.group(1) if m else "?"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)


class Redis:
    def __init__(self, work: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found (Debian package redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen([exe, "--save", "", "--appendonly", "no", "--port",
                                      str(self.port), "--bind", "127.0.0.1", "--dir", str(work),
                                      "--maxmemory", "0"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


def bench(lmcache: str, adapter: dict[str, Any], args: argparse.Namespace, in_flight: int,
          work: Path, name: str) -> dict[str, Any]:
    out = work / f"{name}-{in_flight}.json"
    cmd = [lmcache, "bench", "l2", "--l2-adapter", json.dumps(adapter), "--num-keys",
           str(args.num_keys), "--data-size-kb", str(args.data_size_kb), "--rounds",
           str(args.rounds), "--in-flight", str(in_flight), "--no-skip-verify",
           "--lookup-max-hit-rate", "1.0", "--format", "json", "--output", str(out)]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=BENCH_S)
    text = p.stdout + p.stderr
    verified = bool(re.search(r"\[Verify\] All \d+ keys data verified OK", text))
    if p.returncode != 0 or not out.exists():
        return {"error": f"exit {p.returncode}: {text[-1500:]}", "verified": verified}
    m = json.loads(out.read_text())["metrics"]
    ops = {v["operation"].lower(): v for k, v in m.items() if k.startswith("op_")}
    r = {"verified": verified}
    for op in ("store", "load"):
        r[f"{op}_gbps"] = round(ops[op]["throughput_avg_mbps"] / 1000, 3)
        r[f"{op}_ms_p50"] = ops[op]["duration_p50_ms"]
        r[f"{op}_success"] = f'{ops[op]["total_success"]}/{ops[op]["total_keys"]}'
    r["lookup_ms_p50"] = ops["lookup"]["duration_p50_ms"]
    return r


def serve_has(flag: str) -> bool:
    """Whether this tree's ``kvstore serve`` declares ``flag`` (read from kvstore/config/)."""
    return any(f'"{flag}"' in p.read_text() for p in (ROOT / "kvstore" / "config").glob("*.py"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lmcache", default=str(ROOT / ".venv-integrations/lmcache/bin/lmcache"))
    ap.add_argument("--num-keys", type=int, default=32)
    ap.add_argument("--data-size-kb", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--workers", type=int, default=4, help="native_plugin worker threads")
    args = ap.parse_args()
    if not Path(args.lmcache).exists():
        print(f"no lmcache at {args.lmcache}: make test-integrations-lmcache builds it")
        return 2
    res: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
                           "settings": {k: v for k, v in vars(args).items() if k != "lmcache"},
                           "rows": {}}
    base = ROOT / "loadtest/results/tmp"  # git-ignored; the data dirs sit on this disk
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-lmcache-", dir=base) as t:
        work = Path(t)
        res["machine"] = machine(work)
        have_resp = serve_has("--resp-port")
        for fl in args.in_flight:
            (work / f"kv-{fl}").mkdir()
            kv = Kvstore(work / f"kv-{fl}", [])
            res["device"] = kv.device
            plugin = {"type": "native_plugin", "module_path": "kvstore_connectors.lmcache",
                      "class_name": "KVStoreL2Client",
                      "adapter_params": {"host": "127.0.0.1", "port": kv.bulk_port,
                                         "namespace": "lmcache-bench",
                                         "num_workers": args.workers}}
            try:
                res["rows"][f"a_kvstore_native_plugin_flash_if{fl}"] = bench(
                    args.lmcache, plugin, args, fl, work, "plugin")
            finally:
                kv.stop()
            if have_resp:
                (work / f"kvr-{fl}").mkdir()
                rport = free_port()
                kv = Kvstore(work / f"kvr-{fl}", ["--resp-port", str(rport),
                                                  "--resp-namespace", "lmcache-bench"])
                try:
                    res["rows"][f"b_kvstore_resp_flash_if{fl}"] = bench(
                        args.lmcache, {"type": "resp", "host": "127.0.0.1", "port": rport,
                                       "num_workers": 8}, args, fl, work, "kvresp")
                finally:
                    kv.stop()
            else:
                res["rows"][f"b_kvstore_resp_flash_if{fl}"] = {
                    "error": "skipped: this tree's kvstore serve has no --resp-port yet"}
            red = Redis(work)
            try:
                res["rows"][f"c_redis_resp_if{fl}"] = bench(
                    args.lmcache, {"type": "resp", "host": "127.0.0.1", "port": red.port,
                                   "num_workers": 8}, args, fl, work, "redis")
            finally:
                red.stop()
    for name, r in res["rows"].items():
        print(f"{name:40s} " + ("  ".join(f"{k}={v}" for k, v in r.items())))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "loadtest/results" / f"lmcache-{stamp}"
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# lmcache bench l2: kvstore vs redis-server ({res['when']}, {res['commit']})", "",
             f"{args.num_keys} keys x {args.data_size_kb} KiB per submit, {args.rounds} rounds "
             f"(+1 warm-up), verification on; native_plugin num_workers {args.workers}; kvstore "
             f"device {res.get('device')}, DRAM tier "
             f"off (--dram 0: loads from the data dir); machine: {res['machine']}", "",
             "| row | store GB/s | load GB/s | store p50 ms | load p50 ms | verified |",
             "|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | - | - | - | - | {r['error'][:120]} |")
        else:
            lines.append(f"| {name} | {r['store_gbps']} | {r['load_gbps']} | "
                         f"{r['store_ms_p50']} | {r['load_ms_p50']} | {r['verified']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.json and .md")
    bad = [n for n, r in res["rows"].items()
           if "error" not in r and not (r["verified"] and r["load_success"].split("/")[0]
                                        == r["load_success"].split("/")[1])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
