"""Each public call as a generator over one ``Core`` (shared by the sync and async clients)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvstore_wire import limits
from kvstore_wire import messages as msg
from kvstore_wire import results as res
from kvstore_wire.decoder import Frame
from kvstore_wire.errors import InvalidArgument, LimitExceeded
from kvstore_wire.frames import FrameType

from kvstore_client._core import Core, Op, as_bytes_view, checksum, receive_block

# Batches of one call are cut this small so that the server stores (or reads) one batch while
# the next crosses the wire.
PUT_BATCH_BYTES = 32 * limits.MiB
GET_BATCH_KEYS = 16


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def put_many(core: Core, keys: Sequence[str], values: Sequence[Any],
             ttl_seconds: float = 0.0, overwrite: bool = False,
             metas: Sequence[bytes] | None = None) -> Op:
    """result[i]: see ``Client.put_many`` (write-once unless ``overwrite``). ``metas[i]``:
    opaque metadata stored with keys[i] (``msg.PutBatch.metas``)."""
    if len(keys) != len(values) or (metas is not None and len(metas) != len(keys)):
        raise InvalidArgument("one value per key")
    flags = core.put_flags(overwrite)
    views = [as_bytes_view(v) for v in values]
    for v in views:
        if len(v) > limits.block_bytes_max:
            raise LimitExceeded(f"block of {len(v)} bytes exceeds {limits.block_bytes_max}")
    sums = [checksum(v) for v in views]
    batches: list[range] = []
    start, size = 0, 0
    for i, v in enumerate(views):
        if i > start and (size + len(v) > PUT_BATCH_BYTES or i - start >= limits.batch_keys_max):
            batches.append(range(start, i))
            start, size = i, 0
        size += len(v)
    if start < len(views):
        batches.append(range(start, len(views)))
    reqs = [(FrameType.PUT_BATCH,
             msg.PutBatch([keys[i] for i in r], [len(views[i]) for i in r], [sums[i] for i in r],
                          ttl_seconds,
                          metas=None if metas is None else [bytes(metas[i]) for i in r]),
             [views[i] for i in r if len(views[i])], flags) for r in batches]
    created: list[bool] = [False] * len(keys)

    def on_frame(idx: int, f: Frame) -> None:
        r = batches[idx]
        for j, c in zip(r, res.PutResult.from_header(f.header, len(r)).created, strict=True):
            created[j] = c

    err = yield from core.pipeline(reqs, on_frame)
    if err is not None:
        raise err
    return created


def get_many_into(core: Core, keys: Sequence[str], bufs: Sequence[Any] | None,
                  batch_keys: int = GET_BATCH_KEYS, with_meta: bool = False) -> Op:
    """``bufs[i]`` receives ``keys[i]``; result[i] = its length, or None on a miss. With
    ``bufs`` None, result[i] is a new bytearray (or None). ``with_meta`` (``bufs`` None):
    result[i] is (bytearray, stored metadata, creation time, expiry) or None."""
    if bufs is not None and len(bufs) != len(keys):
        raise InvalidArgument("one buffer per key")
    views = None if bufs is None else [as_bytes_view(b, writable=True) for b in bufs]
    batches = _chunks(len(keys), max(1, min(batch_keys, limits.batch_keys_max)))
    reqs = [(FrameType.GET_BATCH, msg.KeysRequest([keys[i] for i in r], with_meta=with_meta),
             (), 0) for r in batches]
    results: list[Any] = [None] * len(keys)

    def on_frame(idx: int, f: Frame) -> Op | None:
        r = batches[idx]
        if f.ftype is FrameType.BLOCK:
            i = f.header.get("i")
            if not isinstance(i, int) or not 0 <= i < len(r):
                raise InvalidArgument("BLOCK index outside the request")
            j = r[i]
            if with_meta:
                return _block_with_meta(core, f, results, j)
            return receive_block(core, f, None if views is None else views[j], results, j)
        res.End.from_header(f.header, len(r))  # END: at most one block per key
        return None

    err = yield from core.pipeline(reqs, on_frame)
    if err is not None:
        raise err
    return results


def _block_with_meta(core: Core, f: Frame, results: list[Any], j: int) -> Op:
    b = res.BlockHeader.from_header(f.header, f.payload_length, f.flags)
    yield from receive_block(core, f, None, results, j)
    results[j] = (results[j], b.meta, b.created, b.expires)


def keyed(core: Core, ftype: FrameType, field: str, keys: Sequence[str]) -> Op:
    """EXISTS/DELETE/PREFETCH over any number of keys, in batches, pipelined. ``field`` names
    the answer's field (``exists``: a list of bools; ``deleted``, ``staged``: their sum)."""
    batches = _chunks(len(keys), limits.batch_keys_max)
    reqs = [(ftype, msg.KeysRequest([keys[i] for i in r]), (), 0) for r in batches]
    out: list[Any] = [None] * len(batches)

    def on_frame(idx: int, f: Frame) -> None:
        out[idx] = getattr(res.parse_result(ftype, f.header, len(batches[idx])), field)

    err = yield from core.pipeline(reqs, on_frame)
    if err is not None:
        raise err
    if field == "exists":
        return [x for part in out for x in part]
    return sum(out)


def lookup(core: Core, keys: Sequence[str], lease_seconds: float) -> Op:
    if len(keys) > limits.chain_keys_max:
        raise LimitExceeded(f"chain of {len(keys)} keys exceeds {limits.chain_keys_max}")
    r = yield from core.request(FrameType.LOOKUP, msg.KeysRequest(list(keys), lease_seconds),
                                len(keys))
    return r.found
