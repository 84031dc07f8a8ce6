"""`make loadtest`: one generated agentic trace against every target, side by side.

    python loadtest/compare.py [--sessions 40] [--turns 6] [--block-bytes 64KiB]
                               [--targets kvstore,kvstore-s3,...] [--quick]

Same trace, same client concurrency, same bytes (verified on every read) for each target, each
started on loopback and stopped after: kvstore (bulk SDK, S3, its Redis protocol, a 3-node pod),
Redis, Mooncake Store, SeaweedFS's S3 (targets.py, targets_more.py) and LMCache's
``lmcache_server`` (target_lmcache.py). Mooncake and SeaweedFS need the ``loadtest`` extra;
LMCache needs its venv (``make lmcache-venv``: torch and LMCache, about 2 GB, which ``make
loadtest`` does not build); each is left out, with a note in the report, when absent. Then a
run at a tenth of the working set for the targets that evict (kvstore, redis, mooncake;
Mooncake at no less than its 16 MiB least segment), beside an offline LRU of the same capacity,
and a block-size sweep of the bulk SDK and Redis. SeaweedFS and lmcache_server do not evict (no
capacity bound): they run at unlimited capacity only. Writes
loadtest/results/loadtest-<time>.{md,json} and the PNG plots, with the machine, settings and
commit. About five minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import replay  # noqa: E402
import report  # noqa: E402
import targets  # noqa: E402
import traces  # noqa: E402
import workloads  # noqa: E402
from bench_engine import git_commit, machine  # noqa: E402

DEFAULT_TARGETS = ("kvstore,kvstore-s3,kvstore-resp,kvstore-pod,redis,mooncake,seaweedfs-s3,"
                   "lmcache")
EVICTING_TARGETS = ("kvstore", "redis", "mooncake")
# default targets that need more than the main venv: left out (with this note) when absent
OPTIONAL_TARGETS = {
    "mooncake": ("mooncake", "not run (pip install -e '.[loadtest]')"),
    "seaweedfs-s3": ("weed", "not run (pip install -e '.[loadtest]')"),
    "lmcache": ("lmcache_server", "not run: no LMCache venv (`make lmcache-venv` builds "
                "it: torch and LMCache, about 2 GB; `make loadtest` does not)"),
}
SWEEP_TARGETS = ("kvstore", "redis")
SWEEP_BLOCKS = (16 * 1024, 256 * 1024, 1024 * 1024)
SWEEP_REQUESTS = 80


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def screenshot(url: str, path: Path) -> bool:
    """A PNG of kvstore's /ui after the replay (Debian's chromium; skipped when absent)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return False
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               "--virtual-time-budget=5000", "--window-size=1280,900",
                               f"--screenshot={path}", f"{url}/ui"],
                              capture_output=True, timeout=60, check=False)
    return done.returncode == 0 and path.exists()


def installed(what: str) -> bool:
    """A Python package (``mooncake``), an executable beside this interpreter (``weed``), or
    LMCache's server (``lmcache_server``: its venv, see target_lmcache.py)."""
    import importlib.util

    if what == "lmcache_server":
        import target_lmcache

        return target_lmcache.server_exe() is not None
    if what == "weed":
        return bool(shutil.which("weed")) or (Path(sys.executable).parent / "weed").exists()
    return importlib.util.find_spec(what) is not None


def choose_targets(spec: str) -> tuple[list[str], list[str]]:
    """The targets to run and the report's notes on them. The default list leaves out, with a
    note (and a line on stderr), each optional target that is not installed."""
    names = [n for n in spec.split(",") if n]
    notes: list[str] = []
    if spec == DEFAULT_TARGETS:
        for n, (needs, why) in OPTIONAL_TARGETS.items():
            if not installed(needs):
                names.remove(n)
                notes.append(f"- {n}: {why}")
                print(f"loadtest: {n} {why}", file=sys.stderr)
    if "lmcache" in names:
        notes.append("- lmcache: LMCache's lmcache_server keeps every block in a Python dict, with "
                     "no capacity bound and no evictor; it runs at unlimited capacity only")
    return names, notes


