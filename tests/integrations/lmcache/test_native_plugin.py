"""The LMCache ``native_plugin`` client against a live bulk server on 127.0.0.1, driven the way
LMCache 0.5.6's ``NativeConnectorL2Adapter`` drives it: submits return future ids at once, the
caller polls ``event_fd()`` and calls ``drain_completions()``. Buffers are ctypes arrays
exposed as memoryviews, as LMCache's ``MemoryObj.byte_array`` is. Runs in the main suite (the
client does not import lmcache); ``test_lmcache_bench.py`` runs LMCache itself."""

from __future__ import annotations

import ctypes
import os
import select
import time

import pytest
from kvstore_client import Client
from kvstore_connectors.lmcache import KVStoreL2Client

NS = "lmcache-plugin"
KiB = 1024


def _buf(data: bytes | int) -> tuple[ctypes.Array[ctypes.c_ubyte], memoryview]:
    n = data if isinstance(data, int) else len(data)
    arr = (ctypes.c_ubyte * n)()
    if not isinstance(data, int):
        ctypes.memmove(arr, data, n)
    return arr, memoryview(arr)


def _wait(c: KVStoreL2Client, fids: list[int], timeout_s: float = 20.0) -> dict[int, tuple]:
    """LMCache's demux loop, bounded: poll the eventfd, drain, until every fid completed."""
    poller = select.poll()
    poller.register(c.event_fd(), select.POLLIN)
    got: dict[int, tuple] = {}
    deadline = time.monotonic() + timeout_s
    while set(fids) - set(got) and time.monotonic() < deadline:
        if poller.poll(200):
            for fid, ok, err, bools in c.drain_completions():
                assert fid not in got, "a future completed twice"
                got[fid] = (ok, err, bools)
    assert set(fids) <= set(got), f"not completed: {set(fids) - set(got)}"
    return got


def _key(i: int, salt: str = "") -> str:
    # LMCache's wire form: model@kv_rank:08x@group:x@chunk_hash_hex[@cache_salt]
    k = f"meta-llama/Llama-3.1-8B@{0x00010000:08x}@0@{i:064x}"
    return f"{k}@{salt}" if salt else k


def test_set_exists_get_delete_round_trip(bulk) -> None:
    blocks = [os.urandom(256 * KiB) for _ in range(20)]
    keys = [_key(i) for i in range(20)]
    with_bufs = [_buf(b) for b in blocks]
    c = KVStoreL2Client(port=bulk.port, namespace=NS, num_workers=3)
    try:
        fid = c.submit_batch_set(keys, [mv for _, mv in with_bufs])
        ok, err, _ = _wait(c, [fid])[fid]
        assert ok, err
        probe = keys[:5] + [_key(99)] + keys[5:7] + [_key(3, salt="other-tenant")]
        fid = c.submit_batch_exists(probe)
        ok, err, bools = _wait(c, [fid])[fid]
        assert ok and bools == [True] * 5 + [False] + [True] * 2 + [False]
        outs = [_buf(256 * KiB) for _ in keys]
        fid = c.submit_batch_get(keys, [mv for _, mv in outs])
        ok, err, bools = _wait(c, [fid])[fid]
        assert ok and bools == [True] * 20, err
        for (arr, _), b in zip(outs, blocks, strict=True):
            assert bytes(arr) == b
        fid = c.submit_batch_delete([keys[0], _key(98), keys[1]])
        ok, _, bools = _wait(c, [fid])[fid]
        assert ok and bools == [True, False, True]
        fid = c.submit_batch_exists(keys[:3])
        assert _wait(c, [fid])[fid][2] == [False, False, True]
    finally:
        c.close()
    with Client(port=bulk.port, namespace=NS) as plain:  # the same keys, seen by the SDK
        assert plain.get(keys[2]) == blocks[2]


def test_many_submits_in_flight_each_complete_once(bulk) -> None:
    c = KVStoreL2Client(port=bulk.port, namespace=NS, num_workers=4)
    try:
        data = {i: os.urandom(64 * KiB) for i in range(64)}
        bufs = {i: _buf(d) for i, d in data.items()}
        fids = [c.submit_batch_set([_key(i) for i in range(j, j + 8)],
                                   [bufs[i][1] for i in range(j, j + 8)])
                for j in range(0, 64, 8)]
        assert len(set(fids)) == len(fids)
        assert all(ok for ok, _, _ in _wait(c, fids).values())
        outs = {i: _buf(64 * KiB) for i in data}
        fids = [c.submit_batch_get([_key(i) for i in range(j, j + 8)],
                                   [outs[i][1] for i in range(j, j + 8)])
                for j in range(0, 64, 8)]
        assert all(bools == [True] * 8 for _, _, bools in _wait(c, fids).values())
        assert all(bytes(outs[i][0]) == data[i] for i in data)
    finally:
        c.close()


