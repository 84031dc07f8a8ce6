"""The sync client against a live server: caller memory (numpy), pooling, timeouts, retries,
the calls, and its import footprint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from kvstore_client import Client, Layout, block_keys

from kvstore import limits
from kvstore.errors import InvalidArgument, LimitExceeded

NS = "client-test"


def test_get_into_numpy_arrays_and_views(bulk) -> None:
    arr = np.arange(256 * 1024, dtype=np.float32)
    with Client(port=bulk.port, namespace=NS, create=True) as c:
        assert c.put("t0", arr) is True
        out = np.zeros_like(arr)
        assert c.get_into("t0", out) == arr.nbytes
        assert np.array_equal(out, arr)
        # a strided slice is not contiguous: refused before anything is sent
        with pytest.raises(InvalidArgument):
            c.get_into("t0", np.zeros((2, arr.size), dtype=np.float32)[:, ::2])
        # many blocks into rows of one 2-D array
        rows = np.zeros((4, 1024), dtype=np.uint8)
        vals = [os.urandom(1024) for _ in range(4)]
        c.put_many([f"r{i}" for i in range(4)], vals)
        assert c.get_many_into([f"r{i}" for i in range(4)], list(rows)) == [1024] * 4
        assert all(rows[i].tobytes() == vals[i] for i in range(4))
        with pytest.raises(InvalidArgument):  # buffer too small: error, nothing wrong returned
            c.get_into("t0", bytearray(10))
        assert c.get("t0") == arr.tobytes()  # the connection survived


def test_calls(bulk) -> None:
    layout = Layout(model="m", dtype="fp16", num_layers=2, num_kv_heads=2, head_dim=8,
                    tokens_per_block=4)
    keys = block_keys(layout.fingerprint(), list(range(40)), 4)
    with Client(port=bulk.port, namespace=NS, create=True) as c:
        assert c.ping() >= 0
        c.put_many(keys[:6], [b"x" * 64] * 6)
        assert c.lookup(keys) == 6
        assert c.lookup(keys, lease_seconds=1.0) == 6
        assert c.exists_many(keys[4:8]) == [True, True, False, False]
        assert c.prefetch(keys[:3]) == 3
        assert c.delete_many(keys[:2] + ["absent"]) == 2
        assert c.lookup(keys) == 0
        st = c.stats()
        assert st["blocks"] == 4 and "puts" in st["stats"]
        with pytest.raises(LimitExceeded):
            c.lookup(["k"] * (limits.chain_keys_max + 1))
        assert c.put("ttl", b"v", ttl_seconds=60) is True


def test_pool_is_thread_safe(bulk) -> None:
    with Client(port=bulk.port, namespace=NS, create=True, pool_size=3) as c:
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(20):
                    v = os.urandom(5000)
                    c.put(f"t{t}-{i}", v)
                    assert c.get(f"t{t}-{i}") == v
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert len(c._idle) <= 3


def test_timeout_and_bounded_retries() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (kernel backlog) but never answers the HELLO
    port = silent.getsockname()[1]
    try:
        c = Client(port=port, namespace=NS, timeout=0.2, retries=2, backoff_seconds=0.01)
        with pytest.raises(TimeoutError):
            c.ping()
        c.close()
    finally:
        silent.close()


def test_retry_reconnects_after_server_restart(make_bulk) -> None:
    srv = make_bulk()
    c = Client(port=srv.port, namespace=NS, create=True, retries=2, backoff_seconds=0.01)
    c.put("a", b"1")
    # drop the pooled connection under the client: the next call reconnects (one retry)
    for conn in c._idle:
        conn.sock.shutdown(socket.SHUT_RDWR)
    assert c.get("a") == b"1"
    c.close()


def test_client_imports_no_server_dependencies() -> None:
    code = ("import sys, kvstore_client, kvstore_client.shm; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'pyuring', "
            "'uvicorn', 'starlette') or m.startswith('kvstore.engine') "
            "or m.startswith('kvstore.transport') or m.startswith('kvstore.api')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_put_is_write_once_unless_overwrite(bulk) -> None:
    old, new = os.urandom(70_000), os.urandom(50_000)
    with Client(port=bulk.port, namespace=NS, create=True) as c:
        assert c.put("w", old) is True
        assert c.put("w", new) is False  # write-once: the stored block stays, nothing written
        assert c.get("w") == old
        assert c.put("w", new, overwrite=True) is True  # replaced
        assert c.get("w") == new
        assert c.put("w", new, overwrite=True) is False  # identical bytes: nothing written
        assert c.get("w") == new
        # put_many: a new key, a replaced one, an identical one and a kept one, in one call
        keys = ["m-new", "w", "m-same", "m-kept"]
        c.put_many(["m-same", "m-kept"], [b"s" * 10, b"k" * 10])
        vals = [b"n" * 5, old, b"s" * 10, b"K" * 20]
        assert c.put_many(keys, vals, overwrite=True) == [True, True, False, True]
        assert [c.get(k) for k in keys] == vals
        assert c.put_many(keys, [b"x"] * 4) == [False] * 4  # write-once again by default
        assert [c.get(k) for k in keys] == vals
        bufs = [bytearray(len(v)) for v in vals]
        assert c.get_many_into(keys, bufs) == [len(v) for v in vals]
        assert [bytes(b) for b in bufs] == vals
    assert bulk.engine.check() == []
