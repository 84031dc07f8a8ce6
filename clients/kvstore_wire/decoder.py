"""Sans-IO frame decoder: bytes in, events out, payloads straight into caller memory.

Two ways to feed it:

- ``receive_data(data)`` copies bytes in (simple, for tests and small frames);
- ``get_buffer()`` / ``buffer_updated(n)`` hand out the memory the next bytes should land in,
  which is what ``sock.recv_into`` and asyncio's ``BufferedProtocol`` want. While a payload
  target is set (``set_payload_targets``), ``get_buffer()`` returns the unfilled part of the
  caller's buffer, so the kernel copies the payload straight into it (zero-copy receive).

Events (``next_event()``):

- ``Frame``: a preamble and header were parsed. If ``payload_length`` is 0 the frame is
  complete. Otherwise its payload follows: the caller sets targets for it (any writable buffers
  whose lengths sum to at most the payload), or calls ``skip_payload()``, or reads it as
  ``PayloadChunk`` events (bytes copied from the internal buffer).
- ``PayloadChunk``: payload bytes that no target took.
- ``PayloadEnd``: the frame's payload is complete (all targets filled).
- ``NEED_DATA``: feed more bytes.

Anything illegal raises ``ProtocolError``; the decoder is then unusable (the connection closes).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from kvstore_wire import limits
from kvstore_wire.errors import ProtocolError
from kvstore_wire.frames import (
    PREAMBLE_BYTES,
    FrameType,
    Preamble,
    decode_header,
    decode_preamble,
)

# Internal receive buffer: small frames and preambles land here. Kept small so that the part
# of a large payload that arrives together with its frame header (and is copied once into the
# caller's target) stays small.
RECV_BUFFER_BYTES = 64 * limits.KiB


@dataclass(frozen=True, slots=True)
class Frame:
    ftype: FrameType
    request_id: int
    flags: int
    header: dict[str, Any]
    payload_length: int


@dataclass(frozen=True, slots=True)
class PayloadChunk:
    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PayloadEnd:
    request_id: int


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
Event = Frame | PayloadChunk | PayloadEnd | _NeedData

_PREAMBLE, _HEADER, _PAYLOAD, _BROKEN = range(4)


class Decoder:
    def __init__(self, buffer_bytes: int = RECV_BUFFER_BYTES) -> None:
        self._default_size = max(buffer_bytes, PREAMBLE_BYTES)
        self._buf = bytearray(self._default_size)
        self._mv = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._state = _PREAMBLE
        self._pre: Preamble | None = None
        self._payload_left = 0
        self._targets: deque[memoryview] = deque()
        self._target_off = 0
        self._skip = False
        self._gave_target = False
        self._pending: deque[memoryview] = deque()

    # -- feeding -------------------------------------------------------------------------
    @property
    def in_payload(self) -> bool:
        return self._state == _PAYLOAD

    @property
    def payload_left(self) -> int:
        return self._payload_left

    def next_payload_target(self) -> memoryview | None:
        """The unfilled part of the current payload target, or None when bytes must go to
        the internal buffer (use ``get_buffer`` to get either)."""
        if self._state == _PAYLOAD and self._targets and self._start == self._end:
            return self._targets[0][self._target_off:]
        return None

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes must be written; then call ``buffer_updated(n)``."""
        if self._state == _BROKEN:
            raise ProtocolError("decoder is closed after a protocol error")
        target = self.next_payload_target()
        if target is not None:
            self._gave_target = True
            return target
        self._gave_target = False
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf) or self._start > len(self._buf) // 2:
            n = self._end - self._start
            self._mv[:n] = self._mv[self._start:self._end]
            self._start, self._end = 0, n
        if self._end == len(self._buf):
            raise ProtocolError("receive buffer full: call next_event() before reading more")
        return self._mv[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError("negative byte count")
        if self._gave_target:
            self._gave_target = False
            self._advance_target(nbytes)
        else:
            if self._end + nbytes > len(self._buf):
                raise ValueError("more bytes than the buffer handed out")
            self._end += nbytes

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` (h11 style: the caller bounds what it feeds); it moves into the
        internal buffer or the payload targets as ``next_event()`` consumes it."""
        src = memoryview(data).cast("B")
        if len(src):
            self._pending.append(src)

    def _pull(self) -> int:
        moved = 0
        while self._pending:
            src = self._pending[0]
            try:
                dst = self.get_buffer()
            except ProtocolError:
                if self._state == _BROKEN:
                    raise
                break  # internal buffer full: the parser must consume first
            n = min(len(dst), len(src))
            dst[:n] = src[:n]
            self.buffer_updated(n)
            moved += n
            if n == len(src):
                self._pending.popleft()
            else:
                self._pending[0] = src[n:]
        return moved

    def _grow(self, want: int) -> None:
        cap = PREAMBLE_BYTES + limits.frame_header_bytes_max + self._default_size
        size = min(max(want, len(self._buf) * 2), max(cap, len(self._buf)))
        if size <= len(self._buf):
            return
        new = bytearray(size)
        n = self._end - self._start
        new[:n] = self._mv[self._start:self._end]
        self._mv.release()
        self._buf = new
        self._mv = memoryview(new)
        self._start, self._end = 0, n

    def _advance_target(self, n: int) -> None:
        if not self._targets:
            raise ValueError("no payload target")
        cur = self._targets[0]
        if n > len(cur) - self._target_off:
            raise ValueError("more bytes than the target handed out")
        self._target_off += n
        self._payload_left -= n
        if self._target_off == len(cur):
            self._targets.popleft()
            self._target_off = 0

    # -- payload control -----------------------------------------------------------------
    def set_payload_targets(self, *views: memoryview | bytearray) -> None:
        """Give buffers the current frame's payload must land in, in order. Their total length
        must not exceed the payload still to come. Bytes already buffered are copied in."""
        if self._state != _PAYLOAD:
            raise ValueError("no payload in progress")
        mvs = [memoryview(v).cast("B") for v in views]
        if any(m.readonly for m in mvs):
            raise ValueError("payload target must be writable")
        queued = sum(len(t) for t in self._targets) - self._target_off
        if queued + sum(len(m) for m in mvs) > self._payload_left:
            raise ValueError("payload targets exceed the payload")
        self._targets.extend(m for m in mvs if len(m))
        self._drain_buffered_into_targets()

    def skip_payload(self) -> None:
        """Discard the rest of the current payload (e.g. after rejecting the request)."""
        if self._state != _PAYLOAD:
            raise ValueError("no payload in progress")
        self._skip = True
        self._targets.clear()
        self._target_off = 0

    def _drain_buffered_into_targets(self) -> None:
        while self._targets and self._start < self._end:
            cur = self._targets[0]
            room = len(cur) - self._target_off
            n = min(room, self._end - self._start, self._payload_left)
            cur[self._target_off:self._target_off + n] = self._mv[self._start:self._start + n]
            self._start += n
            self._advance_target(n)

    # -- events --------------------------------------------------------------------------
    def next_event(self) -> Event:
        try:
            return self._next_event()
        except ProtocolError:
            self._state = _BROKEN
            raise

    def _next_event(self) -> Event:
        while True:
            ev = self._parse()
            if ev is not NEED_DATA or not self._pending or not self._pull():
                return ev

    def _parse(self) -> Event:
        if self._state == _BROKEN:
            raise ProtocolError("decoder is closed after a protocol error")
        avail = self._end - self._start
        if self._state == _PREAMBLE:
            if avail < PREAMBLE_BYTES:
                return NEED_DATA
            self._pre = decode_preamble(self._mv[self._start:self._start + PREAMBLE_BYTES])
            self._start += PREAMBLE_BYTES
            self._state = _HEADER
            avail -= PREAMBLE_BYTES
        pre = self._pre
        assert pre is not None
        if self._state == _HEADER:
            if avail < pre.header_length:
                if len(self._buf) - self._start < pre.header_length:
                    self._grow(pre.header_length + self._default_size)
                return NEED_DATA
            header = decode_header(self._mv[self._start:self._start + pre.header_length])
            self._start += pre.header_length
            if pre.payload_length:
                self._state = _PAYLOAD
                self._payload_left = pre.payload_length
                self._skip = False
            else:
                self._state = _PREAMBLE
            return Frame(pre.ftype, pre.request_id, pre.flags, header, pre.payload_length)
        # _PAYLOAD
        if self._payload_left == 0:
            self._state = _PREAMBLE
            self._targets.clear()
            self._target_off = 0
            return PayloadEnd(pre.request_id)
        if self._targets:
            self._drain_buffered_into_targets()
            return NEED_DATA if self._payload_left else self._parse()
        if avail == 0:
            return NEED_DATA
        n = min(avail, self._payload_left)
        chunk = self._mv[self._start:self._start + n]
        self._start += n
        self._payload_left -= n
        if self._skip:
            return self._parse()
        return PayloadChunk(pre.request_id, bytes(chunk))
