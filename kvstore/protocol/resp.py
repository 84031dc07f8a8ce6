"""Sans-IO Redis protocol (RESP2 and RESP3) codec: bytes in, frozen ``Command`` events out;
reply values in, bytes out. No sockets, no asyncio (``kvstore.transport.resp_server`` moves the
bytes).

Receiving works like the bulk decoder, h11 style::

    dec = RespDecoder(alloc)          # alloc(n) -> an object with a writable ``view`` of >= n bytes
    buf = dec.get_buffer()            # recv_into(buf) ...
    dec.buffer_updated(nbytes)
    while (ev := dec.next_event()) is not NEED_DATA:
        ...                           # a Command

A bulk argument of at least ``limits.resp_direct_bytes_min`` bytes is received straight into
memory from ``alloc`` (the transport hands out page-aligned pool buffers that the engine writes
in place): ``get_buffer`` returns the rest of that target while it fills. Shorter arguments are
cut out of the decoder's own receive buffer as ``bytes``.

Bounds (``kvstore.limits``, "Redis protocol"): a header line, an inline command, the argument
count, one bulk argument and all of one command's bulk bytes; tighter ones while ``preauth``. Incomplete input waits for more.
Malformed input, or a bound a peer cannot be allowed past, raises ``ProtocolError`` (the
transport answers ``-ERR Protocol error: ...`` and closes, as Redis does). A value past the block
bound but within ``resp_oversized_skip_bytes_max`` is read and dropped: its command arrives with
``oversized`` set, so the connection answers an error and stays usable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kvstore import limits
from kvstore.errors import ProtocolError

CRLF = b"\r\n"


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Any = _NeedData()


class _Owned:
    """The default allocation: a plain bytearray (tests, and decoders without a pool)."""

    __slots__ = ("view",)

    def __init__(self, n: int) -> None:
        self.view = memoryview(bytearray(n))


@dataclass(frozen=True, slots=True)
class Bulk:
    """A long bulk argument received in place: ``buffer`` is what the allocator returned (the
    transport gives it back when done), its first ``length`` bytes the argument."""

    buffer: Any
    length: int

    @property
    def view(self) -> memoryview:
        return memoryview(self.buffer.view)[: self.length]

    def __bytes__(self) -> bytes:
        return bytes(self.view)


Arg = bytes | Bulk


def arg_bytes(a: Arg) -> bytes:
    return a if isinstance(a, bytes) else bytes(a)


@dataclass(frozen=True, slots=True)
class Command:
    """One command: ``args[0]`` its name as sent. ``oversized``: the length of a bulk argument
    past ``limits.resp_bulk_bytes_max`` that was dropped (its place in ``args`` is ``b""``);
    0 when none was."""

    args: tuple[Arg, ...]
    inline: bool = False
    oversized: int = 0

    @property
    def name(self) -> str:
        return arg_bytes(self.args[0]).decode("latin-1").upper()

    def buffers(self) -> list[Any]:
        """The allocator's buffers this command holds (to give back after use)."""
        return [a.buffer for a in self.args if isinstance(a, Bulk)]


def _parse_int(digits: bytes, what: str) -> int:
    if not digits or len(digits) > 20 or not (digits.isdigit() or (
            digits[:1] == b"-" and digits[1:].isdigit())):
        raise ProtocolError(f"Protocol error: invalid {what}")
    return int(digits)


