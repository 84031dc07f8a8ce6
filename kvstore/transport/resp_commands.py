"""The Redis listener's commands: one table, each entry a handler over ``BlockService``.

Keys: ``namespace/key`` names a block of that namespace when the part before the first ``/``
is a valid namespace name; any other key (LMCache's bare ``model@rank@group@hash``) is a key of
the listener's default namespace (``--resp-namespace``). A write to a namespace that does not
exist creates it (the policy decides, as for S3's CreateBucket); a read of one is a miss.

Values are blocks: the engine checksums them on write and verifies them on read, and the block
bound (``limits.block_bytes_max``) is the largest value. Every call names the connection's
tenant, so the one policy decides; in a pod, blocks another node owns are read and written
there (``BlockService.open_any`` / ``put_remote``, as for S3).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.auth import Op, Tenant
from kvstore.engine.device import StagedPayload, align_up
from kvstore.errors import EntityTooLarge, InvalidNamespace, NamespaceNotFound
from kvstore.keys import validate_key, validate_namespace
from kvstore.protocol import resp
from kvstore.protocol.resp import Arg, Bulk, Command, arg_bytes
from kvstore.transport.resp_conn import RespReplyError, Turn
from kvstore.transport.resp_session import (
    NOAUTH,
    cmd_auth,
    cmd_client,
    cmd_command,
    cmd_echo,
    cmd_hello,
    cmd_info,
    cmd_ping,
    cmd_quit,
    cmd_select,
)

if TYPE_CHECKING:
    from kvstore.service import BlockLease
    from kvstore.service.forward import NodeInfo
    from kvstore.transport.resp_conn import RespProtocol

Handler = Callable[["RespProtocol", list[Arg], Turn], Awaitable[None]]


def resolve(conn: RespProtocol, raw: Arg) -> tuple[str, str]:
    """(namespace, key) of a Redis key (see the module's docstring)."""
    try:
        text = arg_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise RespReplyError("ERR InvalidKey: keys must be UTF-8") from None
    ns, sep, key = text.partition("/")
    if sep and key:
        try:
            validate_namespace(ns)
        except InvalidNamespace:
            ns, key = conn.ctx.namespace, text
    else:
        ns, key = conn.ctx.namespace, text
    validate_key(key)
    return ns, key


def _tenant(conn: RespProtocol) -> Tenant:
    assert conn.tenant is not None  # execute() checked
    return conn.tenant


def _readable(conn: RespProtocol, ns: str) -> bool:
    """Authorize a read; False for a namespace that does not exist (every key a miss)."""
    try:
        conn.blocks.authorize(_tenant(conn), ns, Op.READ)
    except NamespaceNotFound:
        return False
    return True


async def _writable(conn: RespProtocol, ns: str) -> None:
    """Authorize a write, creating the namespace when it does not exist."""
    try:
        conn.blocks.authorize(_tenant(conn), ns, Op.WRITE)
    except NamespaceNotFound:
        await conn.blocks.create_namespace(_tenant(conn), ns)


def _payload(value: Arg) -> object:
    """A value as the engine takes it: a long one in place (its aligned pool buffer)."""
    if isinstance(value, Bulk):
        return StagedPayload(value.buffer.view[: align_up(value.length)], value.length)
    return value


async def _put(conn: RespProtocol, ns: str, items: list[tuple[str, Arg]],
               overwrite: bool) -> list[bool]:
    """Store ``items`` in one namespace: the pod's other owners' blocks there, the rest here in
    one engine call. One created flag per item."""
    await _writable(conn, ns)
    blocks, tenant = conn.blocks, _tenant(conn)
    created: list[bool | None] = [None] * len(items)
    local: list[int] = []
    remote: list[tuple[int, list[NodeInfo]]] = []
    for i, (k, _v) in enumerate(items):
        here, others = blocks.pod_targets(ns, k)  # (True, []) on a node alone
        if here:
            local.append(i)
        if others:
            remote.append((i, others))

    async def to_replicas(i: int, nodes: list[NodeInfo]) -> None:
        key, value = items[i]
        data = value.view if isinstance(value, Bulk) else value
        made = await blocks.put_replicas(tenant, ns, key, data, nodes, overwrite=overwrite)
        if i not in local_set:  # a replica that did not answer skipped the write (counted):
            created[i] = True if made is None else made  # to the client, stored then evicted

    local_set = set(local)
    if remote:
        await asyncio.gather(*(to_replicas(i, nodes) for i, nodes in remote))
    if local:
        made = await blocks.put_many(tenant, ns, [(items[i][0], _payload(items[i][1]))
                                                  for i in local], overwrite=overwrite)
        for i, c in zip(local, made, strict=True):
            created[i] = c
    return [bool(c) for c in created]


def _by_namespace(conn: RespProtocol, raws: list[Arg]) -> dict[str, list[tuple[int, str]]]:
    groups: dict[str, list[tuple[int, str]]] = {}
    for i, raw in enumerate(raws):
        ns, key = resolve(conn, raw)
        groups.setdefault(ns, []).append((i, key))
    return groups


def _bulk(turn: Turn, conn: RespProtocol, lease: BlockLease | None) -> int:
    """Write one GET answer (header, the block's own view, CRLF); the bytes written."""
    if lease is None:
        turn.write(resp.null(conn.proto))
        return 0
    bv = lease.view
    assert bv is not None
    try:
        turn.write(resp.bulk_header(bv.meta.length), bv.payload, resp.CRLF)
    finally:
        conn.hold(lease)
    return int(bv.meta.length)


# -- data commands -----------------------------------------------------------------------------
async def cmd_get(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    started = time.perf_counter()
    ns, key = resolve(conn, args[0])
    lease = await conn.blocks.open_any(_tenant(conn), ns, key) if _readable(conn, ns) else None
    try:
        await turn.wait()
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    n = _bulk(turn, conn, lease)
    conn.blocks.observe("resp_get", "resp", n, time.perf_counter() - started)


async def cmd_mget(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    started = time.perf_counter()
    if len(args) > limits.batch_keys_max:
        raise RespReplyError(f"ERR LimitExceeded: more than {limits.batch_keys_max} keys")
    keys = [resolve(conn, a) for a in args]
    readable = {ns: _readable(conn, ns) for ns in {ns for ns, _ in keys}}
    tenant = _tenant(conn)
    ahead: list[asyncio.Future[BlockLease | None] | None] = []
    nbytes = 0

    def start(i: int) -> None:
        ns, key = keys[i]
        ahead.append(asyncio.ensure_future(conn.blocks.open_any(tenant, ns, key))
                     if readable[ns] else None)

    try:
        for i in range(min(limits.resp_read_ahead_blocks, len(keys))):
            start(i)
        await turn.wait()
        turn.write(resp.array_header(len(keys)))
        for i in range(len(keys)):
            if conn.closed:
                break
            fut = ahead[i]
            ahead[i] = None
            if i + limits.resp_read_ahead_blocks < len(keys):
                start(i + limits.resp_read_ahead_blocks)
            lease = None if fut is None else await fut
            await conn.writable()
            nbytes += _bulk(turn, conn, lease)
    finally:  # never abandon a read in flight: its block stays referenced until released
        for fut in ahead:
            if fut is not None:
                with contextlib.suppress(Exception):
                    opened = await fut
                    if opened is not None:
                        opened.release()
    conn.blocks.observe("resp_mget", "resp", nbytes, time.perf_counter() - started)


async def cmd_set(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    nx = False
    for opt in args[2:]:
        word = arg_bytes(opt).upper()
        if word == b"NX":
            nx = True
        else:
            raise RespReplyError("ERR syntax error (kvstore's SET takes NX only)")
    ns, key = resolve(conn, args[0])
    started = time.perf_counter()
    (created,) = await _put(conn, ns, [(key, args[1])], overwrite=not nx)
    await turn.wait()
    turn.write(resp.null(conn.proto) if nx and not created else resp.simple("OK"))
    conn.blocks.observe("resp_set", "resp", len(_view(args[1])), time.perf_counter() - started)


def _view(a: Arg) -> bytes | memoryview:
    return a.view if isinstance(a, Bulk) else a


async def cmd_mset(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    if len(args) % 2:
        raise RespReplyError("ERR wrong number of arguments for 'mset' command")
    if len(args) // 2 > limits.batch_keys_max:
        raise RespReplyError(f"ERR LimitExceeded: more than {limits.batch_keys_max} keys")
    started = time.perf_counter()
    groups: dict[str, list[tuple[str, Arg]]] = {}
    last: dict[tuple[str, str], int] = {}
    for i in range(0, len(args), 2):  # the last value of a key repeated wins, as on Redis
        ns, key = resolve(conn, args[i])
        last[(ns, key)] = i + 1
    for (ns, key), vi in last.items():
        groups.setdefault(ns, []).append((key, args[vi]))
    for ns, items in groups.items():
        await _put(conn, ns, items, overwrite=True)
    await turn.wait()
    turn.write(resp.simple("OK"))
    conn.blocks.observe("resp_mset", "resp", sum(len(_view(args[i])) for i in last.values()),
                        time.perf_counter() - started)


async def cmd_exists(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    n = 0
    for ns, pairs in _by_namespace(conn, args).items():
        if _readable(conn, ns):
            found = await conn.blocks.exists_pod(_tenant(conn), ns, [k for _, k in pairs])
            n += sum(found)  # a key named twice counts twice, as on Redis
    await turn.wait()
    turn.write(resp.integer(n))


async def cmd_del(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    n = 0
    for ns, pairs in _by_namespace(conn, args).items():
        keys = list(dict.fromkeys(k for _, k in pairs))
        with contextlib.suppress(NamespaceNotFound):
            n += await conn.blocks.delete_many(_tenant(conn), ns, keys, pod=True)
    await turn.wait()
    turn.write(resp.integer(n))


# name -> (handler, fewest arguments, most arguments (-1: any), allowed before AUTH)
TABLE: dict[str, tuple[Handler, int, int, bool]] = {
    "GET": (cmd_get, 1, 1, False),
    "SET": (cmd_set, 2, -1, False),
    "MGET": (cmd_mget, 1, -1, False),
    "MSET": (cmd_mset, 2, -1, False),
    "EXISTS": (cmd_exists, 1, -1, False),
    "DEL": (cmd_del, 1, -1, False),
    "UNLINK": (cmd_del, 1, -1, False),
    "AUTH": (cmd_auth, 1, 2, True),
    "HELLO": (cmd_hello, 0, 6, True),
    "PING": (cmd_ping, 0, 1, False),
    "ECHO": (cmd_echo, 1, 1, False),
    "SELECT": (cmd_select, 1, 1, False),
    "QUIT": (cmd_quit, 0, -1, True),
    "CLIENT": (cmd_client, 1, -1, False),
    "COMMAND": (cmd_command, 0, -1, False),
    "INFO": (cmd_info, 0, -1, False),
}


async def execute(conn: RespProtocol, cmd: Command, turn: Turn) -> None:
    """Run one command (the connection's task for it) and write its answer in its turn."""
    name = cmd.name
    entry = TABLE.get(name)
    args = list(cmd.args[1:])
    if entry is None:
        shown = " ".join(f"'{arg_bytes(a)[:64].decode('latin-1')}'" for a in args[:4])
        raise RespReplyError(f"ERR unknown command '{arg_bytes(cmd.args[0])[:64].decode('latin-1')}'"
                             f", with args beginning with: {shown}")
    handler, lo, hi, before_auth = entry
    if conn.tenant is None and not before_auth:
        raise RespReplyError(NOAUTH)
    if cmd.oversized:
        raise EntityTooLarge(f"value of {cmd.oversized} bytes is larger than a block "
                             f"({limits.block_bytes_max} bytes)")
    if len(args) < lo or (hi >= 0 and len(args) > hi):
        raise RespReplyError(f"ERR wrong number of arguments for '{name.lower()}' command")
    await handler(conn, args, turn)

