"""The worker side's data path: vLLM's paged KV cache tensors to and from kvstore blocks.

One kvstore block holds one vLLM block of every attention layer, layer by layer in the order
of the KV cache group (K and V as the backend lays them out), so a prefix of n blocks is n
keys whatever the model depth. Saves gather the blocks of all layers into one staging buffer
and send its rows with ``put_many`` (write-once: a block another instance stored first is
kept); loads receive with ``get_many_into`` straight into a staging buffer, check every
length, and scatter the rows that arrived into the cache. A block that is missing, of the
wrong size or fails its checksum is never written into the cache: its vLLM block id is
reported as a load error and vLLM recomputes it (``kv_load_failure_policy: "recompute"``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from kvstore_client import Client
from kvstore_wire.errors import KVStoreError

# under "vllm" so that vLLM's own log handler prints it
log = logging.getLogger("vllm.kvstore_connectors")


@dataclass(frozen=True)
class _LayerView:
    tensor: torch.Tensor
    block_dim: int            # 0: [num_blocks, ...]; 1: [2, num_blocks, ...] (K/V first)
    ratio: int                # kernel blocks per vLLM block
    nbytes: int               # bytes of one vLLM block of this layer


class PagedKV:
    """The registered KV cache tensors of one worker, seen as blocks of bytes."""

    def __init__(self, kv_caches: Mapping[str, torch.Tensor], layer_names: Sequence[str],
                 num_blocks: int) -> None:
        missing = [n for n in layer_names if n not in kv_caches]
        if missing:
            raise ValueError(f"KV caches of layers {missing[:4]} were not registered")
        self.layers: list[_LayerView] = []
        for name in layer_names:
            t = kv_caches[name]
            if t.shape[0] % num_blocks == 0 and t.shape[0] >= num_blocks:
                dim = 0
            elif t.dim() > 1 and t.shape[0] == 2 and t.shape[1] % num_blocks == 0:
                dim = 1
            else:
                raise ValueError(f"KV cache of {name} has shape {tuple(t.shape)}: no dimension "
                                 f"of {num_blocks} blocks")
            ratio = t.shape[dim] // num_blocks
            nbytes = t.numel() * t.element_size() // num_blocks
            self.layers.append(_LayerView(t, dim, ratio, nbytes))
        self.block_bytes = sum(v.nbytes for v in self.layers)
        self.device = self.layers[0].tensor.device

    def _index(self, v: _LayerView, block_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.as_tensor(list(block_ids), dtype=torch.long)
        if v.ratio > 1:
            ids = (ids[:, None] * v.ratio + torch.arange(v.ratio)[None, :]).reshape(-1)
        return ids.to(v.tensor.device)

    def gather(self, block_ids: Sequence[int]) -> torch.Tensor:
        """A CPU uint8 tensor [n, block_bytes]: row i is vLLM block ``block_ids[i]``."""
        n = len(block_ids)
        out = torch.empty((n, self.block_bytes), dtype=torch.uint8)
        off = 0
        for v in self.layers:
            src = v.tensor.index_select(v.block_dim, self._index(v, block_ids))
            if v.block_dim == 1:
                src = src.movedim(1, 0)
            rows = src.contiguous().view(torch.uint8).reshape(n, v.nbytes)
            out[:, off:off + v.nbytes].copy_(rows)
            off += v.nbytes
        return out

    def scatter(self, block_ids: Sequence[int], rows: torch.Tensor) -> None:
        """Write ``rows`` (uint8 [n, block_bytes], CPU) into vLLM blocks ``block_ids``."""
        n = len(block_ids)
        off = 0
        for v in self.layers:
            t = v.tensor
            chunk = rows[:, off:off + v.nbytes].contiguous().to(t.device).view(t.dtype)
            if v.block_dim == 0:
                src = chunk.reshape(n * v.ratio, *t.shape[1:])
                t.index_copy_(0, self._index(v, block_ids), src)
            else:
                src = chunk.reshape(n * v.ratio, 2, *t.shape[2:]).movedim(0, 1)
                t.index_copy_(1, self._index(v, block_ids), src)
            off += v.nbytes


@dataclass
class TransferCounters:
    loaded_blocks: int = 0
    load_failed_blocks: int = 0
    saved_blocks: int = 0
    saved_existing_blocks: int = 0
    save_failed_blocks: int = 0


def load_blocks(client: Client, kv: PagedKV, keys: Sequence[str], block_ids: Sequence[int],
                counters: TransferCounters) -> set[int]:
    """Load ``keys`` into ``block_ids``; return the block ids that could not be loaded (not
    written: vLLM recomputes them)."""
    if not keys:
        return set()
    rows = torch.empty((len(keys), kv.block_bytes), dtype=torch.uint8)
    try:
        got = client.get_many_into(keys, [rows[i].numpy() for i in range(len(keys))])
    except (KVStoreError, OSError) as exc:
        log.warning("kvstore: load of %d blocks failed: %s", len(keys), exc)
        counters.load_failed_blocks += len(keys)
        return set(block_ids)
    ok = [i for i, n in enumerate(got) if n == kv.block_bytes]
    failed = {block_ids[i] for i, n in enumerate(got) if n != kv.block_bytes}
    wrong = [n for n in got if n is not None and n != kv.block_bytes]
    if wrong:
        log.warning("kvstore: %d blocks of the wrong size (%s, expected %d): recomputed",
                    len(wrong), wrong[0], kv.block_bytes)
    if ok:
        idx = torch.as_tensor(ok, dtype=torch.long)
        kv.scatter([block_ids[i] for i in ok], rows.index_select(0, idx))
    counters.loaded_blocks += len(ok)
    counters.load_failed_blocks += len(failed)
    return failed


def save_blocks(client: Client, kv: PagedKV, keys: Sequence[str], block_ids: Sequence[int],
                counters: TransferCounters) -> None:
    """Store ``block_ids`` under ``keys``; best effort (a failed save is a later miss)."""
    if not keys:
        return
    rows = kv.gather(block_ids)
    try:
        created = client.put_many(keys, [rows[i].numpy() for i in range(len(keys))])
    except (KVStoreError, OSError) as exc:
        log.warning("kvstore: save of %d blocks failed: %s", len(keys), exc)
        counters.save_failed_blocks += len(keys)
        return
    new = sum(created)
    counters.saved_blocks += new
    counters.saved_existing_blocks += len(created) - new
