"""``--kv-events``: the KV-event publisher (ZMQ PUB, bound at the endpoint; vLLM's format,
``kvstore.protocol.kv_events``).

The engine calls ``submit`` under its lock (``Engine.observe_blocks``) whenever a block becomes
present or stops being present; ``submit`` only queues, in a bounded queue
(``limits.kv_events_queue_max``): when it is full the event is dropped and counted in
``dropped``, so a slow subscriber never slows a put. One thread owns the socket: it takes up to
``limits.kv_events_batch_max`` events at a time, groups them by namespace (the topic), merges
consecutive removals, and sends one batch per namespace with that topic's next ``seq``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from kvstore import limits
from kvstore.errors import InvalidArgument
from kvstore.protocol import kv_events as ev

log = logging.getLogger("kvstore.kv_events")

_Item = tuple[bool, str, bytes, bytes]


class KvEventPublisher:
    def __init__(self, endpoint: str, digest_of: Callable[[bytes, bytes], bytes], *,
                 queue_max: int = limits.kv_events_queue_max,
                 batch_max: int = limits.kv_events_batch_max) -> None:
        self.endpoint = endpoint
        self._digest_of = digest_of  # (namespace, key) -> the engine's index digest
        self._q: queue.Queue[_Item] = queue.Queue(maxsize=queue_max)
        self._batch_max = batch_max
        self._seq: dict[str, int] = {}
        self._stop = threading.Event()
        self._deadline = 0.0  # set by close(): publish the queue until then
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._thread: threading.Thread | None = None
        self.dropped = 0  # events the full queue refused
        self.published = 0  # events sent
        self.bound = ""  # the endpoint as bound (a tcp port 0 resolved)

    def start(self) -> KvEventPublisher:
        """Bind the endpoint (on the publisher's thread, which owns the socket); raises
        ``InvalidArgument`` when it cannot be bound."""
        self._thread = threading.Thread(target=self._run, name="kvstore-kv-events", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None:
            raise InvalidArgument(f"--kv-events {self.endpoint}: {self._error}")
        return self

    def submit(self, present: bool, ns: str, digest: bytes, meta: bytes) -> None:
        """The engine's observer: queue one event, or drop and count it."""
        try:
            self._q.put_nowait((present, ns, digest, meta))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = limits.kv_events_close_seconds) -> None:
        """Publish what is queued for up to ``timeout`` seconds, then close the socket."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
        if self.dropped:
            log.warning("kv events: %d events dropped (queue full)", self.dropped)

    # -- the publisher thread ----------------------------------------------------------------
    def _run(self) -> None:
        import zmq

        ctx = zmq.Context()
        sock: Any = None
        try:
            sock = ctx.socket(zmq.PUB)
            sock.setsockopt(zmq.SNDHWM, limits.kv_events_hwm_messages)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(self.endpoint)
            self.bound = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            if sock is not None:
                sock.close(0)
            ctx.term()
            return
        self._ready.set()
        try:
            while True:
                if self._stop.is_set() and (self._q.empty()
                                            or time.monotonic() > self._deadline):
                    break
                try:
                    items = [self._q.get(timeout=0.05)]
                except queue.Empty:
                    continue
                while len(items) < self._batch_max:
                    try:
                        items.append(self._q.get_nowait())
                    except queue.Empty:
                        break
                self._send(sock, items)
        finally:
            sock.close(0)
            ctx.term()

    def _send(self, sock: Any, items: list[_Item]) -> None:
        by_ns: dict[str, list[dict[str, Any]]] = {}
        for present, ns, digest, meta in items:
            events = by_ns.setdefault(ns, [])
            h = ev.block_hash(digest)
            if present:
                tokens, parent_key = ev.tokens_of(meta)
                parent = None if parent_key is None else ev.block_hash(
                    self._digest_of(ns.encode(), parent_key.encode("utf-8", "surrogatepass")))
                events.append(ev.stored(h, tokens, parent))
            elif events and events[-1]["type"] == "BlockRemoved":
                events[-1]["block_hashes"].append(h)
            else:
                events.append(ev.removed([h]))
        now = time.time()
        for ns, events in by_ns.items():
            seq = self._seq.get(ns, 0)
            self._seq[ns] = seq + 1
            try:
                sock.send_multipart(ev.frames(ns, seq, ev.encode_batch(now, events)))
                self.published += len(events)
            except Exception:  # noqa: BLE001 - a send error must not stop the publisher
                log.exception("kv events: send failed")
