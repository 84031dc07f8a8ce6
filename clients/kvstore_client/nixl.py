"""NIXL transport for the client SDK (optional extra: ``pip install 'kvstore[nixl]'``).

The client creates a NIXL agent, registers one DRAM region (a bytearray, a numpy array, a CPU
torch tensor: anything writable and contiguous) and sends the agent's metadata plus the region's
address and size to the server on the bulk connection (NIXL_REGISTER). From then on the server
moves blocks with one-sided transfers: GET writes each block straight into the region at the
requested offset, PUT reads it from there. Only small frames cross the socket; each block's
checksum still travels in its BLOCK header (GET: verified here over the region bytes) or in the
request (PUT: verified by the server's engine before it stores).

::

    buf = torch.empty(64 << 20, dtype=torch.uint8)        # or bytearray / numpy
    with NixlClient(port=8701, namespace="ns1", create=True) as c:
        c.register(buf)
        c.put_from_region(["k"], [0], [n])
        lengths = c.get_into_region(["k"], [4 << 20])     # -> [n]

Over RDMA NICs UCX picks them when ``UCX_TLS`` allows; when unset it is set to ``sm,tcp,self``
(shared memory on one host, TCP across hosts), which works without RDMA hardware (see
``ucx_env_defaults``).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from kvstore_wire import limits
from kvstore_wire import messages as msg
from kvstore_wire import results as res
from kvstore_wire.decoder import Frame
from kvstore_wire.errors import ChecksumMismatch, InvalidArgument, NotImplementedFeature
from kvstore_wire.frames import FrameFlags, FrameType

from kvstore_client._core import Core, Op, as_bytes_view, checksum
from kvstore_client.channel import Connector, TcpChannel
from kvstore_client.client import SyncConnection

UCX_TLS_DEFAULT = "sm,tcp,self"
_RDMA_SYSFS = "/sys/class/infiniband"  # where Linux lists RDMA devices


def ucx_env_defaults() -> None:
    """UCX settings for the agent, each only when the environment has none: ``UCX_TLS`` and, on
    a host without RDMA devices, no IB modules (``UCX_MODULES=^ib,rdmacm``): the libnl-route
    they load crashes in its exit-time destructor with the nixl-cu12 1.5.1 wheels."""
    os.environ.setdefault("UCX_TLS", UCX_TLS_DEFAULT)
    try:
        rdma = bool(os.listdir(_RDMA_SYSFS))
    except OSError:
        rdma = False
    if not rdma:
        os.environ.setdefault("UCX_MODULES", "^ib,rdmacm")


def nixl_available() -> bool:
    try:
        _load()
    except NotImplementedFeature:
        return False
    return True


def _load() -> Any:
    for mod in ("nixl._api", "nixl_cu12._api"):
        try:
            return __import__(mod, fromlist=["nixl_agent"])
        except ImportError:
            continue
    raise NotImplementedFeature("NIXL is not installed (pip install 'kvstore[nixl]')")


def _as_array(buf: Any) -> np.ndarray:
    """A flat uint8 numpy array sharing ``buf``'s memory (DRAM only)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(buf, torch.Tensor):
        if buf.device.type != "cpu":
            raise InvalidArgument("only CPU (DRAM) tensors can be registered")
        if not buf.is_contiguous():
            raise InvalidArgument("tensor must be contiguous")
        return buf.detach().reshape(-1).view(torch.uint8).numpy()
    arr = np.frombuffer(as_bytes_view(buf, writable=True), dtype=np.uint8)
    if not arr.flags.writeable:
        raise InvalidArgument("buffer must be writable")
    return arr


class NixlRegion:
    """The caller's registered memory: ``view`` is a writable byte view of all of it."""

    def __init__(self, buf: Any) -> None:
        self.owner = buf  # keeps the memory alive while registered
        self.array = _as_array(buf)
        self.size = int(self.array.size)
        if not 0 < self.size <= limits.nixl_region_bytes_max:
            raise InvalidArgument(f"region must be 1..{limits.nixl_region_bytes_max} bytes")
        self.address = int(self.array.ctypes.data)
        self.view = self.array.data.cast("B")


def _slots(region: NixlRegion, offsets: Sequence[int], sizes: Sequence[int],
           disjoint: bool = True) -> None:
    """Every slot inside the region and, for GET, no two slots overlapping (one block's transfer
    must not overwrite another's bytes)."""
    if len(offsets) != len(sizes):
        raise InvalidArgument("one offset and one size per key")
    spans = sorted(zip(offsets, sizes, strict=True))
    end = 0
    for o, n in spans:
        if o < 0 or n < 0 or o + n > region.size:
            raise InvalidArgument("slot lies outside the registered region")
        if disjoint and n and o < end:
            raise InvalidArgument("slots overlap")
        end = max(end, o + n)


def _default_caps(region: NixlRegion, offsets: Sequence[int]) -> list[int]:
    """Each slot runs to the next higher offset (or the region's end), at most a block."""
    order = sorted(set(offsets))
    nxt = {o: (order[i + 1] if i + 1 < len(order) else region.size) for i, o in enumerate(order)}
    return [min(nxt[o] - o, limits.block_bytes_max) if 0 <= o < region.size else 0
            for o in offsets]


