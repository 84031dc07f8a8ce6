"""Mooncake Store for the ``mooncake`` replay target, run inside a private network namespace.

    unshare --net python loadtest/mooncake_worker.py --capacity BYTES [--threads N]

Mooncake's TCP transfer engine listens on the wildcard address (``0.0.0.0`` and ``[::]``) for
its data and handshake ports, whatever ``local_hostname`` or ``MC_TCP_BIND_ADDRESS`` say (the
latter only changes the address it advertises), and ``mooncake_master``'s embedded HTTP
metadata server binds ``0.0.0.0`` even with ``-http_metadata_server_host=127.0.0.1``. So this
process runs where the only interface is loopback: it brings ``lo`` up, refuses to go on if
any other interface exists, starts ``mooncake_master`` (RPC and metrics on 127.0.0.1, no HA,
no HTTP metadata server: the stores use ``P2PHANDSHAKE``), then a second process of this file
(``--hold``) whose ``MooncakeDistributedStore`` mounts a global segment of the store's capacity
(the memory a Mooncake store node contributes), then its own client store (protocol ``tcp``,
local hostname 127.0.0.1, no segment of its own, so every byte crosses loopback TCP from the
holder, as kvstore's and Redis' do), and serves the target's calls over its stdin/stdout (pipes
cross namespaces; sockets would not). The replay's bytes are verified on the other side, after
the pipe. Mooncake refuses a segment under 16 MiB (``SEGMENT_BYTES_MIN``).

Frames both ways: a 4-byte little-endian length, then msgpack. A request is
``[id, op, args]``; the answer ``[id, error or None, result]``. Ops: ``lookup(keys) -> n``
(``batch_is_exist``, the leading run of 1s), ``get(keys) -> [bytes | None]`` (``get_batch``; an
empty answer is a miss), ``put(keys, values) -> refused`` (``put_batch``; a non-zero return,
e.g. no space before the master's eviction has run, refuses the batch: later misses).
The first frame out is ``[0, None, "ready"]``; EOF on stdin closes the store and the master.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

FRAME_BYTES_MAX = 1 << 31
MASTER_START_SECONDS_MAX = 30.0
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_SET_PDEATHSIG = 1
LOCAL_BUFFER_BYTES = 256 * 2**20  # the client's transfer buffer: a get_batch lands here first
SEGMENT_BYTES_MIN = 16 * 2**20  # Mooncake's least global segment (and local buffer)
HOLD_START_SECONDS_MAX = 60.0


def loopback_only() -> None:
    """Bring ``lo`` up; refuse to run where any other interface exists (not a private netns)."""
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        raise SystemExit(f"mooncake worker: interfaces {names}: not a private network namespace "
                         "(run it under `unshare --net`)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies (no orphans)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_master(log: Path, lease_ms: int) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("mooncake_master") or str(Path(sys.executable).parent / "mooncake_master")
    rpc, metrics = free_port(), free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "-rpc_address=127.0.0.1", f"-rpc_port={rpc}", "-metrics_host=127.0.0.1",
             f"-metrics_port={metrics}", "-enable_metric_reporting=false", "-enable_ha=false",
             "-enable_http_metadata_server=false",
             # eviction: when 90% of the segments are used, evict 5% (Mooncake's defaults, named);
             # a read object is leased (not evictable) for lease_ms, as kvstore's lookup lease
             "-eviction_high_watermark_ratio=0.9", "-eviction_ratio=0.05",
             f"-default_kv_lease_ttl={lease_ms}"],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    deadline = time.monotonic() + MASTER_START_SECONDS_MAX
    while True:
        try:
            socket.create_connection(("127.0.0.1", rpc), timeout=1).close()
            return proc, rpc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(
                    f"mooncake_master did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.05)


def write_frame(out: BinaryIO, lock: threading.Lock, obj: Any) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    with lock:
        out.write(struct.pack("<I", len(data)) + data)
        out.flush()


def read_frame(inp: BinaryIO) -> Any:
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack("<I", head)
    if n > FRAME_BYTES_MAX:
        raise SystemExit(f"mooncake worker: frame of {n} bytes")
    body = inp.read(n)
    if len(body) < n:
        return None
    return msgpack.unpackb(body, raw=False)


class Ops:
    def __init__(self, store: Any) -> None:
        self.store = store

    def lookup(self, keys: list[str]) -> int:
        n = 0
        for found in self.store.batch_is_exist(keys):
            if found != 1:
                break
            n += 1
        return n

    def get(self, keys: list[str]) -> list[bytes | None]:
        return [v if v else None for v in self.store.get_batch(keys)]

    def put(self, keys: list[str], values: list[bytes]) -> int:
        return 0 if self.store.put_batch(keys, values) == 0 else len(keys)


def new_store(segment_bytes: int, buffer_bytes: int, rpc: int) -> Any:
    from mooncake.store import MooncakeDistributedStore

    store = MooncakeDistributedStore()
    rc = store.setup("127.0.0.1", "P2PHANDSHAKE", segment_bytes, buffer_bytes, "tcp", "",
                     f"127.0.0.1:{rpc}")
    if rc != 0:
        raise SystemExit(f"mooncake worker: setup returned {rc}")
    return store


def hold(segment_bytes: int, rpc: int, out: BinaryIO) -> int:
    """The store node: mount the segment, say so, keep it until stdin closes."""
    store = new_store(segment_bytes, SEGMENT_BYTES_MIN, rpc)
    out.write(b"held\n")
    out.flush()
    sys.stdin.buffer.read()
    store.close()
    return 0


def start_holder(segment_bytes: int, rpc: int, log_dir: Path) -> subprocess.Popen[bytes]:
    with open(log_dir / "mooncake_holder.log", "wb") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--hold", "--capacity",
                                 str(segment_bytes), "--rpc-port", str(rpc),
                                 "--log-dir", str(log_dir)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                preexec_fn=die_with_parent)
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], HOLD_START_SECONDS_MAX)
    if not readable or proc.stdout.readline() != b"held\n":
        proc.kill()
        raise SystemExit("mooncake worker: the segment holder did not start: "
                         f"{(log_dir / 'mooncake_holder.log').read_text(errors='replace')[-2000:]}")
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capacity", type=int, required=True, help="global segment bytes")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--lease-ms", type=int, default=10_000)
    ap.add_argument("--log-dir", type=Path, required=True)
    ap.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rpc-port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    # frames go to the real stdout; anything the C++ side prints goes to stderr instead
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    if a.hold:
        return hold(a.capacity, a.rpc_port, out)
    loopback_only()
    segment = -(-a.capacity // 2**20) * 2**20
    if segment < SEGMENT_BYTES_MIN:
        raise SystemExit(f"mooncake worker: a segment of {a.capacity} bytes: Mooncake's least "
                         f"is {SEGMENT_BYTES_MIN}")
    master, rpc = start_master(a.log_dir / "mooncake_master.log", a.lease_ms)
    holder: subprocess.Popen[bytes] | None = None
    try:
        holder = start_holder(segment, rpc, a.log_dir)
        store = new_store(0, LOCAL_BUFFER_BYTES, rpc)
        ops = Ops(store)
        lock = threading.Lock()
        write_frame(out, lock, [0, None, "ready"])

        def serve(req_id: int, op: str, args: list[Any]) -> None:
            try:
                result = getattr(ops, op)(*args)
                write_frame(out, lock, [req_id, None, result])
            except Exception as exc:  # answered, so the caller raises it
                write_frame(out, lock, [req_id, f"{type(exc).__name__}: {exc}", None])

        with ThreadPoolExecutor(max_workers=max(1, a.threads)) as pool:
            while (frame := read_frame(inp)) is not None:
                req_id, op, args = frame
                if op not in ("lookup", "get", "put"):
                    write_frame(out, lock, [req_id, f"unknown op {op!r}", None])
                    continue
                pool.submit(serve, req_id, op, args)
        store.close()
    finally:
        if holder is not None:
            assert holder.stdin is not None
            holder.stdin.close()
            try:
                holder.wait(10)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait(10)
        master.terminate()
        try:
            master.wait(10)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
