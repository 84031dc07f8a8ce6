"""Writer process for tests/engine/test_crash.py: writes deterministic blocks to a store on real
files and acknowledges each one on stdout after the engine call returned.

    python crash_writer.py DATA_DIR ROUND MAX_BLOCKS THREADS [CAPACITY_BYTES]

Several threads write at once (one of them in batches), so puts are in flight concurrently and
their acknowledgements must still never get ahead of the log.

stdout lines: ``ready <device>`` once the store is open, then ``P <key>`` after each put and
``D <key>`` after each delete returned; ``d <key>`` announces a delete before it starts (a kill
between ``d`` and ``D`` leaves that block present or absent); ``S <n>`` each time the count of
recycled segment files grows (with a small CAPACITY_BYTES the store runs full). The test
SIGKILLs this process at a random moment.
"""

from __future__ import annotations

import hashlib
import sys
import threading

NS = "crash"
SEGMENT_BYTES = 1024 * 1024
CAPACITY_BYTES = 1024 * 1024 * 1024  # large: nothing the test checks may be evicted
DELETE_EVERY = 9  # after every 9 puts a thread deletes one of its own earlier blocks


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

    data_dir, round_no, max_blocks, threads = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    capacity = int(argv[5]) if len(argv) > 5 else CAPACITY_BYTES
    dev = open_device("auto", probe_dir=data_dir)
    eng = Engine.open(EngineConfig(data_dir, capacity_bytes=capacity,
                                   segment_bytes=SEGMENT_BYTES, dram_bytes=0), dev)
    if NS not in {n.name for n in eng.list_namespaces()}:
        eng.create_namespace(NS)
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    failed: list[BaseException] = []
    recycled = [0]

    def work(t: int) -> None:
        try:
            write(t)
        except BaseException as exc:  # a writer thread that fails makes the process fail
            failed.append(exc)
            raise

    def write(t: int) -> None:
        """Thread t writes keys t, t + threads, ...; thread 0 in batches through put_many."""
        mine: list[str] = []
        deletes = 0
        i = t
        while i < max_blocks:
            step = 4 if t == 0 else 1
            batch = [key_of(round_no, j) for j in range(i, max_blocks, threads)][:step]
            if t == 0:
                eng.put_many(NS, [(k, content(k)) for k in batch])
            else:
                eng.put(NS, batch[0], content(batch[0]))
            for k in batch:
                say(f"P {k}")
            if t == 0 and eng.stats()["recycled_segments"] > recycled[0]:
                recycled[0] = int(eng.stats()["recycled_segments"])
                say(f"S {recycled[0]}")
            mine += batch
            i += threads * len(batch)
            while deletes < len(mine) // DELETE_EVERY:
                victim = mine[deletes * DELETE_EVERY + 4]
                deletes += 1
                say(f"d {victim}")
                if eng.delete(NS, victim):
                    say(f"D {victim}")

    say(f"ready {dev.name}")
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failed:
        return 1
    eng.close()
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