def test_wrong_length_block_is_not_loaded_and_others_are(bulk) -> None:
    """A stored block of another length than LMCache's buffer (e.g. a layout change under the
    same key) is a miss, never partial or foreign bytes; the other keys of the batch load."""
    with Client(port=bulk.port, namespace=NS, create=True) as plain:
        plain.put(_key(1), os.urandom(100 * KiB))  # shorter than the buffer
        plain.put(_key(2), os.urandom(300 * KiB))  # longer than the buffer
        good = os.urandom(200 * KiB)
        plain.put(_key(3), good)
    c = KVStoreL2Client(port=bulk.port, namespace=NS)
    try:
        outs = [_buf(200 * KiB) for _ in range(3)]
        fid = c.submit_batch_get([_key(1), _key(2), _key(3)], [mv for _, mv in outs])
        ok, _, bools = _wait(c, [fid])[fid]
        assert bools == [False, False, True]
        assert bytes(outs[2][0]) == good
    finally:
        c.close()


def test_server_gone_completes_with_failure_not_a_hang(make_bulk) -> None:
    srv = make_bulk()
    c = KVStoreL2Client(port=srv.port, namespace=NS, timeout_s=5.0)
    try:
        srv.stop(timeout=2.0)
        arr, mv = _buf(os.urandom(4 * KiB))
        out, omv = _buf(4 * KiB)
        fids = [c.submit_batch_set([_key(7)], [mv]), c.submit_batch_get([_key(7)], [omv]),
                c.submit_batch_exists([_key(7)])]
        done = _wait(c, fids)
        assert [done[f][0] for f in fids] == [False, False, False]
        assert done[fids[1]][2] == [False] and done[fids[2]][2] == [False]
        assert all(done[f][1] for f in fids)  # an error string says why
    finally:
        c.close()


def test_bad_arguments_fail_fast(bulk) -> None:
    with pytest.raises(ValueError):
        KVStoreL2Client(port=bulk.port, namespace=NS, num_workers=0)
    c = KVStoreL2Client(port=bulk.port, namespace=NS, key_prefix="bf16-nhd/")
    try:
        fid = c.submit_batch_set([_key(1), _key(2)], [_buf(8)[1]])  # one view for two keys
        ok, err, _ = _wait(c, [fid])[fid]
        assert not ok and "memoryview" in err
        arr, mv = _buf(os.urandom(8 * KiB))
        fid = c.submit_batch_set([_key(5)], [mv])
        assert _wait(c, [fid])[fid][0]
    finally:
        c.close()
    with Client(port=bulk.port, namespace=NS) as plain:  # the prefix is part of the key
        assert plain.exists_many(["bf16-nhd/" + _key(5), _key(5)]) == [True, False]


def test_past_the_pending_bound_a_submit_fails_at_once(bulk, monkeypatch) -> None:
    """LMCache calls submit under its own lock: past ``pending_jobs_max`` a submit completes at
    once with ok=False (keys not stored / not found) instead of blocking; after close() a
    submit still returns a future id and raises nothing."""
    import kvstore_connectors.lmcache as plugin

    c = KVStoreL2Client(port=bulk.port, namespace=NS)
    try:
        monkeypatch.setattr(plugin, "pending_jobs_max", 0)
        arr, mv = _buf(os.urandom(4 * KiB))
        fids = [c.submit_batch_set([_key(1)], [mv]), c.submit_batch_exists([_key(1), _key(2)])]
        done = _wait(c, fids)
        assert done[fids[0]][0] is False and done[fids[1]][2] == [False, False]
        assert "pending" in done[fids[0]][1]
        monkeypatch.setattr(plugin, "pending_jobs_max", 4096)
        fid = c.submit_batch_set([_key(1)], [mv])
        assert _wait(c, [fid])[fid][0]
    finally:
        c.close()
    late = c.submit_batch_exists([_key(1)])
    assert [(f, ok) for f, ok, _, _ in c.drain_completions()] == [(late, False)]
    c.close()  # twice is harmless