class RespDecoder:
    """Decodes a client's command stream (arrays of bulk strings, or inline commands)."""

    def __init__(self, alloc: Callable[[int], Any] | None = None, *,
                 recv_buffer_bytes: int = limits.resp_recv_buffer_bytes) -> None:
        self._alloc = alloc or _Owned
        # The peer has not authenticated: short commands only (limits.resp_preauth_*); the
        # connection clears it after AUTH, before it decodes the next command.
        self.preauth = False
        self._buf = bytearray(recv_buffer_bytes)
        self._start = self._end = 0
        self._reset()

    def _reset(self) -> None:
        self._argc: int | None = None  # arguments the current array announced
        self._args: list[Arg] = []
        self._small: int | None = None  # length of a short bulk waiting in the buffer
        self._direct: Bulk | None = None  # a long bulk filling in place
        self._filled = 0
        self._crlf = False  # the CRLF after a long bulk is next
        self._skip = 0  # bytes of a dropped oversized bulk (and its CRLF) still to come
        self._oversized = 0
        self._cmd_bytes = 0

    # -- receiving ---------------------------------------------------------------------------
    @property
    def in_command(self) -> bool:
        """Part of a command has arrived (a slow-body watch applies)."""
        return self._argc is not None or self._end > self._start

    def get_buffer(self) -> memoryview:
        """Where the next received bytes go (never empty)."""
        if self._direct is not None and self._filled < self._direct.length:
            return memoryview(self._direct.buffer.view)[self._filled: self._direct.length]
        if self._end == len(self._buf):
            self._compact()
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct is not None and self._filled < self._direct.length:
            self._filled += nbytes
        else:
            self._end += nbytes

    def receive_data(self, data: bytes) -> list[Command]:
        """Convenience: feed ``data`` and return every command it completes."""
        out: list[Command] = []
        mv = memoryview(data)
        while True:
            while (ev := self.next_event()) is not NEED_DATA:
                out.append(ev)
            if not mv:
                return out
            target = self.get_buffer()
            n = min(len(target), len(mv))
            target[:n] = mv[:n]
            self.buffer_updated(n)
            mv = mv[n:]

    def _compact(self) -> None:
        n = self._end - self._start
        if self._start:
            self._buf[:n] = self._buf[self._start: self._end]
            self._start, self._end = 0, n
        if self._end == len(self._buf):  # the bounds below keep every wait shorter than this
            raise ProtocolError("Protocol error: receive buffer overflow")

    def _line(self, bound: int, what: str) -> bytes | None:
        """The next CRLF-terminated line (without it), or None while it is incomplete."""
        i = self._buf.find(CRLF, self._start, min(self._end, self._start + bound + 2))
        if i < 0:
            if self._end - self._start > bound:
                raise ProtocolError(f"Protocol error: too big {what}")
            return None
        line = bytes(self._buf[self._start: i])
        self._start = i + 2
        return line

    def _inline(self) -> bytes | None:
        i = self._buf.find(b"\n", self._start,
                           min(self._end, self._start + limits.resp_inline_bytes_max + 1))
        if i < 0:
            if self._end - self._start > limits.resp_inline_bytes_max:
                raise ProtocolError("Protocol error: too big inline request")
            return None
        line = bytes(self._buf[self._start: i]).removesuffix(b"\r")
        self._start = i + 1
        return line

    # -- events ------------------------------------------------------------------------------
    def next_event(self) -> Command | Any:
        """The next complete ``Command``, or ``NEED_DATA``; raises ``ProtocolError``."""
        while True:
            avail = self._end - self._start
            if self._direct is not None:
                if self._filled < self._direct.length:
                    return NEED_DATA
                self._args.append(self._direct)
                self._direct, self._crlf = None, True
                continue
            if self._skip:
                k = min(self._skip, avail)
                self._start += k
                self._skip -= k
                if self._skip:
                    return NEED_DATA
                self._args.append(b"")
                if (done := self._maybe_done()) is not None:
                    return done
                continue
            if self._crlf:
                if avail < 2:
                    return NEED_DATA
                if self._buf[self._start: self._start + 2] != CRLF:
                    raise ProtocolError("Protocol error: expected CRLF after a bulk string")
                self._start += 2
                self._crlf = False
                if (done := self._maybe_done()) is not None:
                    return done
                continue
            if self._small is not None:
                n = self._small
                if avail < n + 2:
                    return NEED_DATA
                if self._buf[self._start + n: self._start + n + 2] != CRLF:
                    raise ProtocolError("Protocol error: expected CRLF after a bulk string")
                self._args.append(bytes(self._buf[self._start: self._start + n]))
                self._start += n + 2
                self._small = None
                if (done := self._maybe_done()) is not None:
                    return done
                continue
            if avail == 0:
                return NEED_DATA
            if self._argc is None:
                if self._buf[self._start] != 0x2A:  # not '*': an inline command
                    line = self._inline()
                    if line is None:
                        return NEED_DATA
                    parts = line.split()
                    if parts:
                        return Command(tuple(parts), inline=True)
                    continue
                line = self._line(limits.resp_header_bytes_max, "multibulk count")
                if line is None:
                    return NEED_DATA
                n = _parse_int(line[1:], "multibulk length")
                if n > (limits.resp_preauth_array_len_max if self.preauth
                        else limits.resp_array_len_max):
                    raise ProtocolError("Protocol error: invalid multibulk length")
                if n > 0:  # '*0' and '*-1' are no command (Redis skips them too)
                    self._argc = n
                continue
            line = self._line(limits.resp_header_bytes_max, "bulk count")
            if line is None:
                return NEED_DATA
            if line[:1] != b"$":
                raise ProtocolError(f"Protocol error: expected '$', got {line[:1].decode('latin-1')!r}")
            self._start_bulk(_parse_int(line[1:], "bulk length"))

    def _start_bulk(self, n: int) -> None:
        if n < 0 or n > limits.resp_oversized_skip_bytes_max or (
                self.preauth and n > limits.resp_preauth_bulk_bytes_max):
            raise ProtocolError("Protocol error: invalid bulk length")
        self._cmd_bytes += n
        if self._cmd_bytes > limits.resp_command_bytes_max:
            raise ProtocolError(f"Protocol error: command larger than "
                                f"{limits.resp_command_bytes_max} bytes")
        if n > limits.resp_bulk_bytes_max:
            self._oversized = max(self._oversized, n)
            self._skip = n + 2
        elif n >= limits.resp_direct_bytes_min:
            bulk = Bulk(self._alloc(n), n)
            have = min(n, self._end - self._start)
            bulk.buffer.view[:have] = self._buf[self._start: self._start + have]
            self._start += have
            self._direct, self._filled = bulk, have
        else:
            self._small = n
        if self._start == self._end:
            self._start = self._end = 0

    def _maybe_done(self) -> Command | None:
        if len(self._args) < (self._argc or 0):
            return None
        cmd = Command(tuple(self._args), oversized=self._oversized)
        self._reset()
        return cmd

    def abandon(self) -> list[Any]:
        """The connection is gone: the allocator's buffers still held (to give back)."""
        held = [a.buffer for a in self._args if isinstance(a, Bulk)]
        if self._direct is not None:
            held.append(self._direct.buffer)
        self._reset()
        return held


