"""The bulk connection's legal transitions, in one table, shared by client and server.

A ``Connection`` tracks the handshake state and the requests in flight. Both ends call
``sent(frame)`` for frames they write and ``received(frame)`` for frames they read; a frame that
is not legal in the current state raises ``ProtocolError`` (the server then answers with a
connection-level ERROR frame and closes).

Handshake::

    START --HELLO(c>s)--> HELLO_SENT --CHALLENGE(s>c)--> CHALLENGED --AUTH(c>s)--> AUTH_SENT
    AUTH_SENT --AUTH_OK(s>c)--> READY
    any handshake state --ERROR(s>c)--> CLOSED (the server failed the handshake)

In READY a request (c>s) opens a request id; BLOCK (s>c) continues a GET_BATCH answer; RESULT,
END or ERROR (s>c) close it. An ERROR with request id 0 closes the connection.

Flags: ``FLAGS`` names the preamble flags each frame type may carry (SHM and NIXL exclude each
other); a frame with any other flag is illegal like a frame out of order. Bits that no version
defines are refused earlier, by ``frames.decode_preamble``. ``OUT_OF_BAND_FLAGS`` are the flags
that move a frame's blocks outside the socket (the client's shm or NIXL region): such a frame
carries no payload, and its header names region slots instead (``kvstore_wire.messages`` reads
it by ``out_of_band(flags)``, never by testing a flag bit of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kvstore_wire import limits
from kvstore_wire.errors import ProtocolError
from kvstore_wire.frames import FrameFlags
from kvstore_wire.frames import FrameType as F


class State(Enum):
    START = "start"
    HELLO_SENT = "hello_sent"
    CHALLENGED = "challenged"
    AUTH_SENT = "auth_sent"
    READY = "ready"
    CLOSED = "closed"


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class Dir(Enum):
    C2S = "c>s"
    S2C = "s>c"


class Req(Enum):
    """What a frame does to the set of requests in flight."""

    NONE = "none"
    OPEN = "open"  # a new request id
    CONTINUE = "continue"  # a partial answer to an open request
    CLOSE = "close"  # the final answer to an open request


REQUESTS = (F.PUT_BATCH, F.GET_BATCH, F.EXISTS_BATCH, F.LOOKUP, F.DELETE_BATCH, F.PREFETCH,
            F.STATS, F.PING, F.SHM_REGISTER, F.NIXL_REGISTER)

S = State
# (state, direction, frame type) -> (next state, effect on requests in flight).
TRANSITIONS: dict[tuple[State, Dir, F], tuple[State, Req]] = {
    (S.START, Dir.C2S, F.HELLO): (S.HELLO_SENT, Req.NONE),
    (S.HELLO_SENT, Dir.S2C, F.CHALLENGE): (S.CHALLENGED, Req.NONE),
    (S.START, Dir.S2C, F.ERROR): (S.CLOSED, Req.NONE),  # e.g. garbage before HELLO, too busy
    (S.HELLO_SENT, Dir.S2C, F.ERROR): (S.CLOSED, Req.NONE),
    (S.CHALLENGED, Dir.S2C, F.ERROR): (S.CLOSED, Req.NONE),
    (S.CHALLENGED, Dir.C2S, F.AUTH): (S.AUTH_SENT, Req.NONE),
    (S.AUTH_SENT, Dir.S2C, F.AUTH_OK): (S.READY, Req.NONE),
    (S.AUTH_SENT, Dir.S2C, F.ERROR): (S.CLOSED, Req.NONE),
    **{(S.READY, Dir.C2S, r): (S.READY, Req.OPEN) for r in REQUESTS},
    (S.READY, Dir.S2C, F.BLOCK): (S.READY, Req.CONTINUE),
    (S.READY, Dir.S2C, F.END): (S.READY, Req.CLOSE),
    (S.READY, Dir.S2C, F.RESULT): (S.READY, Req.CLOSE),
    (S.READY, Dir.S2C, F.ERROR): (S.READY, Req.CLOSE),  # request id 0: -> CLOSED (see below)
}

# Which answers a request may get (checked against the request id's type).
ANSWERS: dict[F, frozenset[F]] = {
    r: frozenset({F.RESULT, F.ERROR}) for r in REQUESTS if r != F.GET_BATCH
}
ANSWERS[F.GET_BATCH] = frozenset({F.BLOCK, F.END, F.ERROR})


_SHM, _NIXL, _OVERWRITE = int(FrameFlags.SHM), int(FrameFlags.NIXL), int(FrameFlags.OVERWRITE)
# frame type -> the flags it may carry (absent: none). OVERWRITE is a PUT's choice to replace a
# stored block: without it a PUT of a present key keeps the stored bytes (write-once blocks).
FLAGS: dict[F, int] = {
    F.PUT_BATCH: _SHM | _NIXL | _OVERWRITE,
    F.GET_BATCH: _SHM | _NIXL,
    F.BLOCK: _SHM | _NIXL,  # the block's bytes landed in the region, not in the payload
}
EXCLUSIVE_FLAGS = _SHM | _NIXL  # at most one of these per frame
# The blocks of a frame with one of these move through the client's registered region, not the
# socket: the frame has no payload; PUT_BATCH and GET_BATCH headers carry region offsets (GET
# also each slot's capacity); a BLOCK header's length is the bytes that landed in the region.
OUT_OF_BAND_FLAGS = _SHM | _NIXL


def out_of_band(flags: int) -> bool:
    """Whether a frame with ``flags`` moves its blocks outside the socket."""
    return bool(flags & OUT_OF_BAND_FLAGS)


def overwrite(flags: int) -> bool:
    """Whether a PUT_BATCH with ``flags`` replaces stored blocks (else write-once)."""
    return bool(flags & _OVERWRITE)


def check_flags(ftype: F, flags: int, payload_length: int | None = None) -> None:
    """ProtocolError unless a frame of ``ftype`` may carry ``flags`` (and, when given, a
    payload of ``payload_length`` bytes with them)."""
    bad = flags & ~FLAGS.get(ftype, 0)
    if bad:
        raise ProtocolError(f"{ftype.name} does not take the {FrameFlags(bad).name} flag")
    if (flags & EXCLUSIVE_FLAGS).bit_count() > 1:
        raise ProtocolError("the SHM and NIXL flags exclude each other")
    if payload_length and out_of_band(flags):
        raise ProtocolError(f"an out-of-band {ftype.name} carries no payload on the socket")


@dataclass(frozen=True, slots=True)
class Transition:
    before: State
    after: State
    effect: Req


class Connection:
    """Handshake state plus requests in flight, checked against ``TRANSITIONS``."""

    def __init__(self, role: Role,
                 inflight_requests_max: int = limits.connection_inflight_requests_max) -> None:
        self.role = role
        self.state = State.START
        self.inflight: dict[int, F] = {}
        self.inflight_requests_max = inflight_requests_max

    def sent(self, ftype: F, request_id: int, flags: int = 0,
             payload_length: int | None = None) -> Transition:
        d = Dir.C2S if self.role is Role.CLIENT else Dir.S2C
        return self._step(d, ftype, request_id, flags, payload_length)

    def received(self, ftype: F, request_id: int, flags: int = 0,
                 payload_length: int | None = None) -> Transition:
        d = Dir.S2C if self.role is Role.CLIENT else Dir.C2S
        return self._step(d, ftype, request_id, flags, payload_length)

    def close(self) -> None:
        self.state = State.CLOSED
        self.inflight.clear()

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def _step(self, d: Dir, ftype: F, rid: int, flags: int,
              payload_length: int | None) -> Transition:
        before = self.state
        row = TRANSITIONS.get((before, d, ftype))
        if row is None:
            raise ProtocolError(f"{ftype.name} ({d.value}) is not legal in state {before.value}")
        check_flags(ftype, flags, payload_length)
        after, effect = row
        if ftype is F.ERROR and rid == 0:
            self.close()
            return Transition(before, State.CLOSED, Req.NONE)
        if effect is Req.NONE and rid != 0:
            raise ProtocolError(f"{ftype.name} must carry request id 0")
        if effect is Req.OPEN:
            if rid == 0:
                raise ProtocolError("request id 0 is reserved")
            if rid in self.inflight:
                raise ProtocolError(f"request id {rid} is already in flight")
            # The server pauses reading at the window, so a peer past it is misbehaving.
            if len(self.inflight) >= self.inflight_requests_max:
                raise ProtocolError(f"more than {self.inflight_requests_max} requests in flight")
            self.inflight[rid] = ftype
        elif effect in (Req.CONTINUE, Req.CLOSE):
            req = self.inflight.get(rid)
            if req is None:
                raise ProtocolError(f"{ftype.name} for unknown request id {rid}")
            if ftype not in ANSWERS[req]:
                raise ProtocolError(f"{ftype.name} does not answer {req.name}")
            if effect is Req.CLOSE:
                del self.inflight[rid]
        self.state = after
        return Transition(before, after, effect)
