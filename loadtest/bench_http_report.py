"""bench_http's summary and report: medians over rounds, ratios to the bare app (and to the
baseline tree), and the Markdown and JSON files in loadtest/results/."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OBJ_BYTES = 2 * 1024 * 1024  # bench_http.OBJ_BYTES
CHAIN = 1000  # bench_http.CHAIN


def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, object]:
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "wrk": sh("dpkg-query", "-W", "-f=${Version}", "wrk") or "unknown",
            "httperf": sh("dpkg-query", "-W", "-f=${Version}", "httperf") or "unknown"}


def git_commit() -> str:
    head = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", str(ROOT), "status", "--porcelain", "--", "kvstore")
    return head + ("-dirty" if dirty else "")


CASES = {  # op -> (row label, unit, target ratio)
    "get": ("GET 2 MiB (DRAM tier)", "GB/s", 0.9),
    "put": ("PUT 2 MiB (new key each)", "GB/s", 0.7),
    "head": ("HEAD (keep-alive)", "req/s", 0.8),
}


def _pair_median(results: dict[str, list[dict[str, float]]], a: str, b: str,
                 field: str = "ok_rps", invert: bool = False) -> float:
    """Median over rounds of a/b (b/a with ``invert``) of ``field``, pairing the same round."""
    vals = []
    for x, y in zip(results[a], results[b], strict=True):
        num, den = (y[field], x[field]) if invert else (x[field], y[field])
        vals.append(num / den if den else float("nan"))
    return statistics.median(vals)


def summarize(results: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    def med(case: str, field: str = "ok_rps") -> float:
        return statistics.median(r[field] for r in results[case])

    out: dict[str, float] = {}
    for op, (_label, unit, _t) in CASES.items():
        if f"{op}/kvstore" not in results:
            continue
        scale = OBJ_BYTES / 1e9 if unit == "GB/s" else 1.0
        for who in ("kvstore", "baseline", "bare"):
            if f"{op}/{who}" in results:
                out[f"{op}_{who}"] = med(f"{op}/{who}") * scale
                out[f"{op}_{who}_cpu_us"] = med(f"{op}/{who}", "cpu_us")
        out[f"{op}_ratio"] = _pair_median(results, f"{op}/kvstore", f"{op}/bare")
        out[f"{op}_cpu_ratio"] = _pair_median(results, f"{op}/kvstore", f"{op}/bare", "cpu_us",
                                              invert=True)
        if f"{op}/baseline" in results:
            out[f"{op}_baseline_ratio"] = _pair_median(results, f"{op}/baseline", f"{op}/bare")
            out[f"{op}_new_over_old"] = _pair_median(results, f"{op}/kvstore",
                                                     f"{op}/baseline")
            out[f"{op}_old_over_new_cpu"] = _pair_median(results, f"{op}/kvstore",
                                                         f"{op}/baseline", "cpu_us",
                                                         invert=True)
    for c in ("c8", "c1"):
        if f"lookup/{c}" in results:
            out[f"lookup_{c}_rps"] = med(f"lookup/{c}")
            out[f"lookup_{c}_p99_ms"] = med(f"lookup/{c}", "p99_ms")
    return out


def report(args: argparse.Namespace, results: dict[str, list[dict[str, float]]], device: str,
           facts: dict[str, object]) -> int:
    failed = sum(r["failed"] + r["socket_errors"] for rs in results.values() for r in rs)
    summary = summarize(results)
    summary["failed_requests"] = failed
    doc = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
           "machine": machine(), "device": device,
           "settings": {"object_bytes": OBJ_BYTES, "seconds": args.seconds, "rounds": args.rounds,
                        "wrk_threads": args.threads, "conns": args.conns,
                        "head_conns": args.head_conns,
                        "chain_keys": CHAIN, "dram": args.dram, "capacity": args.capacity,
                        "head_tool": facts["head_tool"], "baseline": args.baseline or "",
                        "server": "uvicorn, loop=uvloop, http=httptools, 1 process each"},
           "summary": summary, "facts": facts, "runs": results}
    m = doc["machine"]
    base = bool(args.baseline)
    lines = [
        f"# kvstore HTTP vs bare ASGI ({doc['when']}, commit {doc['commit']})", "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, kernel {m['kernel']}, "
        f"Python {m['python']}, wrk {m['wrk']}; kvstore device {device}.",
        f"Settings: 2 MiB objects, wrk -t{args.threads} -c{args.conns} (HEAD: "
        f"{facts['head_tool']}, {args.head_conns} keep-alive connections), {args.seconds:g} s per "
        f"run, {args.rounds} round(s), kvstore --dram {args.dram}; every server uvicorn + uvloop "
        "+ httptools, one process, on 127.0.0.1; the bare app answers the same headers."
        + (f" Baseline: a second kvstore served from {args.baseline}, in the same rounds."
           if base else ""), "",
        "| case | kvstore" + (" | baseline" if base else "") + " | bare ASGI | ratio (target) "
        "| server CPU per request: kvstore" + (" / baseline" if base else "") +
        " / bare (bare/kvstore) |",
        "|---|---:" + ("|---:" if base else "") + "|---:|---:|---:|",
    ]
    for op, (label, unit, target) in CASES.items():
        if f"{op}_kvstore" not in summary:
            continue
        fmt = "{:.2f}" if unit == "GB/s" else "{:.0f}"
        cells = [f"{fmt.format(summary[f'{op}_kvstore'])} {unit}"]
        cpus = [f"{summary[f'{op}_kvstore_cpu_us']:.1f}"]
        if base:
            cells.append(f"{fmt.format(summary[f'{op}_baseline'])} {unit} "
                         f"({summary[f'{op}_baseline_ratio']:.2f} of bare)")
            cpus.append(f"{summary[f'{op}_baseline_cpu_us']:.1f}")
        cells.append(f"{fmt.format(summary[f'{op}_bare'])} {unit}")
        cpus.append(f"{summary[f'{op}_bare_cpu_us']:.1f} us")
        lines.append(f"| {label} | " + " | ".join(cells) +
                     f" | {summary[f'{op}_ratio']:.2f} (>= {target}) | " + " / ".join(cpus) +
                     f" ({summary[f'{op}_cpu_ratio']:.2f}) |")
    for c, n in (("c8", args.conns), ("c1", 1)):
        if f"lookup_{c}_rps" in summary:
            lines.append(f"| lookup 1,000-key chain, -c{n} | {summary[f'lookup_{c}_rps']:.0f} "
                         f"req/s, p99 {summary[f'lookup_{c}_p99_ms']:.2f} ms |"
                         + (" |" if base else "") + " | | |")
    if base:
        lines += ["", "New over baseline, median of per-round ratios: " + ", ".join(
            f"{op.upper()} throughput {summary[f'{op}_new_over_old']:.2f}, CPU per request "
            f"{1 / summary[f'{op}_old_over_new_cpu']:.2f}x"
            for op in CASES if f"{op}_new_over_old" in summary) + "."]
    lines += [
        "",
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
    print(f"results: {out / f'http-{stamp}.md'} and .json")
    return 0 if failed == 0 else 1
