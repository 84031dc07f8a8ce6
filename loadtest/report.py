"""Reports of replay runs: a markdown table and PNG plots (matplotlib, no display needed).

    python loadtest/report.py RESULT.json [...] --out loadtest/results/NAME

Plots: hit rate over the trace (cumulative, per target, with the offline ceiling), latency
CDFs of whole requests, throughput against block size (when the runs swept it), and the
modelled TTFT with and without the tier for each layout (p50 and p99, at each target's measured
bandwidth and latency).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402

LAYOUT_ORDER = ["llama-3.1-8b", "llama-3.1-70b", "deepseek-v3-mla"]


def _f(x: Any, nd: int = 3) -> str:
    if isinstance(x, float):
        return "inf" if x == float("inf") else f"{x:.{nd}f}"
    return str(x)


def table(runs: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| target | block | requests | hit ratio | offline | LRU offline | lost hits | "
             "wrong bytes | GET GB/s | PUT GB/s | lookup p50/p99 ms | request p50/p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(
            f"| {r['target']} | {r['block_bytes'] // 1024} KiB | {r['requests']} | "
            f"{_f(r['hit_ratio'])} | {_f(r['offline_hit_ratio'])} | "
            f"{_f(r.get('offline_lru_hit_ratio', '-'))} | {r['lost_hits']} | "
            f"{r['wrong_bytes']} | {_f(r['get_gb_s'])} | {_f(r['put_gb_s'])} | "
            f"{_f(r['lookup_ms']['p50'], 2)} / {_f(r['lookup_ms']['p99'], 2)} | "
            f"{_f(r['request_ms']['p50'], 2)} / {_f(r['request_ms']['p99'], 2)} |")
    return lines


def model_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| target | layout | reused tokens | TTFT p50 without → with (s) | "
             "TTFT p99 without → with (s) | sustained tok/s gain | store-bound | "
             "tokens/J without → with | break-even GB/s (ctx 0 / 32k) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for name in LAYOUT_ORDER:
            m = r["model"].get(name)
            if not m:
                continue
            lines.append(
                f"| {r['target']} | {name} | {_f(m['reused_token_share'], 2)} | "
                f"{_f(m['ttft_p50_without_s'])} → {_f(m['ttft_p50_with_serial_s'])} | "
                f"{_f(m['ttft_p99_without_s'])} → {_f(m['ttft_p99_with_serial_s'])} | "
                f"{_f(m['sustained_tokens_per_s_gain'], 2)} | {m['store_bound']} | "
                f"{_f(m['tokens_per_joule_without'], 2)} → {_f(m['tokens_per_joule_with'], 2)} | "
                f"{_f(m['break_even_bandwidth_gb_s_at_0'], 2)} / "
                f"{_f(m['break_even_bandwidth_gb_s_at_32k'], 2)} |")
    return lines


SWEEP_GB_S = (1.0, 4.0, 16.0, 64.0)


def bandwidth_sweep(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The model at the hits this run measured, at store bandwidths a real pod could have (a
    GPU node's NIC and the tier behind it), beside the bandwidth measured here: where reuse
    starts to pay and how much."""
    import model

    s = run["series"]
    hits = [model.RequestHits(i, o, h) for i, o, h in
            zip(s["input_tokens"], s["output_tokens"], s["hit_blocks"], strict=True)]
    measured = run["model"]["assumptions"]["store_bandwidth_gb_s"]
    latency = run["model"]["assumptions"]["store_latency_s"]
    rows = []
    for gb_s in (measured, *SWEEP_GB_S):
        store = model.Store(bandwidth_bytes_per_s=gb_s * 1e9, latency_s=latency)
        for name in LAYOUT_ORDER:
            m = model.summary(model.LAYOUTS[name], model.Gpu(), store, hits)
            rows.append({"gb_s": gb_s, "layout": name, "measured": gb_s == measured,
                         "ttft_p50_without_s": m["ttft_p50_without_s"],
                         "ttft_p50_with_s": m["ttft_p50_with_serial_s"],
                         "ttft_mean_speedup": m["ttft_mean_speedup_serial"],
                         "gain": m["sustained_tokens_per_s_gain"],
                         "reused": m["reused_token_share"],
                         "tpj_without": m["tokens_per_joule_without"],
                         "tpj_with": m["tokens_per_joule_with"]})
    return rows


def sweep_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| store GB/s | layout | reused tokens | TTFT p50 without → with (s) | "
             "mean TTFT speedup | sustained tok/s gain | tokens/J without → with |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        tag_ = " (measured)" if r["measured"] else ""
        lines.append(f"| {_f(r['gb_s'], 2)}{tag_} | {r['layout']} | {_f(r['reused'], 2)} | "
                     f"{_f(r['ttft_p50_without_s'])} → {_f(r['ttft_p50_with_s'])} | "
                     f"{_f(r['ttft_mean_speedup'], 2)} | {_f(r['gain'], 2)} | "
                     f"{_f(r['tpj_without'], 2)} → {_f(r['tpj_with'], 2)} |")
    return lines


