"""The Redis listener's connection commands: AUTH, HELLO, PING, ECHO, SELECT, QUIT, and what
clients send at set-up (CLIENT SETINFO/SETNAME, COMMAND DOCS, INFO). The table that routes to
them is ``kvstore.transport.resp_commands.TABLE``.

AUTH's user is a tenant's access key and its password the secret key; without credentials
(development mode) every connection is the development tenant from the start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvstore.auth import Tenant, constant_time_equal
from kvstore.protocol import resp
from kvstore.protocol.resp import Arg, arg_bytes
from kvstore.transport.resp_conn import RespReplyError, Turn

if TYPE_CHECKING:
    from kvstore.transport.resp_conn import RespProtocol

# What HELLO and INFO say this server is: clients that look at the version see a Redis 7.
REDIS_VERSION = "7.4.0"
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
NOAUTH = "NOAUTH Authentication required."


def _login(conn: RespProtocol, user: bytes, password: bytes) -> Tenant:
    """The tenant ``user``/``password`` names (access key, secret), or WRONGPASS."""
    tenants = conn.ctx.node.tenants
    try:
        access = user.decode("utf-8")
    except UnicodeDecodeError:
        raise RespReplyError(WRONGPASS) from None
    if tenants.dev:
        return tenants.by_access_key(access)
    secret = tenants.secret_for(access)
    if secret is None or not constant_time_equal(secret.encode(), password):
        raise RespReplyError(WRONGPASS)
    return tenants.by_access_key(access)


async def cmd_auth(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    if len(args) == 1:  # AUTH password: the "default" user
        if conn.ctx.node.tenants.dev:
            raise RespReplyError("ERR AUTH <password> called without any password configured "
                                 "for the default user. Are you sure your configuration is "
                                 "correct?")
        user, password = b"default", arg_bytes(args[0])
    else:
        user, password = arg_bytes(args[0]), arg_bytes(args[1])
    conn.authenticated(_login(conn, user, password))
    await turn.wait()
    turn.write(resp.simple("OK"))


async def cmd_hello(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    proto = conn.proto
    tenant = None
    if args:
        try:
            proto = int(arg_bytes(args[0]))
        except ValueError:
            raise RespReplyError("ERR Protocol version is not an integer or out of range") from None
        if proto not in (2, 3):
            raise RespReplyError("NOPROTO unsupported protocol version")
    i, name = 1, None
    while i < len(args):
        opt = arg_bytes(args[i]).upper()
        if opt == b"AUTH" and i + 2 < len(args):
            tenant = _login(conn, arg_bytes(args[i + 1]), arg_bytes(args[i + 2]))
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(args):
            name = arg_bytes(args[i + 1])
            i += 2
        else:
            raise RespReplyError(f"ERR Syntax error in HELLO option '{opt.decode('latin-1')}'")
    if tenant is None and conn.tenant is None:
        raise RespReplyError("NOAUTH HELLO must be called with the client already "
                             "authenticated, otherwise the HELLO <proto> AUTH <user> <pass> "
                             "option can be used to authenticate the client and select the "
                             "RESP protocol version at the same time")
    if tenant is not None:
        conn.authenticated(tenant)
    if name is not None:
        conn.name = name
    conn.proto = proto
    await turn.wait()
    turn.write(resp.encode({"server": "redis", "version": REDIS_VERSION, "proto": proto,
                            "id": id(conn) & 0x7FFFFFFF, "mode": "standalone",
                            "role": "master", "modules": []}, proto))


async def cmd_ping(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    await turn.wait()
    turn.write(resp.bulk(arg_bytes(args[0])) if args else resp.simple("PONG"))


async def cmd_echo(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    await turn.wait()
    turn.write(resp.bulk(arg_bytes(args[0])))


async def cmd_select(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    if arg_bytes(args[0]) != b"0":
        raise RespReplyError("ERR DB index is out of range")
    await turn.wait()
    turn.write(resp.simple("OK"))


async def cmd_quit(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    await turn.wait()
    turn.write(resp.simple("OK"))
    conn.close()


async def cmd_client(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    sub = arg_bytes(args[0]).upper()
    if sub in (b"SETINFO", b"SETNAME") and len(args) >= 2:
        if sub == b"SETNAME":
            conn.name = arg_bytes(args[1])
        out = resp.simple("OK")
    elif sub == b"GETNAME":
        out = resp.bulk(conn.name) if conn.name else resp.null(conn.proto)
    elif sub == b"ID":
        out = resp.integer(id(conn) & 0x7FFFFFFF)
    else:
        raise RespReplyError(f"ERR unknown subcommand '{sub.decode('latin-1')}'. "
                             "Try CLIENT HELP.")
    await turn.wait()
    turn.write(out)


async def cmd_command(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    sub = arg_bytes(args[0]).upper() if args else b""
    if sub == b"COUNT":
        from kvstore.transport.resp_commands import TABLE

        out = resp.integer(len(TABLE))
    elif sub == b"DOCS":  # redis-cli asks at start for its hints: it has none to learn here
        out = resp.encode({}, conn.proto)
    elif sub in (b"", b"INFO", b"LIST"):
        out = resp.array_header(0)
    else:
        raise RespReplyError(f"ERR unknown subcommand '{sub.decode('latin-1')}'. "
                             "Try COMMAND HELP.")
    await turn.wait()
    turn.write(out)


async def cmd_info(conn: RespProtocol, args: list[Arg], turn: Turn) -> None:
    text = (f"# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\n"
            f"kvstore_resp_namespace:{conn.ctx.namespace}\r\n"
            f"# Clients\r\nconnected_clients:{len(conn.ctx.connections)}\r\n")
    await turn.wait()
    turn.write(resp.bulk(text.encode()))
