"""LMCache's standalone remote server (``lmcache_server``) as a replay target: ``lmcache``.

``lmcache_server HOST PORT cpu`` (LMCache 0.5.6, ``lmcache.v1.server.__main__``) is the remote
store LMCache's ``lm://HOST:PORT`` connector (``LMCServerConnector``) talks to: one thread per
TCP connection, a Python dict of every block it was sent. It has no capacity bound and no
evictor (its source leaves that as a TODO), so ``--capacity`` does not apply: it holds the whole
working set in its process's memory, and only the unlimited-capacity runs compare it.

The wire format is small and fixed (``lmcache.v1.protocol``): a client header of nine int32
(command, length, memory format, dtype, location, a 4-d shape) and the key, space-padded to 150
bytes; for PUT the raw bytes follow and nothing comes back; GET, EXIST and HEALTH answer a
server header of nine int32 (code 200 or 400, length, format, dtype, shape, location), GET then
the raw bytes. This module speaks it directly from the replay process (``encode_request`` and
``decode_reply``, sans-IO) rather than through a worker in LMCache's venv: the replay then pays
no pipe hop and no extra copy that LMCache's own connector would not (the Mooncake target's
worker does pay one), and the codec is checked byte for byte against LMCache's own
``ClientMetaMessage``/``ServerMetaMessage`` in its venv (tests/loadtest/test_target_lmcache.py),
so a change of LMCache's format fails a test instead of skewing a figure. LMCache packs in the
machine's byte order; this is little-endian, as every machine it ships wheels for.

Calls, over a pool of ``concurrency`` connections (a connection is one LMCache worker's socket):
lookup = EXIST per block up to the first miss; get = GETs pipelined 64 at a time; put = PUT per
block, then a HEALTH round trip: the server handles a connection's messages in order, so its
answer means every PUT before it is in the dict (LMCache's PUT itself is never acknowledged).
Each is the pattern that spares the server a stall it has: it writes a GET's header and body
with two ``sendall`` on a socket without ``TCP_NODELAY``, so a body under one segment waits
for the ACK of the header, which the client delays (~40 ms on Linux) when it has nothing to send
(measured here: one 4 KiB GET at a time, 40 ms each; pipelined, the next request carries the
ACK). EXIST answers are single small writes: one at a time they go out at once, pipelined they
queue behind each other the same way. LMCache's own connector asks one key at a time. Keys are
LMCache cache-engine keys ``replay@1@0@<chunk hash hex>@uint8`` and blocks are sent as
``MemoryFormat.BINARY`` ``uint8`` of shape ``[n, 0, 0, 0]``, what LMCache uses for byte objects.

The server comes from ``KVSTORE_LMCACHE_SERVER``, else ``.venv-integrations/lmcache/bin/`` (what
``make lmcache-venv`` builds: torch and LMCache, about 2 GB), else ``lmcache_server`` on PATH; it
runs with ``LMCACHE_TRACK_USAGE=false``.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import targets

CLIENT_HEADER = struct.Struct("<9i150s")  # lmcache.v1.protocol.ClientMetaMessage
SERVER_HEADER = struct.Struct("<9i")  # lmcache.v1.protocol.ServerMetaMessage
KEY_BYTES_MAX = 150  # lmcache.v1.protocol.MAX_KEY_LENGTH
PUT, GET, EXIST, HEALTH = 1, 2, 3, 5  # ClientCommand
SUCCESS, FAIL = 200, 400  # ServerReturnCode
FMT_BINARY = 4  # MemoryFormat.BINARY
DTYPE_UINT8 = 6  # DTYPE_TO_INT[torch.uint8]
MODEL = "replay"
PIPELINE_MAX = 64  # GETs written before their answers are read (headers stay < 12 KiB)
VALUE_BYTES_MAX = 2**31 - 1  # an int32 length
CALL_SECONDS_MAX = 120.0


class ProtocolError(RuntimeError):
    """The server answered something the protocol does not allow."""


def cache_key(key: str, model: str = MODEL) -> str:
    """The LMCache key string of a replay key (hex): ``model@world_size@worker@hash@dtype``."""
    return f"{model}@1@0@{int(key, 16):x}@uint8"


def encode_request(command: int, key: str, length: int = 0) -> bytes:
    """A client header; for PUT, ``length`` bytes of value follow it on the wire."""
    text = key.encode()
    if len(text) > KEY_BYTES_MAX or any(c in key for c in " \t\r\n"):
        raise ValueError(f"LMCache key of {len(text)} bytes or with blanks: {key!r}")
    if not 0 <= length <= VALUE_BYTES_MAX:
        raise ValueError(f"LMCache value of {length} bytes")
    shape = (length, 0, 0, 0) if command == PUT else (0, 0, 0, 0)
    fmt, dtype = (FMT_BINARY, DTYPE_UINT8) if command == PUT else (1, 2)  # as LMCache's client
    return CLIENT_HEADER.pack(command, length, fmt, dtype, 0, *shape,
                              text.ljust(KEY_BYTES_MAX))


def decode_reply(header: bytes) -> tuple[int, int]:
    """``(code, length)`` of a server header; a GET's ``length`` bytes follow a 200."""
    code, length, *_ = SERVER_HEADER.unpack(header)
    if code not in (SUCCESS, FAIL) or not 0 <= length <= VALUE_BYTES_MAX:
        raise ProtocolError(f"lmcache_server answered code {code}, length {length}")
    if code == FAIL and length:
        raise ProtocolError(f"lmcache_server answered 400 with {length} bytes")
    return code, length


