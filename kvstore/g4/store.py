"""The object-store client of the G4 tier: obstore (Rust ``object_store``), built in one place.

Always explicit credentials and region, path-style requests to the given endpoint (HTTP only
when the endpoint says so), ``AWS_EC2_METADATA_DISABLED=true`` so nothing asks an instance
metadata service, and no retries on reads (a slow G4 is a miss, not a stall). A circuit
breaker (``Breaker``) turns a run of failures into "down" for ``limits.g4_down_seconds``: reads
miss without a request meanwhile, uploads wait. Every call raises ``G4Unavailable`` on any
failure (the caller counts it; nothing reaches a client as an error).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from kvstore import limits
from kvstore.errors import KVStoreError

if TYPE_CHECKING:
    from obstore.store import S3Store

T = TypeVar("T")


class G4Unavailable(KVStoreError):
    """The object store did not answer (down, slow, refused): the caller treats it as a miss."""


class G4NotFound(G4Unavailable):
    """The object is not there."""


@dataclass(frozen=True)
class S3Target:
    """Where G4 lives and how to sign: resolved by the caller (``kvstore.config``)."""

    bucket: str
    prefix: str
    endpoint: str
    region: str
    access_key: str
    secret_key: str = field(repr=False)


class Breaker:
    """Consecutive failures -> down for a while; one success closes it."""

    def __init__(self, failures: int = limits.g4_breaker_failures,
                 down_seconds: float = limits.g4_down_seconds) -> None:
        self.failures_max, self.down_seconds = failures, down_seconds
        self._failures = 0
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    def ok(self) -> None:
        with self._lock:
            self._failures = 0
            self._down_until = 0.0

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self.failures_max:
                self._down_until = time.monotonic() + self.down_seconds


def _store(t: S3Target, timeout_s: float, retries: int) -> S3Store:
    from obstore.store import S3Store

    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # never ask an instance metadata service
    return S3Store(
        t.bucket, endpoint=t.endpoint, region=t.region, access_key_id=t.access_key,
        secret_access_key=t.secret_key, virtual_hosted_style_request=False,
        skip_signature=False,
        client_options={"allow_http": t.endpoint.startswith("http://"),
                        "connect_timeout": timedelta(seconds=limits.g4_connect_timeout_seconds),
                        "timeout": timedelta(seconds=timeout_s)},
        retry_config={"max_retries": retries,
                      "retry_timeout": timedelta(seconds=timeout_s)})


class ObjectStore:
    """Whole-object PUT/DELETE/LIST and ranged GET under ``target.prefix``."""

    def __init__(self, target: S3Target, *,
                 read_timeout_seconds: float = limits.g4_read_timeout_seconds) -> None:
        self.target = target
        self.breaker = Breaker()
        self._reads = _store(target, read_timeout_seconds, 0)
        self._writes = _store(target, limits.g4_upload_timeout_seconds, 2)

    def key(self, name: str) -> str:
        p = self.target.prefix.strip("/")
        return f"{p}/{name}" if p else name

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            out = fn()
        except Exception as exc:
            from obstore.exceptions import NotFoundError

            if isinstance(exc, NotFoundError):
                self.breaker.ok()  # it answered
                raise G4NotFound(str(exc)) from None
            self.breaker.failed()
            raise G4Unavailable(f"{type(exc).__name__}: {exc}") from None
        self.breaker.ok()
        return out

    def get_range(self, name: str, start: int, end: int) -> bytes:
        import obstore

        if not self.breaker.up:
            raise G4Unavailable("G4 is down (breaker open)")
        key = self.key(name)
        return bytes(self._call(lambda: obstore.get_range(self._reads, key, start=start, end=end)))

    def get(self, name: str) -> bytes:
        import obstore

        key = self.key(name)
        return self._call(lambda: bytes(obstore.get(self._writes, key).bytes()))

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        import obstore

        key = self.key(name)
        self._call(lambda: obstore.put(self._writes, key, data, use_multipart=False))

    def delete(self, name: str) -> None:
        import obstore

        key = self.key(name)
        self._call(lambda: obstore.delete(self._writes, key))

    def list(self, suffix: str) -> list[tuple[str, int]]:
        """(name under the prefix, size) of every object ending with ``suffix``."""
        import obstore

        def run() -> list[tuple[str, int]]:
            out = []
            p = self.target.prefix.strip("/")
            for batch in obstore.list(self._writes, prefix=p or None):
                for meta in batch:
                    path = str(meta["path"])
                    if path.endswith(suffix):
                        out.append((path[len(p) + 1:] if p else path, int(meta["size"])))
            return out

        return self._call(run)
