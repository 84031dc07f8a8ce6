"""Shared-memory transport for clients on the same host (server side).

The client creates a POSIX shm object ``/dev/shm/kvstore-<id>`` (mode 0600: only the same user
can map it) and registers it once per connection with SHM_REGISTER. The server maps it. From
then on a GET_BATCH or PUT_BATCH with the SHM flag names offsets into the region instead of
carrying payload: the engine reads straight into the region (``engine.get_into``) and stores
straight from it. Only small frames cross the socket; checksums still travel in BLOCK headers so
the client verifies what landed.

Registration is refused unless the peer is on loopback (or a Unix socket).
"""

from __future__ import annotations

import ctypes
import ipaddress
import mmap
import os
import re
import stat
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.errors import AccessDenied, InvalidArgument, LimitExceeded
from kvstore.io_uring.buffers import buffer_address
from kvstore.protocol import messages as msg
from kvstore.protocol.frames import FrameFlags, FrameType

if TYPE_CHECKING:
    from kvstore.transport.bulk_conn import BulkProtocol

SHM_DIR = "/dev/shm"
NAME_RE = re.compile(r"^kvstore-[A-Za-z0-9_-]{1,64}$")


class Region:
    """A mapped shm region; ``view`` is a writable memoryview of all of it."""

    def __init__(self, name: str, size: int) -> None:
        if not NAME_RE.match(name):
            raise InvalidArgument("shm name must match kvstore-[A-Za-z0-9_-]{1,64}")
        if not 0 < size <= limits.shm_region_bytes_max:
            raise LimitExceeded(f"shm region must be 1..{limits.shm_region_bytes_max} bytes")
        try:
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidArgument(f"cannot open shm region: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < size:
                raise InvalidArgument("shm region is smaller than declared")
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.name = name
        self.size = size
        self.view = memoryview(self._map)

    def slot(self, offset: int, length: int) -> memoryview:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidArgument("slot lies outside the shm region")
        return self.view[offset:offset + length]

    def close(self) -> None:
        try:
            self.view.release()
            self._map.close()
        except BufferError:  # an engine call still holds a slice; unmapped at GC
            pass


def _peer_is_local(p: BulkProtocol) -> bool:
    assert p.transport is not None
    peer = p.transport.get_extra_info("peername")
    if isinstance(peer, (str, bytes)) or not peer:  # AF_UNIX
        return True
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


async def register(p: BulkProtocol, rid: int, req: msg.ShmRegister) -> None:
    if not _peer_is_local(p):
        raise AccessDenied("shared memory is for clients on the same host")
    if p.region is not None:
        raise InvalidArgument("a shm region is already registered on this connection")
    p.region = Region(req.name, req.size)
    p.send(FrameType.RESULT, rid, msg.ShmRegistered(req.size).to_header())


def _region(p: BulkProtocol) -> Region:
    if p.region is None:
        raise InvalidArgument("no shm region registered on this connection")
    return p.region


# Blocks copied per engine call: answers for a group go out while the next group is copied, so
# the client verifies checksums (its core) while the server copies (this one).
SHM_GET_GROUP = 8


def _copy(dst: memoryview, src: memoryview) -> None:
    """memcpy through ctypes, which releases the GIL, so the event loop keeps sending while a
    worker copies 2 MiB blocks (a slice assignment would hold the GIL throughout)."""
    n = len(src)
    if n < 64 * 1024:
        dst[:n] = src
        return
    assert len(dst) >= n
    ctypes.memmove(buffer_address(dst), buffer_address(src), n)


def _get_range(p: BulkProtocol, req: msg.KeysRequest, lo: int,
               hi: int) -> list[tuple[int, str, int, int]]:
    """Engine thread (authorized by ``bulk_ops.dispatch``): copy blocks lo..hi-1 from the
    engine's read buffer (DRAM entry or the aligned flash buffer) straight into their slots; returns (index, key, length, checksum)."""
    region = _region(p)
    assert req.offsets is not None and req.capacities is not None
    out = []
    for i in range(lo, hi):
        key = req.keys[i]
        slot = region.slot(req.offsets[i], req.capacities[i])
        lease = p.blocks.lease(p.namespace, key)  # one read: payload and its checksum
        if lease is None:
            continue
        try:
            bv = lease.view
            assert bv is not None  # the service answers a miss with no lease
            n = bv.meta.length
            if n > len(slot):
                raise InvalidArgument(f"block {key} has {n} bytes; its slot holds {len(slot)}")
            _copy(slot, bv.payload)
            out.append((i, key, n, bv.meta.checksum))
        finally:
            lease.release()
    return out


async def get_batch(p: BulkProtocol, rid: int, req: msg.KeysRequest) -> None:
    region = _region(p)
    assert req.offsets is not None and req.capacities is not None
    for o, c in zip(req.offsets, req.capacities, strict=True):
        region.slot(o, c)  # every slot is checked before anything is copied
    found = 0
    for lo in range(0, len(req.keys), SHM_GET_GROUP):
        hi = min(len(req.keys), lo + SHM_GET_GROUP)
        for i, key, n, xxh in await p.runner.call(_get_range, p, req, lo, hi):
            p.send(FrameType.BLOCK, rid, msg.BlockHeader(i, key, n, xxh).to_header(),
                   flags=FrameFlags.SHM)
            found += 1
    p.send(FrameType.END, rid, msg.End(found).to_header())


def _put_all(p: BulkProtocol, batch: msg.PutBatch) -> list[bool]:
    """Engine thread (authorized by ``bulk_ops.dispatch``): store straight from the region."""
    region = _region(p)
    assert batch.offsets is not None
    views: list[object] = [region.slot(o, n)
                           for o, n in zip(batch.offsets, batch.lengths, strict=True)]
    return p.blocks.put_many_sync(p.namespace, list(zip(batch.keys, views, strict=True)),
                                  batch.checksums, batch.ttl_seconds, batch.overwrite)


async def put_batch(p: BulkProtocol, rid: int, batch: msg.PutBatch) -> None:
    created = await p.runner.call(_put_all, p, batch)
    p.send(FrameType.RESULT, rid, msg.PutResult(created).to_header())