def server_exe() -> str | None:
    explicit = os.environ.get("KVSTORE_LMCACHE_SERVER")
    if explicit:
        return explicit if Path(explicit).exists() else None
    venv = targets.ROOT / ".venv-integrations" / "lmcache" / "bin" / "lmcache_server"
    return str(venv) if venv.exists() else shutil.which("lmcache_server")


class Connection:
    """One blocking socket to ``lmcache_server``; one caller at a time (the pool sees to it)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=CALL_SECONDS_MAX)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _read_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ProtocolError("lmcache_server closed the connection")
            got += k
        return buf

    def _reply(self) -> tuple[int, int]:
        return decode_reply(bytes(self._read_exact(SERVER_HEADER.size)))

    def exists_prefix(self, keys: Sequence[str]) -> int:
        """One EXIST at a time, as LMCache's connector asks, up to the first miss (pipelined,
        the 36-byte answers wait out Nagle on the server against this side's delayed ACK)."""
        for n, k in enumerate(keys):
            self.sock.sendall(encode_request(EXIST, cache_key(k)))
            if self._reply()[0] != SUCCESS:
                return n
        return len(keys)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for i in range(0, len(keys), PIPELINE_MAX):
            part = keys[i:i + PIPELINE_MAX]
            self.sock.sendall(b"".join(encode_request(GET, cache_key(k)) for k in part))
            for _ in part:
                code, length = self._reply()
                out.append(bytes(self._read_exact(length)) if code == SUCCESS else None)
        return out

    def put_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        for k, v in zip(keys, values, strict=True):
            head = encode_request(PUT, cache_key(k), len(v))
            sent = self.sock.sendmsg([head, v])
            if sent < len(head) + len(v):  # a short write: send the rest
                self.sock.sendall((head + v)[sent:])
        self.health()  # the server is in step: every PUT above is stored

    def health(self) -> None:
        self.sock.sendall(encode_request(HEALTH, cache_key("0")))
        if self._reply()[0] != SUCCESS:
            raise ProtocolError("lmcache_server: HEALTH failed")

    def close(self) -> None:
        self.sock.close()


class LMCacheServer:
    name = "lmcache"

    def __init__(self, capacity: str, concurrency: int) -> None:
        exe = server_exe()
        if exe is None:
            raise SystemExit("lmcache target: no lmcache_server (`make lmcache-venv` builds "
                             ".venv-integrations/lmcache; or set KVSTORE_LMCACHE_SERVER)")
        self.tmp = Path(tempfile.mkdtemp(prefix="kvs-replay-lmcache-"))
        self.host, self.port = "127.0.0.1", targets.free_port()
        self.log = self.tmp / "lmcache_server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
        env["LMCACHE_TRACK_USAGE"] = "false"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([exe, self.host, str(self.port), "cpu"], stdout=out,
                                         stderr=subprocess.STDOUT, env=env)
        self.pool: queue.LifoQueue[Connection] = queue.LifoQueue()
        try:
            first = self._first_connection()
            self.pool.put(first)
            for _ in range(max(1, concurrency) - 1):
                self.pool.put(Connection(self.host, self.port))
        except BaseException:
            self.close()
            raise

    def _first_connection(self) -> Connection:
        """Torch is imported before the server listens: poll until HEALTH answers."""
        deadline = time.monotonic() + targets.START_SECONDS_MAX
        while True:
            try:
                conn = Connection(self.host, self.port)
                conn.health()
                return conn
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("lmcache_server did not start: "
                                     f"{self.log.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.1)

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        conn = self.pool.get(timeout=CALL_SECONDS_MAX)
        try:
            yield conn
        except BaseException:
            conn.close()  # out of step after a failure: a fresh one takes its place
            self.pool.put(Connection(self.host, self.port))
            raise
        self.pool.put(conn)

    def lookup(self, keys: Sequence[str]) -> int:
        with self._conn() as c:
            return c.exists_prefix(keys)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._conn() as c:
            return c.get_many(keys)

    def put_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        with self._conn() as c:
            c.put_many(keys, values)

    def close(self) -> None:
        while not self.pool.empty():
            self.pool.get_nowait().close()
        targets._stop(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


targets.TARGETS["lmcache"] = LMCacheServer
