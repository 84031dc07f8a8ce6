"""The server's NIXL agent and its registered staging memory (optional extra ``nixl``).

One agent per server, created lazily on the first NIXL_REGISTER (never in a constructor): it
needs the ``nixl`` package (``nixl-cu12`` installs the module as ``nixl_cu12``). One-sided
transfers need registered memory on both ends and engine buffers are not registered, so the
agent registers one staging arena once (``limits.nixl_staging_chunks`` chunks of
``limits.nixl_staging_chunk_bytes``); a request borrows one chunk at a time.

Agent calls other than creation run on the event-loop thread; transfers are posted there and
polled without blocking the loop, each bounded by ``limits.nixl_transfer_seconds_max``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from kvstore import limits
from kvstore.errors import Busy, InvalidArgument, NotImplementedFeature, StorageError

log = logging.getLogger("kvstore.nixl")

# UCX transports used when the environment names none: shared memory and TCP work on any host
# (CPU-only, no RDMA NIC); a deployment with RDMA sets UCX_TLS itself (e.g. "rc,sm,self").
UCX_TLS_DEFAULT = "sm,tcp,self"

# Where Linux lists RDMA devices; without any, UCX's IB modules have nothing to drive.
_RDMA_SYSFS = "/sys/class/infiniband"

AGENT_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

# Polls of a transfer's state that yield with sleep(0) before backing off to short sleeps.
_SPIN_POLLS = 64
_POLL_SECONDS = 0.0002


class TransferStuck(StorageError):
    """A transfer neither finished nor could be cancelled: its staging chunk is not reused."""


def load_nixl() -> tuple[Any, Any, Any]:
    """(nixl_agent, nixl_agent_config, nixl_thread_sync_t) from ``nixl`` or ``nixl_cu12``;
    NotImplementedFeature when neither is installed."""
    for mod in ("nixl._api", "nixl_cu12._api"):
        try:
            api = __import__(mod, fromlist=["nixl_agent"])
        except ImportError:
            continue
        return api.nixl_agent, api.nixl_agent_config, api.nixl_thread_sync_t
    raise NotImplementedFeature("NIXL is not installed on this server (pip install 'kvstore[nixl]')")


def ucx_env_defaults() -> None:
    """UCX settings for agents created by this process, each only when the environment has
    none: ``UCX_TLS`` (see UCX_TLS_DEFAULT) and, on a host without RDMA devices, no IB modules
    (``UCX_MODULES=^ib,rdmacm``): the libnl-route those modules load crashes in its exit-time
    destructor with the nixl-cu12 1.5.1 wheels (SIGSEGV in rtnl_tc_unregister at exit)."""
    os.environ.setdefault("UCX_TLS", UCX_TLS_DEFAULT)
    try:
        rdma = bool(os.listdir(_RDMA_SYSFS))
    except OSError:
        rdma = False
    if not rdma:
        os.environ.setdefault("UCX_MODULES", "^ib,rdmacm")


def new_agent(prefix: str) -> Any:
    """A NIXL agent with the UCX backend and a unique name (UCX defaults: ucx_env_defaults)."""
    agent_cls, config_cls, sync = load_nixl()
    ucx_env_defaults()
    name = f"{prefix}-{os.getpid()}-{secrets.token_hex(6)}"
    cfg = config_cls(backends=["UCX"], sync_mode=sync.NIXL_THREAD_SYNC_STRICT)
    return agent_cls(name, cfg)


class Staging:
    """Registered chunks handed out one per request; waiting for one is bounded in time."""

    def __init__(self, chunks: int, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.arena = np.zeros(chunks * chunk_bytes, dtype=np.uint8)
        self.base = int(self.arena.ctypes.data)
        self.view = self.arena.data.cast("B")
        self.chunks = chunks
        self._free: asyncio.Queue[int] | None = None

    @property
    def free(self) -> int:
        return self.chunks if self._free is None else self._free.qsize()

    def _queue(self) -> asyncio.Queue[int]:
        if self._free is None:
            self._free = asyncio.Queue()
            for i in range(self.chunks):
                self._free.put_nowait(i)
        return self._free

    async def acquire(self) -> int:
        try:
            return await asyncio.wait_for(self._queue().get(), limits.nixl_transfer_seconds_max)
        except TimeoutError:
            raise Busy("no NIXL staging chunk became free in time") from None

    def try_acquire(self) -> int | None:
        try:
            return self._queue().get_nowait()
        except asyncio.QueueEmpty:
            return None

    def release(self, chunk: int) -> None:
        self._queue().put_nowait(chunk)

    def chunk_view(self, chunk: int) -> memoryview:
        return self.view[chunk * self.chunk_bytes:(chunk + 1) * self.chunk_bytes]

    def chunk_addr(self, chunk: int) -> int:
        return self.base + chunk * self.chunk_bytes


class NixlServerAgent:
    """The server's agent: remote peers by name, staging memory, bounded transfers."""

    def __init__(self) -> None:
        self.agent: Any = None
        self.staging: Staging | None = None
        self.peers: set[str] = set()
        self._reg: Any = None
        self._lock: asyncio.Lock | None = None

    @property
    def name(self) -> str:
        return str(self.agent.name) if self.agent is not None else ""

    async def ensure_open(self, runner: Any) -> None:
        """Create the agent and register staging memory (once; in an engine thread, since
        creating a UCX worker takes a fraction of a second)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.agent is None:
                await runner.call(self._open)

    def _open(self) -> None:
        agent = new_agent("kvstore-server")
        staging = Staging(limits.nixl_staging_chunks, limits.nixl_staging_chunk_bytes)
        self._reg = agent.register_memory(
            [(staging.base, staging.chunks * staging.chunk_bytes, 0, "")], "DRAM")
        self.agent, self.staging = agent, staging
        log.info("NIXL agent %s up, %d staging chunks of %d bytes", self.name, staging.chunks,
                 staging.chunk_bytes)

    def add_peer(self, metadata: bytes) -> str:
        try:
            raw = self.agent.add_remote_agent(metadata)
        except Exception as exc:  # the bindings raise their own types on bad metadata
            raise InvalidArgument(f"NIXL metadata was refused: {type(exc).__name__}") from None
        name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if not AGENT_NAME_RE.match(name) or name == self.name or name in self.peers:
            with contextlib.suppress(Exception):
                if name != self.name and name not in self.peers:
                    self.agent.remove_remote_agent(name)
            raise InvalidArgument("NIXL agent name is invalid or already registered")
        self.peers.add(name)
        with contextlib.suppress(Exception):  # wire up UCX now, not on the first transfer
            self.agent.make_connection(name)
        return name

    def remove_peer(self, name: str) -> None:
        if name in self.peers:
            self.peers.discard(name)
            with contextlib.suppress(Exception):
                self.agent.remove_remote_agent(name)

    async def transfer(self, op: str, peer: str, pieces: Sequence[tuple[int, int, int]]) -> None:
        """One one-sided transfer of ``pieces`` = (local address, remote address, length):
        op "WRITE" moves local -> remote, "READ" remote -> local. Returns when it is done."""
        pieces = [x for x in pieces if x[2] > 0]
        if not pieces:
            return
        a = self.agent
        try:
            local = a.get_xfer_descs([(lo, n, 0) for lo, _, n in pieces], "DRAM")
            remote = a.get_xfer_descs([(ro, n, 0) for _, ro, n in pieces], "DRAM")
            handle = a.initialize_xfer(op, local, remote, peer, b"")
        except Exception as exc:  # NIXL_ERR_NOT_FOUND: remote range not registered by the peer
            raise InvalidArgument(f"NIXL refused the transfer: {type(exc).__name__}") from None
        done = False
        try:
            state = a.transfer(handle)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limits.nixl_transfer_seconds_max
            polls = 0
            while state == "PROC":
                if loop.time() > deadline:
                    raise StorageError("NIXL transfer timed out")
                polls += 1
                await asyncio.sleep(0 if polls < _SPIN_POLLS else _POLL_SECONDS)
                state = a.check_xfer_state(handle)
            if state != "DONE":
                raise StorageError(f"NIXL transfer failed ({state})")
            done = True
        finally:
            try:
                a.release_xfer_handle(handle)
            except Exception:
                if not done:  # still posted: its staging memory must not be reused
                    raise TransferStuck("NIXL transfer could not be cancelled") from None

    def close(self) -> None:
        if self.agent is None:
            return
        for name in list(self.peers):
            self.remove_peer(name)
        with contextlib.suppress(Exception):
            self.agent.deregister_memory(self._reg)
        self.agent = None
        self._reg = None
