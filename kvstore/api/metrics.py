"""Prometheus metrics for one server: request counters the edges update, engine gauges on scrape.

One ``Metrics`` per app, each with its own ``CollectorRegistry`` (never the global one), so tests
can build many apps in one process. The edges (S3 routes, /v1 routes, the bulk server) call::

    metrics.observe("get", "dram", nbytes, seconds)   # one served operation
    metrics.error("put", "BadDigest")                 # one failed operation, by error name
    metrics.timeout("http", "header")                 # one connection closed by a timeout

``op`` and ``tier`` come from code, never from the network, so label sets stay bounded. Tiers:
``"dram"``, ``"flash"``, ``"miss"`` (GET of an absent block), ``"-"`` (no tier applies).

Engine counters and gauges (hits, misses, evictions, checksum failures, capacity) are read from
``engine.stats()`` at scrape time by ``EngineCollector``: nothing is copied on the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from kvstore.api.op_stats import OpCounters

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency buckets from 50 us (a DRAM-tier lookup) to 10 s (a 64 MiB PUT on a busy disk).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
)


class StatsSource(Protocol):
    def stats(self) -> Mapping[str, int | float]: ...


# engine.stats() name -> (metric name, help, labels) for monotonic counters.
_ENGINE_COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "puts": ("kvstore_engine_puts", "Blocks written by the engine", {}),
    "puts_existing": ("kvstore_engine_puts_existing",
                      "PUTs of a key already stored (nothing written)", {}),
    "gets": ("kvstore_engine_gets", "Block reads asked of the engine", {}),
    "hits_dram": ("kvstore_engine_hits", "Reads served, by tier", {"tier": "dram"}),
    "hits_flash": ("kvstore_engine_hits", "Reads served, by tier", {"tier": "flash"}),
    "misses": ("kvstore_engine_misses", "Reads of absent, expired or corrupt blocks", {}),
    "misses_absent": ("kvstore_engine_read_misses", "Engine reads that found no block, by why",
                    {"outcome": "absent"}),
    "misses_expired": ("kvstore_engine_read_misses", "Engine reads that found no block, by why",
                    {"outcome": "expired"}),
    "misses_corrupt": ("kvstore_engine_read_misses", "Engine reads that found no block, by why",
                    {"outcome": "corrupt"}),
    "misses_io_error": ("kvstore_engine_read_misses", "Engine reads that found no block, by why",
                    {"outcome": "io_error"}),
    "bytes_written": ("kvstore_engine_bytes_written", "Payload bytes written", {}),
    "bytes_read": ("kvstore_engine_bytes_read", "Payload bytes read", {}),
    "flash_bytes_read": ("kvstore_engine_flash_bytes_read",
                         "Bytes read from flash by reads (headers, whole records, the chunks a "
                         "ranged read verifies)", {}),
    "checksum_failures": ("kvstore_checksum_failures",
                          "Records that failed their checksum or key check (served as misses)", {}),
    "evicted_segments": ("kvstore_evicted_segments", "Segments reclaimed for capacity", {}),
    "evicted_blocks": ("kvstore_evicted_blocks", "Blocks dropped by segment reclaim", {}),
    "reinserted_blocks": ("kvstore_reinserted_blocks",
                          "Recently read blocks re-appended during reclaim", {}),
    "expired_blocks": ("kvstore_expired_blocks", "Blocks dropped when their TTL ended", {}),
    "deletes": ("kvstore_engine_deletes", "Blocks deleted", {}),
    "quota_evicted_blocks": ("kvstore_quota_evicted_blocks",
                             "Blocks deleted to keep a namespace or tenant within its quota", {}),
    "quota_evicted_bytes": ("kvstore_quota_evicted_bytes",
                            "Payload bytes deleted to keep a namespace or tenant within its quota",
                            {}),
    "leases_limited": ("kvstore_leases_limited",
                       "Leasing lookups the leased-bytes budget cut short", {}),
    "leased_moved_blocks": ("kvstore_leased_moved_blocks",
                            "Leased blocks re-appended by reclaim instead of evicted", {}),
    # G4, the object-store tier below flash (issue 13; present with --g4)
    "hits_lower": ("kvstore_engine_hits", "Reads served, by tier", {"tier": "g4"}),
    "g4_spilled_blocks": ("kvstore_g4_spilled_blocks", "Blocks uploaded to G4", {}),
    "g4_spilled_bytes": ("kvstore_g4_spilled_bytes", "Payload bytes uploaded to G4", {}),
    "g4_spill_dropped_blocks": ("kvstore_g4_spill_dropped_blocks",
                                "Evicted blocks not spilled (queue full or G4 down)", {}),
    "g4_unavailable": ("kvstore_g4_unavailable", "G4 reads that failed or timed out (misses)",
                       {}),
    "g4_corrupt": ("kvstore_g4_corrupt", "G4 blocks that failed verification (dropped)", {}),
}

# engine.stats() name -> (metric name, help, labels) for gauges.
_ENGINE_GAUGES: dict[str, tuple[str, str, dict[str, str]]] = {
    "blocks": ("kvstore_blocks", "Live blocks in the index", {}),
    "namespaces": ("kvstore_namespaces", "Namespaces (buckets)", {}),
    "segments": ("kvstore_segments", "Segment files", {}),
    "leases_active": ("kvstore_leases_active", "Blocks pinned by lookup leases", {}),
    "leased_bytes": ("kvstore_leased_bytes", "Flash bytes pinned by lookup leases", {}),
    "leased_bytes_budget": ("kvstore_leased_bytes_budget",
                            "Most flash bytes lookup leases may pin at once", {}),
    "flash_used_bytes": ("kvstore_used_bytes", "Bytes in use, by tier", {"tier": "flash"}),
    "dram_used_bytes": ("kvstore_used_bytes", "Bytes in use, by tier", {"tier": "dram"}),
    "flash_capacity_bytes": ("kvstore_capacity_bytes", "Byte budget, by tier", {"tier": "flash"}),
    "dram_capacity_bytes": ("kvstore_capacity_bytes", "Byte budget, by tier", {"tier": "dram"}),
    "g4_upload_queue_segments": ("kvstore_g4_upload_queue_segments",
                                 "Retired segments waiting for upload to G4", {}),
    "g4_upload_queue_bytes": ("kvstore_g4_upload_queue_bytes",
                              "Payload bytes waiting for upload to G4", {}),
    "g4_read_p50_ms": ("kvstore_g4_read_latency_ms", "G4 read-through latency (newest reads)",
                       {"quantile": "0.5"}),
    "g4_read_p99_ms": ("kvstore_g4_read_latency_ms", "G4 read-through latency (newest reads)",
                       {"quantile": "0.99"}),
    "g4_blocks": ("kvstore_blocks_below", "Blocks held below flash, by tier", {"tier": "g4"}),
}

_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


class EngineCollector:
    """Turns ``engine.stats()`` into metric families at scrape time."""

    def __init__(self, source: StatsSource, per_namespace: bool = True) -> None:
        self._source = source
        # Per-namespace series name every tenant's namespaces and count their blocks on an
        # unsigned endpoint: off with credentials unless asked for (--metrics-namespaces)
        self._per_namespace = per_namespace

    def describe(self) -> list[Metric]:
        return []  # families depend on what stats() returns; describe lazily

    def collect(self) -> Iterator[Metric]:
        stats = dict(self._source.stats())
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for table, kind in ((_ENGINE_COUNTERS, "counter"), (_ENGINE_GAUGES, "gauge")):
            for stat, (name, doc, labels) in table.items():
                if stat not in stats:
                    continue
                value = float(stats.pop(stat))
                fam = families.get(name)
                if fam is None:
                    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    fam = cls(name, doc, labels=list(labels))
                    families[name] = fam
                fam.add_metric(list(labels.values()), value)
        for stat, value in sorted(stats.items()):  # anything newer than this table: a gauge
            if isinstance(value, int | float) and not isinstance(value, bool):
                name = "kvstore_engine_" + _NAME_RE.sub("_", stat)
                families[name] = GaugeMetricFamily(name, f"engine stat {stat}", value=value)
        yield from families.values()
        usage = getattr(self._source, "namespace_usage", None) if self._per_namespace else None
        if usage is not None:  # namespace names are validated and bounded (namespaces_max)
            blocks = GaugeMetricFamily("kvstore_namespace_blocks", "Live blocks, by namespace",
                                       labels=["namespace"])
            nbytes = GaugeMetricFamily("kvstore_namespace_bytes",
                                       "Live payload bytes, by namespace", labels=["namespace"])
            for ns, (n, b) in sorted(usage().items()):
                blocks.add_metric([ns], n)
                nbytes.add_metric([ns], b)
            yield blocks
            yield nbytes
        # only namespaces created with a quota (kvstore.service.quota); named per namespace,
        # so off with credentials unless --metrics-namespaces, like the usage series above
        listing = getattr(self._source, "list_namespaces", None) if self._per_namespace else None
        if listing is not None:
            quota = GaugeMetricFamily("kvstore_namespace_quota_bytes",
                                      "Byte quota, by namespace (only those with one)",
                                      labels=["namespace"])
            for info in listing():
                if getattr(info, "quota_bytes", 0):
                    quota.add_metric([info.name], info.quota_bytes)
            yield quota


class PodCollector:
    """The pod membership's gauges at scrape time (``kvstore.cluster.membership``, duck-typed:
    ``view()``, ``connected``, ``registrations``)."""

    def __init__(self, membership: Any) -> None:
        self._m = membership

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield GaugeMetricFamily("kvstore_pod_nodes", "Live nodes in this node's view of the pod",
                                value=len(m.view()))
        yield GaugeMetricFamily("kvstore_pod_membership_connected",
                                "1 while the membership source (etcd) is reachable",
                                value=1.0 if m.connected else 0.0)
        yield CounterMetricFamily("kvstore_pod_registrations",
                                  "Times this node registered in etcd (1 + re-registrations)",
                                  value=float(getattr(m, "registrations", 0)))


class Metrics:
    """Counters and histograms for one app, plus the engine's stats on scrape."""

    def __init__(self, engine: StatsSource | None = None, *, per_namespace: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        # kvstore_ops_total, kvstore_bytes_total, kvstore_op_seconds: one cheap row per
        # (op, tier) on the hot path (op_stats.py), families built at scrape time
        self._op_counters = OpCounters(LATENCY_BUCKETS)
        self.registry.register(self._op_counters)
        self.observe = self._op_counters.observe  # type: ignore[method-assign]
        self._errors = Counter("kvstore_errors", "Failed operations, by operation and error",
                               ["op", "error"], registry=self.registry)
        self._timeouts = Counter("kvstore_connection_timeouts",
                                 "Connections closed by a timeout, by port and kind",
                                 ["port", "kind"], registry=self.registry)
        self._refused = Counter("kvstore_connections_refused",
                                "Connections refused at the cap or limited to health probes, "
                                "by port and reason", ["port", "reason"], registry=self.registry)
        self._forwarded = Counter("kvstore_forwarded_requests",
                                  "Requests forwarded to the block's owner in the pod, by "
                                  "operation and outcome", ["op", "outcome"],
                                  registry=self.registry)
        self._copies = Counter("kvstore_copy_forward",
                               "Blocks copied to their owner after a hit at the previous owner, "
                               "by outcome (started, dropped: past the in-flight bound, ok, "
                               "failed)", ["outcome"], registry=self.registry)
        if engine is not None:
            self.registry.register(EngineCollector(engine, per_namespace))

    def observe(self, op: str, tier: str, nbytes: int, seconds: float) -> None:
        """Record one served operation of ``nbytes`` payload that took ``seconds`` (bound to
        ``OpCounters.observe`` in ``__init__``: no extra call per request)."""
        self._op_counters.observe(op, tier, nbytes, seconds)

    def op_summary(self) -> dict[str, dict[str, Any]]:
        """Per operation, summed over tiers: ``count``, payload ``bytes``, and the latency
        histogram's cumulative ``buckets`` as [upper bound seconds, count] (without +Inf: the
        count is the total). Cumulative since start; a client diffs two reads for a window."""
        out: dict[str, dict[str, Any]] = {}

        def entry(op: str) -> dict[str, Any]:
            return out.setdefault(op, {"count": 0.0, "bytes": 0.0,
                                       "buckets": [[le, 0.0] for le in LATENCY_BUCKETS]})

        for (op, _tier), (count, moved, _seconds, cum) in self._op_counters.rows().items():
            e = entry(op)
            e["count"] += count
            e["bytes"] += moved
            for i, n in enumerate(cum):
                e["buckets"][i][1] += n
        return out

    def error(self, op: str, error: str) -> None:
        """Record one failed operation by its error name (``KVStoreError.name``)."""
        self._errors.labels(op, error).inc()

    def declare(self, port: str, kinds: Iterable[str], reasons: Iterable[str]) -> None:
        """Show a port's timeout and refusal counters at 0 before the first one happens."""
        for kind in kinds:
            self._timeouts.labels(port, kind)
        for reason in reasons:
            self._refused.labels(port, reason)

    def timeout(self, port: str, kind: str) -> None:
        """Record one connection closed by a timeout (``kind``: header, body, idle, ...)."""
        self._timeouts.labels(port, kind).inc()

    def refused(self, port: str, reason: str) -> None:
        """Record one connection refused (``cap``) or answered 503 on a probe slot."""
        self._refused.labels(port, reason).inc()

    def forwarded(self, op: str, outcome: str) -> None:
        """Record one request forwarded to another node (``outcome``: ok, miss, failed,
        breaker_open)."""
        self._forwarded.labels(op, outcome).inc()

    def copy_forward(self, outcome: str) -> None:
        """Record one copy-forward event (``kvstore.service.pod_blocks.copy_forward``)."""
        self._copies.labels(outcome).inc()

    def watch_pod(self, membership: Any) -> None:
        """Export the pod membership's gauges (``PodCollector``) from now on."""
        self.registry.register(PodCollector(membership))

    def render(self) -> bytes:
        """The Prometheus text exposition of everything in this app's registry."""
        return generate_latest(self.registry)