def _batches(n: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Split [0, n) into runs within ``batch_keys_max`` keys and ``batch_bytes_max`` bytes."""
    out, start, nbytes = [], 0, 0
    for i in range(n):
        if i > start and (i - start >= limits.batch_keys_max
                          or nbytes + sizes[i] > limits.batch_bytes_max):
            out.append((start, i))
            start, nbytes = i, 0
        nbytes += sizes[i]
    if n > start:
        out.append((start, n))
    return out


def _get(core: Core, region: NixlRegion, keys: Sequence[str], offsets: Sequence[int],
         caps: Sequence[int]) -> Op:
    runs = _batches(len(keys), [0] * len(keys))
    out: list[int | None] = [None] * len(keys)
    seen: list[res.BlockHeader] = []

    def on_frame(r: int, f: Frame) -> None:
        lo, hi = runs[r]
        if f.ftype is not FrameType.BLOCK:
            res.End.from_header(f.header, hi - lo)
            return
        b = res.BlockHeader.from_header(f.header, f.payload_length, f.flags)
        if not 0 <= b.index < hi - lo or b.length > caps[lo + b.index]:
            raise InvalidArgument("BLOCK outside the request")
        seen.append(res.BlockHeader(lo + b.index, b.key, b.length, b.checksum))

    reqs = [(FrameType.GET_BATCH,
             msg.KeysRequest(list(keys[lo:hi]), offsets=list(offsets[lo:hi]),
                             capacities=list(caps[lo:hi])), (), int(FrameFlags.NIXL))
            for lo, hi in runs]
    err = yield from core.pipeline(reqs, on_frame)
    if err is not None:
        raise err
    bad = []
    for b in seen:  # verified after the last transfer: the bytes can no longer change under us
        off = offsets[b.index]
        if checksum(region.view[off:off + b.length]) != b.checksum:
            bad.append(b.key)
        else:
            out[b.index] = b.length
    if bad:
        raise ChecksumMismatch(f"{len(bad)} blocks failed their checksum in the region: {bad[:3]}")
    return out


def _put(core: Core, region: NixlRegion, keys: Sequence[str], offsets: Sequence[int],
         lengths: Sequence[int], ttl_seconds: float, overwrite: bool) -> Op:
    flags = int(FrameFlags.NIXL) | core.put_flags(overwrite)
    runs = _batches(len(keys), lengths)
    sums = [checksum(region.view[o:o + n]) for o, n in zip(offsets, lengths, strict=True)]
    created: list[list[bool]] = [[] for _ in runs]
    reqs = [(FrameType.PUT_BATCH,
             msg.PutBatch(list(keys[lo:hi]), list(lengths[lo:hi]), sums[lo:hi], ttl_seconds,
                          list(offsets[lo:hi])),
             (), flags) for lo, hi in runs]

    def on_frame(r: int, f: Frame) -> None:
        lo, hi = runs[r]
        created[r] = res.PutResult.from_header(f.header, hi - lo).created

    err = yield from core.pipeline(reqs, on_frame)
    if err is not None:
        raise err
    return [c for run in created for c in run]


class NixlClient:
    """One bulk connection plus a NIXL agent with one registered region. Not thread-safe (one
    call at a time). The agent (it starts a progress thread) is created by ``register``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8701, *, namespace: str,
                 access_key: str = "dev", secret_key: str = "", create: bool = False,
                 timeout: float = 30.0, connect: Connector = TcpChannel.connect) -> None:
        self._conn = SyncConnection(host, port, access_key, secret_key, namespace,
                                    create=create, timeout=timeout, connect=connect)
        self.agent: Any = None
        self.region: NixlRegion | None = None
        self._reg: Any = None
        self.server_agent = ""

    def register(self, buffer: Any) -> NixlRegion:
        """Register ``buffer`` with a new NIXL agent and with the server (once per client)."""
        if self.region is not None:
            raise InvalidArgument("a region is already registered on this client")
        api = _load()
        region = NixlRegion(buffer)
        ucx_env_defaults()
        name = f"kvstore-client-{os.getpid()}-{secrets.token_hex(6)}"
        self.agent = api.nixl_agent(name, api.nixl_agent_config(backends=["UCX"]))
        self._reg = self.agent.register_memory([(region.address, region.size, 0, "")], "DRAM")
        md = self.agent.get_agent_metadata()
        done = self._conn.run(self._conn.core.request(
            FrameType.NIXL_REGISTER, msg.NixlRegister(md, region.address, region.size)))
        self.server_agent = done.agent
        self.region = region
        return region

    def _region(self) -> NixlRegion:
        if self.region is None:
            raise InvalidArgument("register a region first")
        return self.region

    def get_into_region(self, keys: Sequence[str], offsets: Sequence[int],
                        caps: Sequence[int] | None = None) -> list[int | None]:
        """Land keys[i] at region[offsets[i]:] (at most caps[i] bytes; by default up to the next
        offset); result[i] is the block's length, or None on a miss."""
        region = self._region()
        caps = _default_caps(region, offsets) if caps is None else caps
        _slots(region, offsets, caps)
        return list(self._conn.run(_get(self._conn.core, region, keys, offsets, caps)))

    def put_from_region(self, keys: Sequence[str], offsets: Sequence[int],
                        lengths: Sequence[int], *, ttl_seconds: float = 0.0,
                        overwrite: bool = False) -> list[bool]:
        """Store region[offsets[i]:offsets[i]+lengths[i]] as keys[i]. Write-once like
        ``Client.put_many``: result[i] is True when the key was new, False when it was present
        (its stored bytes kept), unless ``overwrite=True`` replaces them (True when written,
        False when the stored block was already identical)."""
        region = self._region()
        if len(keys) != len(offsets):
            raise InvalidArgument("one offset per key")
        _slots(region, offsets, lengths, disjoint=False)
        return list(self._conn.run(_put(self._conn.core, region, keys, offsets, lengths,
                                        ttl_seconds, overwrite)))

    def close(self) -> None:
        """Close the connection first (the server drops its peer), then the agent."""
        self._conn.close()
        if self.agent is not None:
            try:
                self.agent.deregister_memory(self._reg)
            except Exception:  # the agent is dropped either way
                pass
            self.agent = None
        self.region = None

    def __enter__(self) -> NixlClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
