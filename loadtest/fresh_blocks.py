"""Why a fresh store writes slower than fio on this disk: the file system's unwritten extents,
or the virtual disk's first write to blocks it was told to forget (TRIM)?

    .venv/bin/python loadtest/fresh_blocks.py                 # 1 GiB, depth 8, 3 rounds
    .venv/bin/python loadtest/fresh_blocks.py --depth 32 --rounds 5

Each round writes one file with fio (2 MiB blocks, io_uring, O_DIRECT) in four states, in this
order:

- ``fallocated``: a new file, ``fallocate``d. Its extents are unwritten and its blocks were
  freed earlier; on a file system mounted with ``discard`` they were trimmed when freed. This is
  how the engine's fresh segment files start.
- ``written``: the same file again: written extents on blocks the disk holds.
- ``zero_range``: ``fallocate --zero-range`` over the whole file first. ext4 turns the extents
  back into unwritten ones but keeps the blocks, and trims nothing.
- ``punched``: ``fallocate --punch-hole`` and then ``fallocate`` again. The blocks are freed,
  and trimmed if the mount has ``discard``, then allocated again as unwritten extents.

If ``zero_range`` writes as fast as ``written`` while ``fallocated`` and ``punched`` are slower,
ext4's unwritten-extent conversion costs nothing here. The cost is the disk's first write to
trimmed blocks, and no layout of the engine's files can avoid it: only recycled segment files
(a full store) skip it. A script, not a test; results go to ``loadtest/results/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_engine import fio, git_commit, machine, parse_size, sh  # noqa: E402

STATES = ("fallocated", "written", "zero_range", "punched")


def fallocate(*args: str) -> None:
    subprocess.run(["fallocate", *args], check=True, timeout=120)
    subprocess.run(["sync"], check=True, timeout=120)


def one_round(path: Path, size: int, depth: int, disk: str) -> dict[str, float]:
    out: dict[str, float] = {}
    path.unlink(missing_ok=True)
    fallocate("-l", str(size), str(path))
    out["fallocated"] = fio(path, "write", depth, size, disk).gbps
    out["written"] = fio(path, "write", depth, size, disk).gbps
    fallocate("--zero-range", "-o", "0", "-l", str(size), str(path))
    out["zero_range"] = fio(path, "write", depth, size, disk).gbps
    fallocate("--punch-hole", "-o", "0", "-l", str(size), str(path))
    fallocate("-l", str(size), str(path))
    out["punched"] = fio(path, "write", depth, size, disk).gbps
    path.unlink(missing_ok=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", default=str(ROOT / "data" / "bench-fresh"), help="scratch dir")
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    size = parse_size(a.size)
    if not 1 <= a.rounds <= 20 or not 1 <= a.depth <= 256:
        ap.error("--rounds is 1..20, --depth 1..256")
    scratch = Path(a.dir)
    scratch.mkdir(parents=True, exist_ok=True)
    mach = machine(scratch)
    disk = str(mach["disk"])
    mount = sh("findmnt", "-no", "OPTIONS", "-T", str(scratch))
    rounds = []
    for i in range(a.rounds):
        r = one_round(scratch / "fresh-blocks.dat", size, a.depth, disk)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
        rounds.append(r)
    med = {k: statistics.median(r[k] for r in rounds) for k in STATES}
    lo = {k: min(r[k] for r in rounds) for k in STATES}
    hi = {k: max(r[k] for r in rounds) for k in STATES}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    discard = sh("cat", f"/sys/block/{disk}/queue/discard_max_bytes")
    lines = [f"# Fresh blocks: unwritten extents or trimmed blocks ({time.strftime('%F %T')}, "
             f"commit {git_commit()})", "",
             f"Machine: {', '.join(f'{k}={v}' for k, v in mach.items())}", "",
             f"Mount options: {mount}; discard_max_bytes={discard}", "",
             f"Settings: fio write, 2 MiB blocks, io_uring, O_DIRECT, size {a.size}, "
             f"depth {a.depth}, {a.rounds} rounds; medians (min-max), GB/s.", "",
             "| state | GB/s | / written |", "|---|---:|---:|"]
    for k in STATES:
        lines.append(f"| {k} | {med[k]:.2f} ({lo[k]:.2f}-{hi[k]:.2f}) | "
                     f"{med[k] / med['written']:.2f} |")
    lines += ["", "Script: `loadtest/fresh_blocks.py` (its docstring says what each state is)."]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"fresh-blocks-{stamp}.md"
    md.write_text("\n".join(lines) + "\n")
    (out / f"fresh-blocks-{stamp}.json").write_text(json.dumps(
        {"machine": mach, "mount": mount, "settings": vars(a), "rounds": rounds,
         "median": med, "commit": git_commit()}, indent=1) + "\n")
    print("\n".join(lines))
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
