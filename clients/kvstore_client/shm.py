"""Shared-memory transport for clients on the same host as the server.

The client creates a POSIX shm region (``/dev/shm/kvstore-<random>``, mode 0600), maps it, and
registers it once on a dedicated connection. GET: the server copies each block from its read
buffer (DRAM tier or the flash read) straight into the region; only small frames with lengths
and checksums cross the socket, and the client verifies each checksum over the region bytes.
PUT: the server stores straight from the region.

::

    with ShmClient(port=8701, namespace="ns1", size=64 << 20, create=True) as c:
        c.region.view[0:n] = data                 # or build tensors over c.region.view
        c.put_many(["k"], [0], [n])
        lengths = c.get_many(["k"], [0], [n])      # -> [n]; bytes are in c.region.view[0:n]
"""

from __future__ import annotations

import mmap
import os
import secrets
from collections.abc import Sequence
from typing import Any

from kvstore_wire import limits
from kvstore_wire import messages as msg
from kvstore_wire import results as res
from kvstore_wire.decoder import Frame
from kvstore_wire.errors import ChecksumMismatch, InvalidArgument
from kvstore_wire.frames import FrameFlags, FrameType

from kvstore_client._core import Core, Op, checksum
from kvstore_client.channel import Connector, TcpChannel
from kvstore_client.client import SyncConnection

SHM_DIR = "/dev/shm"


class ShmRegion:
    """A mapped POSIX shm object the server can map too (same user)."""

    def __init__(self, size: int) -> None:
        if not 0 < size <= limits.shm_region_bytes_max:
            raise InvalidArgument(f"region must be 1..{limits.shm_region_bytes_max} bytes")
        self.name = f"kvstore-{os.getpid()}-{secrets.token_hex(8)}"
        self.path = os.path.join(SHM_DIR, self.name)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)
        self.size = size
        self.view = memoryview(self._map)

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        try:
            self.view.release()
            self._map.close()
        except BufferError:  # caller still holds slices; unmapped at GC
            pass


def _get(core: Core, region: ShmRegion, keys: Sequence[str], offsets: Sequence[int],
         caps: Sequence[int]) -> Op:
    out: list[int | None] = [None] * len(keys)
    bad: list[str] = []

    def on_frame(idx: int, f: Frame) -> None:
        if f.ftype is not FrameType.BLOCK:
            res.End.from_header(f.header, len(keys))
            return
        b = res.BlockHeader.from_header(f.header, f.payload_length, f.flags)
        if not 0 <= b.index < len(keys) or b.length > caps[b.index]:
            raise InvalidArgument("BLOCK outside the request")
        off = offsets[b.index]
        if checksum(region.view[off:off + b.length]) != b.checksum:
            bad.append(b.key)
            return
        out[b.index] = b.length

    h = msg.KeysRequest(list(keys), offsets=list(offsets), capacities=list(caps))
    err = yield from core.pipeline([(FrameType.GET_BATCH, h, (), int(FrameFlags.SHM))], on_frame)
    if err is not None:
        raise err
    if bad:
        raise ChecksumMismatch(f"{len(bad)} blocks failed their checksum in the region: {bad[:3]}")
    return out


def _put(core: Core, region: ShmRegion, keys: Sequence[str], offsets: Sequence[int],
         lengths: Sequence[int], ttl_seconds: float, overwrite: bool) -> Op:
    flags = int(FrameFlags.SHM) | core.put_flags(overwrite)
    sums = [checksum(region.view[o:o + n]) for o, n in zip(offsets, lengths, strict=True)]
    h = msg.PutBatch(list(keys), list(lengths), sums, ttl_seconds, list(offsets))
    created: list[bool] = []
    err = yield from core.pipeline(
        [(FrameType.PUT_BATCH, h, (), flags)],
        lambda i, f: created.extend(res.PutResult.from_header(f.header, len(keys)).created))
    if err is not None:
        raise err
    return created


class ShmClient:
    """One connection with a registered region. Not thread-safe (one call at a time)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8701, *, namespace: str, size: int,
                 access_key: str = "dev", secret_key: str = "", create: bool = False,
                 timeout: float = 30.0, connect: Connector = TcpChannel.connect) -> None:
        self.region = ShmRegion(size)
        try:
            self._conn = SyncConnection(host, port, access_key, secret_key, namespace,
                                        create=create, timeout=timeout, connect=connect)
            self._conn.run(self._conn.core.request(
                FrameType.SHM_REGISTER, msg.ShmRegister(self.region.name, size)))
        except BaseException:
            self.region.close()
            raise

    def _check(self, offsets: Sequence[int], sizes: Sequence[int]) -> None:
        for o, n in zip(offsets, sizes, strict=True):
            if o < 0 or n < 0 or o + n > self.region.size:
                raise InvalidArgument("slot lies outside the region")

    def get_many(self, keys: Sequence[str], offsets: Sequence[int],
                 caps: Sequence[int]) -> list[int | None]:
        """Land keys[i] at region[offsets[i]:] (at most caps[i] bytes); result[i] = length or
        None on a miss. Batches above ``limits.batch_keys_max`` keys are split."""
        self._check(offsets, caps)
        out: list[int | None] = []
        step = limits.batch_keys_max
        for i in range(0, len(keys), step):
            out += self._conn.run(_get(self._conn.core, self.region, keys[i:i + step],
                                       offsets[i:i + step], caps[i:i + step]))
        return out

    def put_many(self, keys: Sequence[str], offsets: Sequence[int], lengths: Sequence[int], *,
                 ttl_seconds: float = 0.0, overwrite: bool = False) -> list[bool]:
        """Store region[offsets[i]:offsets[i]+lengths[i]] as keys[i]. Write-once like
        ``Client.put_many``: a present key keeps its bytes (result False) unless
        ``overwrite=True`` replaces them (result True when written)."""
        self._check(offsets, lengths)
        out: list[bool] = []
        step = limits.batch_keys_max
        for i in range(0, len(keys), step):
            out += self._conn.run(_put(self._conn.core, self.region, keys[i:i + step],
                                       offsets[i:i + step], lengths[i:i + step], ttl_seconds,
                                       overwrite))
        return out

    def close(self) -> None:
        self._conn.close()
        self.region.close()

    def __enter__(self) -> ShmClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
