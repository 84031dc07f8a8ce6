"""A pod node's figures as other nodes and tools read them: its Prometheus ``/metrics`` (which
needs no signature, so it works on nodes that require credentials), parsed into the handful of
numbers ``kvstore pod status`` and the ``/ui`` pod table show.

Nodes served with TLS (``https://`` in etcd) are read with the context ``status_tls_context``
builds (``pod status --tls-ca/--tls-cert/--tls-key``) or, in a node, its peer context (the
pod's CA and the node's own certificate); without one, the system trust store.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any

STATUS_HTTP_TIMEOUT_S = 2.0


_STATUS_SAMPLES = {
    ("kvstore_blocks", ""): "blocks",
    ("kvstore_used_bytes", "flash"): "flash_used_bytes",
    ("kvstore_engine_hits_total", "dram"): "hits_dram",
    ("kvstore_engine_hits_total", "flash"): "hits_flash",
    ("kvstore_engine_misses_total", ""): "misses",
}


def parse_status_metrics(text: str) -> dict[str, Any]:
    """The engine stats `pod status` shows, from a node's Prometheus text, and the requests
    it forwarded to other nodes (``forwarded``: {op: {outcome: count}}, from
    kvstore_forwarded_requests_total) and its copy-forwards (``copy_forward``: {outcome:
    count})."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {}
    forwarded: dict[str, dict[str, int]] = {}
    copies: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kvstore_forwarded_requests_total":
                op, outcome = sample.labels.get("op", ""), sample.labels.get("outcome", "")
                forwarded.setdefault(op, {})[outcome] = int(sample.value)
                continue
            if sample.name == "kvstore_copy_forward_total":
                copies[sample.labels.get("outcome", "")] = int(sample.value)
                continue
            stat = _STATUS_SAMPLES.get((sample.name, sample.labels.get("tier", "")))
            if stat is not None:
                out[stat] = float(sample.value)
    out["forwarded"] = forwarded
    out["copy_forward"] = copies
    return out


def status_tls_context(ca: str | None = None, cert: str | None = None,
                       key: str | None = None) -> ssl.SSLContext | None:
    """The client context for nodes' HTTPS ``/metrics``: verify them with ``ca`` (a private
    CA; None: the system trust store), present ``cert``/``key`` when they require mutual TLS
    (the SDK's ``ca=``/``cert=``/``key=``). None when no file is given: the default context.
    ``ValueError`` naming the flag when a file is missing or unusable."""
    if ca is None and cert is None and key is None:
        return None
    if key is not None and cert is None:
        raise ValueError("--tls-key needs --tls-cert (the client certificate for mutual TLS)")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--tls-ca {ca!r}: {getattr(exc, 'strerror', None) or exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--tls-cert {cert!r} / --tls-key {key!r}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    return ctx


def node_stats(http: str, tls: ssl.SSLContext | None = None) -> tuple[dict[str, Any] | None, str]:
    """(The stats of one node, from its unauthenticated /metrics; or None and why.) ``tls``:
    the client context for an ``https://`` node (None: the system trust store)."""
    try:
        with urllib.request.urlopen(f"{http}/metrics", timeout=STATUS_HTTP_TIMEOUT_S,
                                    context=tls) as r:
            return parse_status_metrics(r.read().decode()), ""
    except urllib.error.HTTPError as exc:
        return None, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))


def summarize(stats: dict[str, Any]) -> dict[str, Any]:
    """The per-node row both tools show: blocks, flash used, hits, misses, hit rate, and the
    requests this node forwarded (all, and those that failed or met an open breaker)."""
    hits = int(stats.get("hits_dram", 0)) + int(stats.get("hits_flash", 0))
    misses = int(stats.get("misses", 0))
    fwd = stats.get("forwarded", {})
    return {"blocks": int(stats.get("blocks", 0)),
            "flash_used_bytes": int(stats.get("flash_used_bytes", 0)),
            "hits": hits, "misses": misses,
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "forwarded": fwd, "copy_forward": stats.get("copy_forward", {}),
            "forwarded_requests": sum(n for by in fwd.values() for n in by.values()),
            "forwarded_failed": sum(by.get("failed", 0) + by.get("breaker_open", 0)
                                    for by in fwd.values())}
