"""Writer process for tests/engine/test_crash.py: writes deterministic blocks to a store on real
files and acknowledges each one on stdout after the engine call returned.

    python crash_writer.py DATA_DIR ROUND MAX_BLOCKS

stdout lines: ``ready <device>`` once the store is open, then ``P <key>`` after each put and
``D <key>`` after each delete returned; ``d <key>`` announces a delete before it starts (a kill
between ``d`` and ``D`` leaves that block present or absent). The test SIGKILLs this process at
a random moment.
"""

from __future__ import annotations

import hashlib
import sys

NS = "crash"
SEGMENT_BYTES = 1024 * 1024
CAPACITY_BYTES = 1024 * 1024 * 1024  # large: nothing the test checks may be evicted
DELETE_EVERY = 9  # every 9th put also deletes the block written 4 puts earlier


def key_of(round_no: int, i: int) -> str:
    return f"r{round_no:03d}-{i:05d}"


def content(key: str) -> bytes:
    """The only bytes ever stored under ``key``: a checker can verify any block from its key."""
    h = hashlib.blake2b(key.encode(), digest_size=16).digest()
    n = int.from_bytes(h[:4], "little")
    size = 200_000 + n % 60_000 if n % 25 == 0 else n % 16_384  # a few large blocks roll segments
    unit = hashlib.blake2b(h, digest_size=64).digest()
    return (unit * (size // 64 + 1))[:size]


def main(argv: list[str]) -> int:
    from kvstore.engine.store import Engine
    from kvstore.engine.types import EngineConfig
    from kvstore.io_uring.select import open_device

    data_dir, round_no, max_blocks = argv[1], int(argv[2]), int(argv[3])
    dev = open_device("auto", probe_dir=data_dir)
    eng = Engine.open(EngineConfig(data_dir, capacity_bytes=CAPACITY_BYTES,
                                   segment_bytes=SEGMENT_BYTES, dram_bytes=0), dev)
    if NS not in {n.name for n in eng.list_namespaces()}:
        eng.create_namespace(NS)
    out = sys.stdout
    out.write(f"ready {dev.name}\n")
    out.flush()
    for i in range(max_blocks):
        key = key_of(round_no, i)
        eng.put(NS, key, content(key))
        out.write(f"P {key}\n")
        out.flush()
        if i % DELETE_EVERY == DELETE_EVERY - 1:
            victim = key_of(round_no, i - 4)
            out.write(f"d {victim}\n")
            out.flush()
            if eng.delete(NS, victim):
                out.write(f"D {victim}\n")
                out.flush()
    eng.close()
    out.write("done\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
