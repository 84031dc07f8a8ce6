"""ListObjects over the whole pod: this node's sorted listing merged with every other live node's.

Each node's own listing is ``GET /v1/{ns}/blocks`` (local only: the one-hop marker of listings),
asked by the entry node signed with the caller's own key (every node reads the same
credentials file; the peer authorizes the same tenant). ``pod_lister`` wraps the local listing
function ``listing.list_page`` pulls from: each pull asks every live peer for the same window
(prefix, start after, limit) in one parallel round on the event loop, merges the sorted answers
with the local one (a key once), and keeps ``limit``. A peer that does not answer within the
forward timeout, or whose breaker is open, is left out of that page (counted, logged).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from kvstore import limits
from kvstore.api.s3 import sigv4
from kvstore.api.s3.listing import ListFn
from kvstore.auth import Tenant
from kvstore.engine.types import BlockMeta
from kvstore.service.forward import Forwarder, NodeInfo

log = logging.getLogger("kvstore.forward")

Listed = tuple[list[BlockMeta], bool]


def meta_doc(b: BlockMeta) -> dict[str, object]:
    """One block of a ``/v1/{ns}/blocks`` answer."""
    return {"key": b.key, "length": b.length, "checksum": b.checksum, "seq": b.seq,
            "created": b.created, "expires": b.expires,
            "meta": base64.b64encode(b.meta).decode()}


def _meta(ns: str, d: dict[str, Any]) -> BlockMeta:
    """One peer's listed block; a missing or mistyped field raises (the peer is left out)."""
    return BlockMeta(ns, str(d["key"]), int(d["length"]), int(d["checksum"]),
                     int(d["seq"]), float(d["created"]), float(d["expires"]),
                     base64.b64decode(str(d["meta"])))


def _signed_get(node: NodeInfo, tenant: Tenant, region: str, path: str,
                query: Sequence[tuple[str, str]]) -> bytes:
    hostport = node.http.split("://", 1)[-1].rstrip("/")
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    headers = {"host": hostport, "x-amz-date": amz_date,
               "x-amz-content-sha256": sigv4.UNSIGNED_PAYLOAD}
    signed = sorted(headers)
    creq = sigv4.canonical_request("GET", path, query, headers, signed, sigv4.UNSIGNED_PAYLOAD)
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    key = sigv4.signing_key(tenant.secret_key, amz_date[:8], region, "s3")
    sig = sigv4.sign(key, sigv4.string_to_sign(amz_date, scope, creq))
    auth = (f"{sigv4.ALGORITHM} Credential={tenant.access_key or 'dev'}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    lines = [f"GET {path}?{sigv4.canonical_query(query)} HTTP/1.1",
             *(f"{k}: {v}" for k, v in headers.items()), f"authorization: {auth}",
             "connection: close", "", ""]
    return "\r\n".join(lines).encode()


async def _ask(node: NodeInfo, request: bytes, tls: Any = None) -> dict[str, Any]:
    """``tls``: the pod's peer SSLContext (``Forwarder.tls``) when the nodes serve HTTPS."""
    host, _, port = node.http.split("://", 1)[-1].rstrip("/").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=tls)
    try:
        writer.write(request)
        raw = await reader.read(limits.forward_list_response_bytes_max + 1)
        while len(raw) <= limits.forward_list_response_bytes_max:
            more = await reader.read(limits.forward_list_response_bytes_max + 1 - len(raw))
            if not more:
                break
            raw += more
    finally:
        writer.close()
    if len(raw) > limits.forward_list_response_bytes_max:
        raise OSError("listing answer over forward_list_response_bytes_max")
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b""
    if status != b"200":
        raise OSError(f"listing answered {head[:80]!r}")
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise OSError("listing answer is not a JSON object")
    return doc


async def _peer(fw: Forwarder, node: NodeInfo, tenant: Tenant, region: str, ns: str,
                prefix: str, start_after: str, limit: int) -> Listed | None:
    b = fw.breaker(node)
    if not b.allow():
        fw.count("list", "breaker_open")
        return None
    path = f"/v1/{quote(ns, safe='')}/blocks"
    query = [("limit", str(limit)), ("prefix", prefix), ("start_after", start_after)]
    try:
        ask = _ask(node, _signed_get(node, tenant, region, path, query), fw.tls)
        doc = await asyncio.wait_for(ask, fw.timeout_s)
        items = [_meta(ns, d) for d in doc["blocks"]]
        more = bool(doc["truncated"])
    except (OSError, TimeoutError, ValueError, KeyError, TypeError, IndexError) as exc:
        b.failure()
        fw.count("list", "failed")
        log.warning("listing %s at %s failed: %r", ns, node.node_id, exc)
        return None
    b.success()
    fw.count("list", "ok")
    return items, more


def pod_lister(local: ListFn, fw: Forwarder, tenant: Tenant, region: str, ns: str,
               loop: asyncio.AbstractEventLoop) -> ListFn:
    """A listing function (called on an engine thread) over this node and every live peer."""

    def fn(prefix: str, start_after: str, limit: int) -> Listed:
        mine, more = local(prefix, start_after, limit)
        peers = fw.peers()[:limits.pod_nodes_max]
        if not peers:
            return mine, more

        async def round_() -> list[Listed | None]:
            return await asyncio.gather(*(_peer(fw, p, tenant, region, ns, prefix, start_after,
                                                limit) for p in peers))

        answers = asyncio.run_coroutine_threadsafe(round_(), loop).result(fw.timeout_s * 2 + 1)
        merged: dict[str, BlockMeta] = {b.key: b for b in mine}
        for a in answers:
            if a is not None:
                more = more or a[1]
                for b in a[0]:
                    merged.setdefault(b.key, b)
        keys = sorted(merged)
        return [merged[k] for k in keys[:limit]], more or len(keys) > limit

    return fn
