"""LMCache ``native_plugin`` L2 client: kvstore as the L2 of LMCache's multiprocess server.

::

    lmcache server ... --l2-adapter '{"type": "native_plugin",
        "module_path": "kvstore_connectors.lmcache", "class_name": "KVStoreL2Client",
        "adapter_params": {"host": "127.0.0.1", "port": 8701, "namespace": "lmcache"}}'

LMCache (``lmcache/v1/distributed/l2_adapters/native_connector_l2_adapter.py``, 0.5.6) builds
the object as ``cls(**adapter_params)``, calls the ``submit_batch_*`` methods while it holds its
own lock (so they must not block: each only queues a job and returns a future id), polls
``event_fd()`` and then calls ``drain_completions()``, which answers
``[(future_id, ok, error, per_key_bools | None), ...]``.

Data moves without a copy: a store sends LMCache's memoryviews with ``sendmsg`` (the bulk
SDK's ``put_many``), a load receives straight into them (``get_many_into``). A stored block
whose length differs from the buffer LMCache offers is reported as not loaded, never as
partial bytes.

Keys: LMCache's key string (``model@kv_rank:08x@group:x@chunk_hash_hex[@cache_salt]``) already
binds the model, the KV rank (world size and worker), the object group, the chunk hash and
the request's cache salt, and is deterministic; it is stored after the tenant's salt scope
(``kvstore_connectors.keys.salt_scope`` of the token the server names at AUTH: ``s-<hex>/``
with credentials, nothing in development mode, so two tenants' identical chunks never share a
key unless both opted into one ``key_salt``) and an optional ``key_prefix`` (bind what LMCache's
key does not, such as dtype and layout, e.g. ``"bf16-nhd/"``).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvstore_client import Client
from kvstore_wire.errors import KVStoreError

from kvstore_connectors.keys import salt_scope

__all__ = ["KVStoreL2Client"]

# Bounds of this client (its own, not the server's).
workers_max = 64
# Jobs queued and not yet completed; past it a submit completes at once with ok=False (LMCache
# then treats the keys as not stored / not found) rather than block LMCache's caller.
pending_jobs_max = 4096
# How long close() waits for each worker thread.
close_join_timeout_s = 5.0
# A submit of more keys than this is split across worker threads (parallel connections).
split_keys_min = 8

Completion = tuple[int, bool, str, list[bool] | None]


@dataclass
class _Job:
    fid: int
    op: str
    keys: list[str]
    views: list[memoryview] | None
    parts: int = 1  # slices still running
    results: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class KVStoreL2Client:
    """The ``native_plugin`` object LMCache loads (``class_name: "KVStoreL2Client"``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8701, namespace: str = "lmcache",
                 access_key: str = "dev", secret_key: str = "", create: bool = True,
                 num_workers: int = 4, timeout_s: float = 30.0, key_prefix: str = "") -> None:
        if not 1 <= int(num_workers) <= workers_max:
            raise ValueError(f"num_workers must be 1..{workers_max}")
        self._workers_n = int(num_workers)
        self._client = Client(host, int(port), namespace=namespace, access_key=access_key,
                              secret_key=secret_key, create=bool(create), timeout=timeout_s,
                              pool_size=self._workers_n)
        self._client.ping()  # fail at construction (LMCache start-up), not on the first job
        # the tenant's salt scope first (on the connection the ping opened), then the user's
        self._prefix = salt_scope(self._client.key_salt()) + str(key_prefix)
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._next_fid = 1
        self._pending = 0
        self._done: list[Completion] = []
        self._queue: queue.SimpleQueue[tuple[_Job, range] | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"kvstore-l2-{i}", daemon=True)
                         for i in range(self._workers_n)]
        for t in self._threads:
            t.start()

    # -- the interface LMCache calls ----------------------------------------------------------
    def event_fd(self) -> int:
        return self._efd

    def submit_batch_set(self, keys: Sequence[str], memoryviews: Sequence[Any]) -> int:
        return self._submit("set", keys, memoryviews)

    def submit_batch_get(self, keys: Sequence[str], memoryviews: Sequence[Any]) -> int:
        return self._submit("get", keys, memoryviews)

    def submit_batch_exists(self, keys: Sequence[str]) -> int:
        return self._submit("exists", keys, None)

    def submit_batch_delete(self, keys: Sequence[str]) -> int:
        return self._submit("delete", keys, None)

    def drain_completions(self) -> list[Completion]:
        with self._lock:
            fd = self._efd
        try:  # reset the eventfd first: a completion after this read writes it again
            if fd >= 0:
                os.eventfd_read(fd)
        except BlockingIOError:
            pass
        with self._lock:
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=close_join_timeout_s)
        self._client.close()
        with self._lock:  # a worker that outlived its join cannot write to a reused fd number
            os.close(self._efd)
            self._efd = -1

    # -- internals ----------------------------------------------------------------------------
    def _submit(self, op: str, keys: Sequence[str], views: Sequence[Any] | None) -> int:
        ks = [self._prefix + k for k in keys]
        mvs = None if views is None else [memoryview(v) for v in views]
        with self._lock:
            fid = self._next_fid
            self._next_fid += 1
            refuse = self._closed or self._pending >= pending_jobs_max
            if not refuse:
                self._pending += 1
        job = _Job(fid, op, ks, mvs, results=[False] * len(ks))
        if refuse:
            self._complete(fid, False, "kvstore L2 client closed or too many pending jobs",
                           None if op == "set" else job.results)
            return fid
        if mvs is not None and len(mvs) != len(ks):
            with self._lock:
                self._pending -= 1
            self._complete(fid, False, "one memoryview per key", job.results)
            return fid
        slices = self._slices(len(ks)) if op in ("get", "set") else [range(len(ks))]
        job.parts = len(slices)
        for r in slices:
            self._queue.put((job, r))
        return fid

    def _slices(self, n: int) -> list[range]:
        parts = max(1, min(self._workers_n, n // split_keys_min))
        step = -(-n // parts) if n else 1
        return [range(i, min(n, i + step)) for i in range(0, n, step)] or [range(0)]

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, r = item
            err = ""
            try:
                self._run(job, r)
            except (KVStoreError, OSError, ValueError) as exc:
                err = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # never let a worker die: LMCache would wait forever
                err = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if err:
                    job.errors.append(err)
                job.parts -= 1
                last = job.parts == 0
                if last:
                    self._pending -= 1
            if last:
                ok = not job.errors
                bools = None if job.op == "set" else job.results
                self._complete(job.fid, ok, "; ".join(job.errors), bools)

    def _run(self, job: _Job, r: range) -> None:
        keys = [job.keys[i] for i in r]
        if job.op == "set":
            assert job.views is not None
            self._client.put_many(keys, [job.views[i] for i in r])
            for i in r:
                job.results[i] = True
        elif job.op == "get":
            assert job.views is not None
            self._get(keys, [job.views[i] for i in r], job.results, r.start)
        elif job.op == "exists":
            for i, e in zip(r, self._client.exists_many(keys), strict=True):
                job.results[i] = e
        else:  # delete: LMCache wants one bool per key, the bulk port answers a count
            present = self._client.exists_many(keys)
            gone = [k for k, e in zip(keys, present, strict=True) if e]
            if gone:
                self._client.delete_many(gone)
            for i, e in zip(r, present, strict=True):
                job.results[i] = e

    def _get(self, keys: list[str], views: list[memoryview], out: list[bool], base: int) -> None:
        try:
            got = self._client.get_many_into(keys, views)
        except KVStoreError:
            # One bad block (e.g. longer than LMCache's buffer) fails the batch: take the keys
            # one by one so the others still load.
            got = []
            for k, v in zip(keys, views, strict=True):
                try:
                    got.append(self._client.get_into(k, v))
                except KVStoreError:
                    got.append(None)
        for j, (n, v) in enumerate(zip(got, views, strict=True)):
            out[base + j] = n is not None and n == v.nbytes

    def _complete(self, fid: int, ok: bool, error: str, bools: list[bool] | None) -> None:
        with self._lock:
            self._done.append((fid, ok, error, bools))
            if self._efd >= 0:
                os.eventfd_write(self._efd, 1)
