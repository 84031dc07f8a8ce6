"""Ranged reads and the write-path cost of per-chunk checksums.

    .venv/bin/python loadtest/bench_range.py                       # this tree
    git archive <old-commit> kvstore | tar -x -C /tmp/old           # another version...
    PYTHONPATH=/tmp/old .venv/bin/python loadtest/bench_range.py   # ...measured the same way

1. Flash bytes a 100-byte range of a 60 MiB block reads: the block is stored through the engine
   on real files (DRAM tier off), then read with ``Engine.read_range`` (or, on code without it,
   ``read`` and a slice) and with a boto3 ``Range: bytes=0-99`` GET from a live S3 server on
   127.0.0.1. Bytes are counted by a wrapper around the device (what its reads returned), so
   versions without the engine's ``flash_bytes_read`` counter are measured alike.
2. Put throughput of 2, 8 and 60 MiB blocks: ``Engine.put`` on a MemoryDevice (the CPU cost:
   checksums and copies) and on real files, median of --trials; and the checksum alone
   (``format.checksum`` of the whole payload vs ``format.checksums`` with chunks).

A kvstore on PYTHONPATH wins over this tree, so one script measures both versions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH

from kvstore import limits  # noqa: E402
from kvstore.engine import format as fmt  # noqa: E402
from kvstore.engine.device import Device, IoOp, MemoryDevice  # noqa: E402
from kvstore.engine.store import Engine  # noqa: E402
from kvstore.engine.types import EngineConfig  # noqa: E402
from kvstore.io_uring.posix import PosixDevice  # noqa: E402

M = limits.MiB
NS = "bench-range"
START_SECONDS_MAX = 10.0


class Counting(Device):
    """Delegates to a real device; counts the bytes its reads return."""

    def __init__(self, inner: Device) -> None:
        self.inner, self.name, self.direct, self.bytes_read = inner, inner.name, inner.direct, 0

    def submit(self, ops: Sequence[IoOp]) -> list[int]:
        res = self.inner.submit(ops)
        self.bytes_read += sum(r for op, r in zip(ops, res, strict=True) if not op.write and r > 0)
        return res

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def open(self, path: str, *, create: bool = True) -> int:
        return self.inner.open(path, create=create)

    def close_handle(self, handle: int) -> None:
        self.inner.close_handle(handle)

    def size(self, handle: int) -> int:
        return self.inner.size(handle)

    def truncate(self, handle: int, size: int) -> None:
        self.inner.truncate(handle, size)

    def sync(self, handle: int) -> None:
        self.inner.sync(handle)

    def allocate(self, handle: int, size: int) -> None:
        self.inner.allocate(handle, size)


def range_bytes(base: Path) -> dict[str, int]:
    """Flash bytes for a 100-byte range of a 60 MiB block: engine call and S3 GET."""
    import boto3
    import uvicorn
    from botocore.config import Config

    from kvstore.api.app import create_app
    from kvstore.auth import Tenants
    from kvstore.service import Node
    from kvstore.service.runner import EngineRunner

    dev = Counting(PosixDevice())
    eng = Engine.open(EngineConfig(data_dir=str(base / "range"), capacity_bytes=256 * M,
                                   segment_bytes=64 * M, dram_bytes=0), dev)
    runner = EngineRunner(threads=2)
    runner.start()
    state = Node(engine=eng, runner=runner, tenants=Tenants.development())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    out: dict[str, int] = {}
    try:
        deadline = time.monotonic() + START_SECONDS_MAX
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="AKIADEV",
                          aws_secret_access_key="dev", region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket=NS)
        data = os.urandom(60 * M)
        s3.put_object(Bucket=NS, Key="big", Body=data)
        before = dev.bytes_read
        got = s3.get_object(Bucket=NS, Key="big", Range="bytes=0-99")["Body"].read()
        assert got == data[:100]
        out["s3_get_range_100"] = dev.bytes_read - before
        before = dev.bytes_read
        if hasattr(eng, "read_range"):
            with eng.read_range(NS, "big", 30 * M, 100) as v:
                assert v is not None and bytes(v.payload) == data[30 * M : 30 * M + 100]
        else:
            with eng.read(NS, "big") as v:
                assert v is not None and bytes(v.payload[30 * M : 30 * M + 100]) == data[
                    30 * M : 30 * M + 100]
        out["engine_range_100"] = dev.bytes_read - before
        before = dev.bytes_read
        assert eng.get(NS, "big") == data
        out["engine_full_get"] = dev.bytes_read - before
    finally:
        server.should_exit = True
        thread.join(timeout=limits.shutdown_seconds_max + 5)
        runner.close()
        eng.close()
    return out


def put_rate(base: Path, device: str, size: int, total: int) -> float:
    """GB/s of ``Engine.put`` of ``total`` bytes in blocks of ``size``, on a fresh store."""
    d = base / f"put-{device}"
    shutil.rmtree(d, ignore_errors=True)
    dev: Device = MemoryDevice() if device == "memory" else PosixDevice()
    eng = Engine.open(EngineConfig(data_dir=str(d), capacity_bytes=4 * total,
                                   segment_bytes=max(128 * M, 2 * size), dram_bytes=0), dev)
    try:
        eng.create_namespace(NS)
        payload = os.urandom(size)
        n = max(1, total // size)
        t0 = time.perf_counter()
        for i in range(n):  # one payload under many keys: nothing but the put is timed
            eng.put(NS, f"k{i}", payload)
        return n * size / (time.perf_counter() - t0) / 1e9
    finally:
        eng.close()
        dev.close()
        shutil.rmtree(d, ignore_errors=True)


def hash_rate(size: int, trials: int) -> dict[str, float]:
    mv = memoryview(os.urandom(size))
    out = {}
    for name, fn in (("whole", lambda: fmt.checksum(mv)),
                     ("chunked", (lambda: fmt.checksums(mv, fmt.CHUNK_LOG2))
                      if hasattr(fmt, "checksums") else None)):
        if fn is None:
            continue
        times = []
        for _ in range(trials):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = size / statistics.median(times) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", default=None, help="scratch directory on the disk to measure")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--total-mib", type=int, default=480, help="bytes put per trial")
    ap.add_argument("--skip-range", action="store_true")
    ap.add_argument("--devices", default="memory,posix", help="put targets, comma separated")
    ap.add_argument("--sizes-mib", default="2,8,60", help="put block sizes, comma separated")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-range-", dir=args.dir))
    src = Path(sys.modules["kvstore"].__file__ or "").parent.parent
    here = src == Path(__file__).resolve().parent.parent
    result: dict[str, object] = {"kvstore": "this tree" if here else "PYTHONPATH",
                                 "chunk_tables": hasattr(fmt, "checksums")}
    try:
        if not args.skip_range:
            result["flash_bytes"] = range_bytes(base)
        puts: dict[str, float] = {}
        for device in args.devices.split(","):
            for size in (int(x) * M for x in args.sizes_mib.split(",")):
                rates = [put_rate(base, device, size, args.total_mib * M)
                         for _ in range(args.trials)]
                puts[f"{device}_{size // M}MiB_GBps"] = round(statistics.median(rates), 3)
        result["put"] = puts
        result["hash_60MiB_GBps"] = {k: round(v, 2)
                                     for k, v in hash_rate(60 * M, args.trials).items()}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