# -- encoding --------------------------------------------------------------------------------
def _clean(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


def simple(text: str) -> bytes:
    return b"+" + _clean(text) + CRLF


def error(text: str) -> bytes:
    """An error reply; ``text`` starts with its code word (``ERR``, ``WRONGPASS``, ...)."""
    return b"-" + _clean(text) + CRLF


def integer(n: int) -> bytes:
    return b":%d\r\n" % n


def bulk_header(n: int) -> bytes:
    return b"$%d\r\n" % n


def bulk(data: bytes) -> bytes:
    return bulk_header(len(data)) + data + CRLF


def null(proto: int) -> bytes:
    return b"_\r\n" if proto >= 3 else b"$-1\r\n"


def array_header(n: int) -> bytes:
    return b"*%d\r\n" % n


def encode(value: Any, proto: int = 2) -> bytes:
    """A reply value: None, bool, int, str/bytes (bulk), list/tuple (array), dict (a RESP3
    map; a flat array in RESP2)."""
    if value is None:
        return null(proto)
    if isinstance(value, bool):
        return (b"#t\r\n" if value else b"#f\r\n") if proto >= 3 else integer(int(value))
    if isinstance(value, int):
        return integer(value)
    if isinstance(value, str):
        return bulk(value.encode("utf-8"))
    if isinstance(value, bytes | bytearray | memoryview):
        return bulk(bytes(value))
    if isinstance(value, Mapping):
        head = b"%%%d\r\n" % len(value) if proto >= 3 else array_header(2 * len(value))
        return head + b"".join(encode(k, proto) + encode(v, proto) for k, v in value.items())
    if isinstance(value, list | tuple):
        return array_header(len(value)) + b"".join(encode(v, proto) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__} as RESP")


def encode_command(args: Iterable[bytes | str]) -> bytes:
    """A command as a client sends it (an array of bulk strings)."""
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return array_header(len(parts)) + b"".join(bulk(p) for p in parts)
