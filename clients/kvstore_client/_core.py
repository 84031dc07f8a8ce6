"""The client side of the bulk protocol as I/O-free generators.

Every operation is a generator that yields I/O requests and gets results back:

- ``(SEND, [buffers])``: write all buffers in order (vectored; nothing is joined), result None;
- ``(RECV, memoryview)``: ``recv_into`` that view once, result = bytes received (0 = EOF).

``kvstore_client.channel`` runs them on a ``Channel`` (blocking) or an ``AsyncChannel``
(asyncio): the ops never touch a socket. Payloads of GET land straight in the caller's memory: the decoder hands out slices of
the caller's buffer as receive targets.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

from kvstore_wire import messages as msg
from kvstore_wire import results as res
from kvstore_wire.checksum import block_checksum
from kvstore_wire.decoder import NEED_DATA, Decoder, Frame, PayloadChunk, PayloadEnd
from kvstore_wire.errors import (
    ChecksumMismatch,
    InvalidArgument,
    KVStoreError,
    NotImplementedFeature,
    ProtocolError,
)
from kvstore_wire.frames import FrameFlags, FrameType, encode_frame
from kvstore_wire.state import Connection, Role

SEND, RECV = 0, 1
IoReq = tuple[int, Any]
Op = Generator[IoReq, Any, Any]


class ConnectionClosed(ConnectionError):
    """The server closed the connection."""


checksum = block_checksum  # the one block checksum (kvstore_wire.checksum)


class Message(Protocol):
    """A request or handshake message of ``kvstore_wire.messages``."""

    def to_header(self) -> dict[str, Any]: ...


def as_bytes_view(buf: Any, *, writable: bool = False) -> memoryview:
    """A flat byte view of anything with the buffer protocol (bytes, bytearray, numpy arrays,
    ``tensor.numpy()`` of a CPU torch tensor). Must be C-contiguous."""
    mv = memoryview(buf)
    if not mv.c_contiguous:
        raise InvalidArgument("buffer must be C-contiguous")
    if writable and mv.readonly:
        raise InvalidArgument("buffer must be writable")
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


class Core:
    """Protocol state of one connection: decoder, connection table, request ids, window."""

    def __init__(self) -> None:
        self.dec = Decoder()
        self.conn = Connection(Role.CLIENT)
        self.window: msg.Window | None = None
        self._rid = 0
        self.tenant = ""
        self.salt = ""  # the tenant's salt token, from AUTH_OK ("": none named)

    @property
    def usable(self) -> bool:
        return self.conn.ready and not self.conn.inflight

    def next_rid(self) -> int:
        self._rid += 1
        return self._rid

    # -- primitives ----------------------------------------------------------------------
    def _event(self) -> Op:
        while True:
            ev = self.dec.next_event()
            if ev is not NEED_DATA:
                return ev
            n = yield (RECV, self.dec.get_buffer())
            if not n:
                raise ConnectionClosed("server closed the connection")
            self.dec.buffer_updated(n)

    def frame(self) -> Op:
        ev = yield from self._event()
        if not isinstance(ev, Frame):
            raise ProtocolError(f"expected a frame, got {type(ev).__name__}")
        self.conn.received(ev.ftype, ev.request_id, ev.flags, ev.payload_length)
        if ev.ftype is FrameType.ERROR and ev.request_id == 0:
            raise res.ErrorInfo.from_header(ev.header).exception()
        return ev

    def send(self, ftype: FrameType, header: Message | dict[str, Any] | None,
             payload: Sequence[Any] = (), flags: int = 0, rid: int | None = None) -> Op:
        rid = self.next_rid() if rid is None else rid
        n = sum(len(p) for p in payload)
        if header is not None and not isinstance(header, dict):
            header = header.to_header()
        head = encode_frame(ftype, rid, header, n, flags)
        self.conn.sent(ftype, rid, flags, n)
        yield (SEND, [head, *payload])
        return rid

    def payload_into(self, target: memoryview | None) -> Op:
        """Receive the current frame's payload into ``target`` (None: discard it)."""
        if not self.dec.in_payload:  # an empty payload has no PayloadEnd
            return
        if target is None:
            self.dec.skip_payload()
        elif len(target):
            self.dec.set_payload_targets(target)
        while True:
            ev = yield from self._event()
            if isinstance(ev, PayloadEnd):
                return
            if not isinstance(ev, PayloadChunk):
                raise ProtocolError("unexpected event inside a payload")

    def put_flags(self, overwrite: bool) -> int:
        """Frame flags of a PUT_BATCH. OVERWRITE only where the server said in AUTH_OK that it
        knows the flag: an older server would close the connection on the unknown bit, so the
        call fails here, before anything is sent (never a silent write-once answer)."""
        if not overwrite:
            return 0
        assert self.window is not None
        if not self.window.flags & FrameFlags.OVERWRITE:
            raise NotImplementedFeature("this server keeps stored blocks (write-once) and does "
                                        "not support overwrite=True; upgrade it")
        return int(FrameFlags.OVERWRITE)

    # -- handshake -----------------------------------------------------------------------
    def handshake(self, access_key: str, secret_key: str, namespace: str, create: bool) -> Op:
        yield from self.send(FrameType.HELLO, msg.Hello(access_key, namespace, create), rid=0)
        f = yield from self.frame()
        nonce = msg.Challenge.from_header(f.header).nonce
        sig = msg.sign(secret_key, nonce, access_key, namespace)
        yield from self.send(FrameType.AUTH, msg.Auth(sig), rid=0)
        f = yield from self.frame()
        ok = msg.AuthOk.from_header(f.header)
        self.window, self.tenant, self.salt = ok.window, ok.tenant, ok.salt

    def salt_op(self) -> Op:
        """The salt token this connection's AUTH_OK named; no I/O (an ``Op`` like the others,
        so the pooled clients borrow, connect and retry for it as for any call)."""
        if False:  # pragma: no cover - makes this a generator
            yield (RECV, memoryview(b""))
        return self.salt

    # -- requests ------------------------------------------------------------------------
    def simple(self, ftype: FrameType, header: Message | dict[str, Any],
               flags: int = 0) -> Op:
        """One request answered by one RESULT (or ERROR); the RESULT's raw header."""
        rid = yield from self.send(ftype, header, flags=flags)
        f = yield from self.frame()
        if f.request_id != rid:
            raise ProtocolError("answer to another request")
        if f.ftype is FrameType.ERROR:
            raise res.ErrorInfo.from_header(f.header).exception()
        return f.header

    def request(self, ftype: FrameType, message: Message, keys: int | None = None,
                flags: int = 0) -> Op:
        """One request answered by one RESULT, parsed (``kvstore_wire.results.RESULTS``)."""
        h = yield from self.simple(ftype, message, flags)
        return res.parse_result(ftype, h, keys)

    def pipeline(self, requests: Sequence[tuple[FrameType, Message | dict[str, Any],
                                                Sequence[Any], int]],
                 on_frame: Callable[[int, Frame], Op | None]) -> Op:
        """Send ``requests`` keeping at most the server's window in flight; feed every answer
        frame to ``on_frame(request index, frame)`` (which may return a generator to consume a
        payload). Returns the first error after all answers are consumed."""
        assert self.window is not None
        win_reqs, win_bytes = self.window.inflight_requests_max, self.window.inflight_bytes_max
        pending: dict[int, tuple[int, int]] = {}  # rid -> (request index, payload bytes)
        inflight_bytes, nxt, first_err = 0, 0, None
        while nxt < len(requests) or pending:
            while nxt < len(requests) and len(pending) < win_reqs:
                ftype, header, payload, flags = requests[nxt]
                size = sum(len(p) for p in payload)
                if pending and inflight_bytes + size > win_bytes:
                    break
                rid = yield from self.send(ftype, header, payload, flags)
                pending[rid] = (nxt, size)
                inflight_bytes += size
                nxt += 1
            f = yield from self.frame()
            if f.request_id not in pending:
                raise ProtocolError("answer to an unknown request")
            idx, size = pending[f.request_id]
            if f.ftype is FrameType.ERROR:
                first_err = first_err or res.ErrorInfo.from_header(f.header).exception()
            else:
                try:
                    sub = on_frame(idx, f)
                    if sub is not None:
                        yield from sub
                except ProtocolError:
                    raise
                except KVStoreError as exc:  # the answer is consumed; keep the stream in sync
                    first_err = first_err or exc
            if f.ftype in (FrameType.RESULT, FrameType.END, FrameType.ERROR):
                del pending[f.request_id]
                inflight_bytes -= size
        return first_err


def receive_block(core: Core, f: Frame, target: Any | None, results: list[Any], idx: int,
                  verify: bool = True) -> Op:
    """Consume one BLOCK frame into ``target`` (a writable buffer, or None to allocate one);
    verify its checksum; ``results[idx]`` becomes the length (or the new bytearray)."""
    b = res.BlockHeader.from_header(f.header, f.payload_length, f.flags)
    if target is None:
        out = bytearray(b.length)
        view = memoryview(out)
    else:
        try:
            view = as_bytes_view(target, writable=True)
        except InvalidArgument:
            yield from core.payload_into(None)  # keep the stream in sync, then report
            raise
        if b.length > len(view):
            yield from core.payload_into(None)
            raise InvalidArgument(f"block {b.key} has {b.length} bytes; buffer holds {len(view)}")
    view = view[: b.length]
    yield from core.payload_into(view)
    if verify and checksum(view) != b.checksum:
        raise ChecksumMismatch(f"block {b.key} failed its checksum in transit")
    results[idx] = out if target is None else b.length
