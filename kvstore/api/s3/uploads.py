"""The open multipart uploads of one server (parts held in memory until Complete) and the
answers of recently completed ones.

Bounded: ``limits.multipart_uploads_max`` open uploads, ``limits.block_bytes_max`` per upload
and ``limits.multipart_staged_bytes_max`` across all uploads; uploads idle for
``limits.multipart_idle_seconds_max`` are dropped when room is needed. A completed upload's
answer is remembered (at most ``limits.multipart_completed_remembered_max``, for at most the idle
bound), so that a repeated CompleteMultipartUpload of the same parts answers the same, as S3
does. Touched only from the event loop.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from kvstore import limits
from kvstore.api.errors import S3Error
from kvstore.api.s3.payload import too_large
from kvstore.errors import Busy


@dataclass
class Part:
    number: int
    data: bytes | bytearray
    etag: str  # the part's MD5 (hex), or its xxh3 under --etag xxh3
    sums: dict[str, str]  # x-amz-checksum-* values (base64), verified
    digest: bytes  # raw checksum of the upload's algorithm (b"": none)
    modified: float


@dataclass
class Upload:
    upload_id: str
    bucket: str
    key: str
    owner: str
    initiated: float
    hdrs: dict[str, str]
    um: dict[str, str]
    algo: str = ""  # x-amz-checksum-algorithm of Create, lower case ("": none)
    kind: str = ""  # its checksum type: COMPOSITE or FULL_OBJECT
    parts: dict[int, Part] = field(default_factory=dict)
    used: float = 0.0

    @property
    def size(self) -> int:
        return sum(len(p.data) for p in self.parts.values())

    def room(self, number: int) -> int:
        """Bytes part ``number`` may have before the object passes the block limit."""
        old = self.parts.get(number)
        return limits.block_bytes_max - self.size + (len(old.data) if old else 0)


@dataclass(frozen=True)
class Completed:
    """What a completed upload answered, for a repeated Complete of the same parts."""

    bucket: str
    key: str
    owner: str
    listed: tuple[tuple[int, str], ...]  # (part number, ETag) as Complete listed them
    body: bytes
    total: int
    at: float


def no_such_upload() -> S3Error:
    return S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be "
                   "invalid, or the upload may have been aborted or completed.")


class Uploads:
    def __init__(self) -> None:
        self._by_id: dict[str, Upload] = {}
        self._done: OrderedDict[str, Completed] = OrderedDict()
        self.staged_bytes = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def _reap(self, now: float) -> None:
        for u in [u for u in self._by_id.values()
                  if now - u.used > limits.multipart_idle_seconds_max]:
            self.abort(u)

    def create(self, bucket: str, key: str, owner: str, hdrs: dict[str, str],
               um: dict[str, str], algo: str = "", kind: str = "") -> Upload:
        now = time.time()
        if len(self._by_id) >= limits.multipart_uploads_max:
            self._reap(now)
        if len(self._by_id) >= limits.multipart_uploads_max:
            raise Busy(f"more than {limits.multipart_uploads_max} multipart uploads are open")
        u = Upload(os.urandom(16).hex(), bucket, key, owner, now, hdrs, um, algo, kind,
                   used=now)
        self._by_id[u.upload_id] = u
        return u

    def get(self, upload_id: str, bucket: str, key: str | None, owner: str) -> Upload:
        u = self._by_id.get(upload_id)
        if u is None or u.bucket != bucket or (key is not None and u.key != key) \
                or u.owner != owner:
            raise no_such_upload()
        u.used = time.time()
        return u

    def add_part(self, u: Upload, part: Part) -> Part:
        old = u.parts.get(part.number)
        delta = len(part.data) - (len(old.data) if old else 0)
        if u.size + delta > limits.block_bytes_max:
            raise too_large(u.room(part.number))
        if self.staged_bytes + delta > limits.multipart_staged_bytes_max:
            self._reap(time.time())
            if self.staged_bytes + delta > limits.multipart_staged_bytes_max:
                raise Busy("too many multipart bytes staged; complete or abort uploads")
        if u.upload_id not in self._by_id:  # aborted while the body was arriving
            raise no_such_upload()
        u.parts[part.number] = part
        self.staged_bytes += delta
        return part

    def abort(self, u: Upload) -> None:
        if self._by_id.pop(u.upload_id, None) is not None:
            self.staged_bytes -= u.size
            u.parts.clear()

    def finish(self, u: Upload, done: Completed) -> None:
        """The upload completed: its parts are freed and its answer remembered."""
        self.abort(u)
        self._done[u.upload_id] = done
        while len(self._done) > limits.multipart_completed_remembered_max:
            self._done.popitem(last=False)

    def completed(self, upload_id: str, bucket: str, key: str, owner: str) -> Completed | None:
        now = time.time()
        while self._done:  # oldest first: forget those past the idle bound
            first = next(iter(self._done.values()))
            if now - first.at <= limits.multipart_idle_seconds_max:
                break
            self._done.popitem(last=False)
        done = self._done.get(upload_id)
        if done is None or (done.bucket, done.key, done.owner) != (bucket, key, owner):
            return None
        return done

    def drop_bucket(self, bucket: str) -> int:
        """Abort every open upload into ``bucket``, whoever started it (the bucket is gone);
        how many there were."""
        gone = [u for u in self._by_id.values() if u.bucket == bucket]
        for u in gone:
            self.abort(u)
        return len(gone)

    def for_bucket(self, bucket: str, owner: str) -> list[Upload]:
        return sorted((u for u in self._by_id.values() if u.bucket == bucket and u.owner == owner),
                      key=lambda u: (u.key, u.initiated))
