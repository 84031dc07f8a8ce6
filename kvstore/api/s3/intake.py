"""A PUT body hashed while it arrives: ``Intake``.

An MD5 ETag costs a core at ~0.7 GB/s, and one body's MD5 cannot be split across threads. Hashed
after the whole body was received, a 2 MiB PUT waited ~3 ms for it after its last byte. Here the
body's pieces, as the server hands them over, are gathered into batches of
``limits.s3_intake_batch_bytes``; each batch is copied into the request's pooled buffer (GIL
released) and fed to the MD5 (and to the SHA-256 when the client signed the payload) in a worker
thread while the next pieces are being received. One batch of a request is in flight at a time,
so the digests see the bytes in order, and the last one only hashes what came after the
previous batch. The MD5 is the S3 app's (``md5lanes.factory``): with the native SIMD kernels,
concurrent bodies' batches are hashed side by side, one lane each.

A worker may still be writing into the buffer when the request fails (a client gone, a body too
long, a cancelled task): ``Intake.settled`` says when the buffer may go back to the pool, and
``Body.release`` waits for it (``kvstore.api.s3.payload``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
from collections.abc import Callable
from typing import Any

from kvstore import limits
from kvstore.api.s3.md5lanes import LaneMd5, Md5Hash
from kvstore.engine.device import copy_into


class Intake:
    """Copies a body of a known length into ``target`` and digests it, batch by batch."""

    __slots__ = ("_pool", "_target", "_md5", "_sha256", "_lane", "_pending", "_pending_n",
                 "_pos", "_job", "batch_bytes")

    def __init__(self, pool: concurrent.futures.Executor, target: memoryview, *,
                 md5: Callable[[], Md5Hash] | None, sha256: bool,
                 batch_bytes: int = limits.s3_intake_batch_bytes) -> None:
        self._pool = pool
        self._target = target
        self._md5: Md5Hash | None = md5() if md5 is not None else None
        self._sha256: Any = hashlib.sha256() if sha256 else None
        # an MD5 in the SIMD lanes and nothing else to digest: the combiner's own thread copies
        # and hashes each batch (no pool thread blocked per batch to keep a lane busy)
        self._lane = self._md5 if isinstance(self._md5, LaneMd5) and not sha256 else None
        self._pending: list[bytes] = []
        self._pending_n = 0
        self._pos = 0  # where the next batch goes in ``target``
        self._job: concurrent.futures.Future[None] | None = None
        self.batch_bytes = batch_bytes

    def _work(self, pieces: list[bytes], pos: int) -> None:
        target, start = self._target, pos
        for p in pieces:
            n = len(p)
            copy_into(target[pos : pos + n], memoryview(p))
            pos += n
        batch = target[start:pos]  # one update per batch: one lane round trip, not one per piece
        if self._md5 is not None:  # the lanes and hashlib (over 2 KiB) release the GIL
            self._md5.update(batch)
        if self._sha256 is not None:
            self._sha256.update(batch)

    def _start(self) -> None:
        pieces, n = self._pending, self._pending_n
        if n > len(self._target) - self._pos:
            raise ValueError("more body than its Content-Length")
        self._pending, self._pending_n = [], 0
        if self._lane is not None:
            self._job = self._lane.submit(pieces, self._target, self._pos)
        else:
            self._job = self._pool.submit(self._work, pieces, self._pos)
        self._pos += n

    async def add(self, piece: bytes) -> None:
        """One piece of the body; starts a batch when enough has gathered and none runs."""
        self._pending.append(piece)
        self._pending_n += len(piece)
        if self._pending_n < self.batch_bytes:
            return
        job = self._job
        if job is not None:
            if not job.done():
                return  # keep gathering: the batch in flight hashes in order before this one
            job.result()  # a failed batch fails the request
        self._start()

    async def finish(self) -> dict[str, str]:
        """After the last piece: the digests as hex, {"md5": ..., "sha256": ...} (those asked)."""
        if self._job is not None:
            await asyncio.wrap_future(self._job)
        if self._pending_n:
            self._start()
            assert self._job is not None
            await asyncio.wrap_future(self._job)
        out = {}
        if self._md5 is not None:
            out["md5"] = self._md5.hexdigest()
        if self._sha256 is not None:
            out["sha256"] = self._sha256.hexdigest()
        return out

    def settled(self) -> concurrent.futures.Future[None] | None:
        """The batch that may still be writing into ``target`` (None: none is)."""
        job = self._job
        return None if job is None or job.done() else job