def run(target: str, reqs: list[traces.Request], block: int, concurrency: int,
        capacity_bytes: int | None, ui_png: Path | None = None) -> dict[str, Any]:
    working = traces.offline_hits(reqs).unique_blocks * block
    capacity = str(capacity_bytes) if capacity_bytes else str(max(64 * 2**20, 2 * working))
    t = targets.start(target, capacity, concurrency)
    try:
        tally, wall = replay.replay(t, reqs, block, concurrency, None)
        server = getattr(t, "server", None)
        if ui_png is not None and isinstance(server, targets.KvstoreServer):
            screenshot(f"http://{server.host}:{server.port}", ui_png)
    finally:
        t.close()
    out = replay.summarize(tally, wall, reqs, block, capacity_bytes, target)
    out["settings"] = {"concurrency": concurrency, "capacity": capacity}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--block-bytes", default="64KiB")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--targets", default=DEFAULT_TARGETS)
    ap.add_argument("--quick", action="store_true", help="a small trace and no sweep (tests)")
    ap.add_argument("--out", type=Path, default=None, help="report path prefix")
    a = ap.parse_args(argv)
    if a.quick:
        a.sessions, a.turns = min(a.sessions, 8), min(a.turns, 3)
    spec = workloads.AgenticSpec(sessions=a.sessions, turns=a.turns)
    reqs = workloads.agentic(spec)
    block = targets.parse_size(a.block_bytes)
    names, notes = choose_targets(a.targets)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = a.out or HERE / "results" / f"loadtest-{stamp}"
    out.parent.mkdir(parents=True, exist_ok=True)
    ui_png = out.with_name(out.name + "-ui.png")
    t0 = time.time()
    load_before = os.getloadavg()
    runs = [run(n, reqs, block, a.concurrency, None, ui_png if n == "kvstore" else None)
            for n in names]
    working = traces.offline_hits(reqs).unique_blocks * block
    tenth = max(2 * 2**20, working // 10)
    for n in names:
        if n not in EVICTING_TARGETS:
            continue
        least = getattr(targets.TARGETS[n], "capacity_bytes_min", 0)
        cap = max(tenth, least)
        label = (f"{n} (1/10 capacity)" if cap == tenth else
                 f"{n} ({cap / working:.2f} of the working set: its least)")
        if cap != tenth:
            notes.append(f"- {n} at reduced capacity: {cap // 2**20} MiB, its least, not a tenth "
                         f"({tenth / 2**20:.1f} MiB); its LRU offline column is at that capacity, "
                         "and kvstore runs at it too")
        runs.append(run(n, reqs, block, a.concurrency, cap) | {"target": label})
        if cap != tenth and "kvstore" in names:
            runs.append(run("kvstore", reqs, block, a.concurrency, cap)
                        | {"target": f"kvstore ({cap / working:.2f} of the working set, as {n})"})
    sweep: list[dict[str, Any]] = []
    if not a.quick:
        for n in names:
            if n in SWEEP_TARGETS:
                sweep += [run(n, reqs[:SWEEP_REQUESTS], b, a.concurrency, None)
                          for b in SWEEP_BLOCKS]
    with tempfile.TemporaryDirectory() as tmp:
        m = machine(Path(tmp))
    header = [f"# Loadtest {stamp}", "",
              f"- commit {git_commit()}; machine: {m['nproc']} cores, {m['cpu']}, "
              f"{m['mem_gib']} GiB, kernel {m['kernel']}, Python {m['python']}",
              f"- trace: generated agentic (sessions {spec.sessions}, turns {spec.turns}, "
              f"seed {spec.seed}): {len(reqs)} requests, "
              f"{traces.offline_hits(reqs).unique_blocks} unique blocks of {block // 1024} KiB; "
              f"concurrency {a.concurrency}; {time.time() - t0:.0f} s in all",
              "- every target started on 127.0.0.1 by the script; bytes verified on every read; "
              "all of them share this machine's cores with the client",
              "- load average (1/5/15 min) before: {:.2f} / {:.2f} / {:.2f}; after: "
              "{:.2f} / {:.2f} / {:.2f} (other processes on the same cores make figures noisy)"
              .format(*load_before, *os.getloadavg()),
              "- the model (loadtest/model.py) scales to each layout's real 512-token block at "
              "the GET bandwidth and latency measured here; its GPU figures are public "
              "datasheet numbers, not measurements"]
    header += notes
    if ui_png.exists():
        header.append(f"- kvstore's /ui after its replay: ![ui]({ui_png.name})")
    for p in report.write(runs, out, sweep=sweep, header=header):
        print(p)
    print("\n".join(report.table(runs)))
    return 1 if any(r["wrong_bytes"] for r in runs + sweep) else 0


if __name__ == "__main__":
    sys.exit(main())