def plot_hit_rate(runs: Sequence[dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        s = r["series"]
        hit = asked = 0
        ys = []
        for h, n in zip(s["hit_blocks"], s["chain_blocks"], strict=True):
            hit, asked = hit + h, asked + n
            ys.append(hit / asked if asked else 0.0)
        ax.plot(range(1, len(ys) + 1), ys, label=f"{r['target']} ({r['block_bytes'] // 1024} KiB)")
    if runs:
        ax.axhline(runs[0]["offline_hit_ratio"], color="grey", ls="--", label="offline ceiling")
    ax.set(xlabel="request", ylabel="cumulative block hit ratio", ylim=(0, 1),
           title="Hit rate over the trace")
    ax.legend(fontsize=8)
    path = out.with_name(out.name + "-hit-rate.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_latency_cdf(runs: Sequence[dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        xs = sorted(r["series"]["request_ms"])
        if xs:
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=r["target"])
    ax.set(xscale="log", xlabel="request latency (lookup + GET + PUT), ms", ylabel="CDF",
           title="Request latency")
    ax.legend(fontsize=8)
    path = out.with_name(out.name + "-latency-cdf.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_block_size(sweep: Sequence[dict[str, Any]], out: Path) -> Path | None:
    if not sweep:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    by_target: dict[str, list[tuple[int, float]]] = {}
    for r in sweep:
        by_target.setdefault(r["target"], []).append((r["block_bytes"], r["get_gb_s"]))
    for name, pts in sorted(by_target.items()):
        pts.sort()
        ax.plot([p[0] / 1024 for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set(xscale="log", xlabel="block KiB", ylabel="GET GB/s (hit prefixes)",
           title="Throughput against block size")
    ax.legend(fontsize=8)
    path = out.with_name(out.name + "-block-size.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ttft(runs: Sequence[dict[str, Any]], out: Path) -> Path:
    fig, axes = plt.subplots(1, len(LAYOUT_ORDER), figsize=(12, 4), sharey=False)
    for ax, name in zip(axes, LAYOUT_ORDER, strict=True):
        labels, without, with_ = [], [], []
        for r in runs:
            m = r["model"].get(name)
            if m:
                labels.append(r["target"])
                without.append(m["ttft_p50_without_s"])
                with_.append(m["ttft_p50_with_serial_s"])
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], without, 0.4, label="without tier")
        ax.bar([x + 0.2 for x in xs], with_, 0.4, label="with tier")
        ax.set_xticks(list(xs), labels, rotation=30, fontsize=8)
        ax.set(title=name, ylabel="modelled TTFT p50, s")
    axes[0].legend(fontsize=8)
    path = out.with_name(out.name + "-ttft.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(runs: Sequence[dict[str, Any]], out: Path, *, sweep: Sequence[dict[str, Any]] = (),
          header: Sequence[str] = ()) -> list[Path]:
    """``out`` is a path prefix: writes OUT.md, OUT.json and OUT-*.png; returns the paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    pngs = [plot_hit_rate(runs, out), plot_latency_cdf(runs, out), plot_ttft(runs, out)]
    bs = plot_block_size(sweep, out)
    if bs:
        pngs.append(bs)
    md = [*header, "", "## Replay", "", *table(runs), ""]
    if sweep:
        md += ["## Block-size sweep", "", *table(sweep), ""]
    md += ["## Modelled TTFT and throughput (model.py; at each target's measured GET bandwidth "
           "and latency)", "", *model_table(runs), ""]
    bw_rows: list[dict[str, Any]] = []
    if runs and "input_tokens" in runs[0].get("series", {}):
        bw_rows = bandwidth_sweep(runs[0])
        md += [f"## The same trace's hits ({runs[0]['target']}) at other store bandwidths",
               "", "What one GPU node's share of the tier would need to deliver: the model at "
               "the measured latency and the listed bandwidths.", "",
               *sweep_table(bw_rows), ""]
    md += [*[f"![{p.stem}]({p.name})" for p in pngs], ""]
    md_path = Path(str(out) + ".md")
    md_path.write_text("\n".join(md))
    slim = [{k: v for k, v in r.items() if k != "series"} for r in runs]
    json_path = Path(str(out) + ".json")
    json_path.write_text(json.dumps({"runs": slim, "bandwidth_sweep": bw_rows, "sweep": [
        {k: v for k, v in r.items() if k != "series"} for r in sweep]}, indent=1))
    return [md_path, json_path, *pngs]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="replay --json outputs")
    ap.add_argument("--out", required=True, type=Path, help="path prefix of the report")
    a = ap.parse_args(argv)
    runs = [json.loads(p.read_text()) for p in a.results]
    for p in write(runs, a.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
