"""NIXL transport vs the TCP bulk port and the shm transport, in one run (a script, not a test).

The server runs in its own process (so NIXL moves data between two processes, as in a real
deployment, and client and server do not share a GIL), with the DRAM tier holding the blocks:
(d) bulk PUT and (b) bulk GET over TCP, (f) shm GET, (g) NIXL GET (one-sided WRITE into the client's registered
region) and (g_put) NIXL PUT (one-sided READ from it, stored to flash). CPU-only here: UCX over
shared memory and TCP (``--ucx-tls``, default ``sm,tcp,self``; ``tcp,self`` is what two hosts
without RDMA would get). Needs the ``nixl`` extra (``make test-nixl`` installs it).

    .venv/bin/python loadtest/bench_nixl.py [--blocks 64] [--seconds 3] [--ucx-tls sm,tcp,self]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_bulk import BS, NS, Child, _kv_server, bench_kv_get, bench_shm, fill, timed  # noqa: E402
from bench_engine import git_commit, machine  # noqa: E402

from kvstore import limits  # noqa: E402


def bench_nixl(port: int, keys: list[str], seconds: float) -> tuple[float, float]:
    """(GET GB/s, PUT GB/s) through one registered region of len(keys) blocks."""
    import numpy as np
    from kvstore_client.nixl import NixlClient

    region = np.zeros(len(keys) * BS, dtype=np.uint8)
    offs = [i * BS for i in range(len(keys))]
    with NixlClient(port=port, namespace=NS, timeout=120) as c:
        c.register(region)

        def get_pass() -> None:
            assert all(g == BS for g in c.get_into_region(keys, offs, [BS] * len(keys))), \
                "NIXL GET missed blocks"

        get = timed(get_pass, len(keys) * BS, seconds)
        put_keys = [f"p{k}" for k in keys]
        c.put_from_region(["warm-up"], [0], [BS])
        t0 = time.perf_counter()
        c.put_from_region(put_keys, offs, [BS] * len(keys))
        put = len(keys) * BS / (time.perf_counter() - t0) / 1e9
    return get, put


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=64, help="2 MiB blocks per pass")
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--ucx-tls", default="sm,tcp,self", help="UCX transports for both agents")
    ap.add_argument("--device", default="auto", help="kvstore device: auto|uring|posix")
    ap.add_argument("--out", default=str(ROOT / "loadtest" / "results"))
    args = ap.parse_args()
    from kvstore_client.nixl import nixl_available

    if not nixl_available():
        print("nixl is not installed: run `make test-nixl` (installs the extra) first")
        return 2
    os.environ["UCX_TLS"] = args.ucx_tls  # inherited by the server process
    n, secs = max(8, min(args.blocks, 512)), max(0.5, min(args.seconds, 60.0))
    base = ROOT / "data" / "bench"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-nixl-", dir=str(base)))
    keys = [f"{i:032x}" for i in range(n)]
    value = os.urandom(4096) * (BS // 4096)
    res: dict[str, Any] = {}
    try:
        cap = max(4 * limits.GiB, 4 * n * BS)
        srv = Child(_kv_server, str(work / "dram"), 4 * n * BS, cap, args.device)
        port = srv.info[0]
        res["device"] = srv.info[1]
        res["d_bulk_put_tcp"] = fill(port, keys, value)
        print(f"(d) bulk PUT over TCP: {res['d_bulk_put_tcp']:.2f} GB/s", flush=True)
        res["b_bulk_get_dram"] = bench_kv_get(port, keys, [bytearray(BS) for _ in keys], secs)
        print(f"(b) bulk GET over TCP, DRAM tier: {res['b_bulk_get_dram']:.2f} GB/s", flush=True)
        res["f_shm_get_dram"] = bench_shm(port, keys, secs)
        print(f"(f) shm GET, DRAM tier: {res['f_shm_get_dram']:.2f} GB/s", flush=True)
        res["g_nixl_get_dram"], res["g_nixl_put"] = bench_nixl(port, keys, secs)
        print(f"(g) NIXL GET, DRAM tier / PUT: {res['g_nixl_get_dram']:.2f} / "
              f"{res['g_nixl_put']:.2f} GB/s (UCX_TLS={args.ucx_tls})", flush=True)
        srv.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = {
        "g_over_b": round(res["g_nixl_get_dram"] / res["b_bulk_get_dram"], 3),
        "g_over_f": round(res["g_nixl_get_dram"] / res["f_shm_get_dram"], 3),
        "g_put_over_d": round(res["g_nixl_put"] / res["d_bulk_put_tcp"], 3),
    }
    for k, v in ratios.items():
        print(f"{k}: {v}")
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
              "machine": machine(base),
              "settings": {"block_bytes": BS, "blocks": n, "seconds": secs,
                           "ucx_tls": args.ucx_tls, "device": res.get("device"),
                           "staging_chunk_bytes": limits.nixl_staging_chunk_bytes,
                           "staging_chunks": limits.nixl_staging_chunks},
              "gbps": {k: round(v, 3) for k, v in res.items() if isinstance(v, float)},
              "ratios": ratios}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"nixl-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# NIXL transport ({report['when']}, commit {report['commit']})", "",
             f"{n} blocks of 2 MiB, {secs}s per measurement, UCX_TLS={args.ucx_tls}, server in "
             f"its own process, device {res.get('device')}. GB/s = 10^9 bytes/s.", "",
             "| case | GB/s |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report["gbps"].items()]
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in ratios.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
