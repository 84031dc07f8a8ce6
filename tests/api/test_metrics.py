"""kvstore.api.metrics: per-app registries, observe/error, engine stats as families."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from kvstore.api.metrics import Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Stats:
    """A stats source whose numbers the test sets (the engine's stats() contract)."""

    def __init__(self) -> None:
        self.values: dict[str, int | float] = {
            "puts": 3, "puts_existing": 1, "gets": 5, "hits_dram": 2, "hits_flash": 1,
            "misses": 2, "bytes_written": 300, "bytes_read": 200, "checksum_failures": 1,
            "evicted_segments": 0, "evicted_blocks": 0, "reinserted_blocks": 0,
            "expired_blocks": 0, "deletes": 0, "blocks": 3, "namespaces": 1,
            "flash_used_bytes": 12288, "flash_capacity_bytes": 1 << 30, "dram_used_bytes": 300,
            "dram_capacity_bytes": 1 << 20, "segments": 1, "leases_active": 0,
            "future_stat": 7,
        }

    def stats(self) -> Mapping[str, int | float]:
        return self.values


def test_observe_counts_ops_bytes_and_latency() -> None:
    m = Metrics()
    m.observe("get", "dram", 2048, 0.0003)
    m.observe("get", "dram", 2048, 0.002)
    m.observe("put", "-", 100, 0.01)
    m.error("put", "BadDigest")
    s = samples(m)
    assert s[("kvstore_ops_total", (("op", "get"), ("tier", "dram")))] == 2
    assert s[("kvstore_bytes_total", (("op", "get"), ("tier", "dram")))] == 4096
    assert s[("kvstore_op_seconds_count", (("op", "get"), ("tier", "dram")))] == 2
    assert s[("kvstore_op_seconds_bucket", (("le", "0.0005"), ("op", "get"), ("tier", "dram")))] == 1
    assert s[("kvstore_ops_total", (("op", "put"), ("tier", "-")))] == 1
    assert s[("kvstore_errors_total", (("error", "BadDigest"), ("op", "put")))] == 1


def test_registries_are_per_app() -> None:
    a, b = Metrics(), Metrics()
    a.observe("head", "-", 0, 0.0001)
    assert ("kvstore_ops_total", (("op", "head"), ("tier", "-"))) in samples(a)
    assert ("kvstore_ops_total", (("op", "head"), ("tier", "-"))) not in samples(b)


def test_engine_stats_become_families_at_scrape_time() -> None:
    src = Stats()
    m = Metrics(src)
    s = samples(m)
    assert s[("kvstore_engine_hits_total", (("tier", "dram"),))] == 2
    assert s[("kvstore_engine_hits_total", (("tier", "flash"),))] == 1
    assert s[("kvstore_engine_misses_total", ())] == 2
    assert s[("kvstore_checksum_failures_total", ())] == 1
    assert s[("kvstore_evicted_blocks_total", ())] == 0
    assert s[("kvstore_capacity_bytes", (("tier", "flash"),))] == 1 << 30
    assert s[("kvstore_used_bytes", (("tier", "dram"),))] == 300
    assert s[("kvstore_engine_future_stat", ())] == 7
    src.values["misses"] = 9
    src.values["evicted_blocks"] = 4
    s = samples(m)
    assert s[("kvstore_engine_misses_total", ())] == 9
    assert s[("kvstore_evicted_blocks_total", ())] == 4


def test_missing_stats_are_skipped() -> None:
    src = Stats()
    src.values = {"blocks": 1}
    s = samples(Metrics(src))
    assert s[("kvstore_blocks", ())] == 1
    assert not any(name.startswith("kvstore_engine_hits") for name, _ in s)


def test_engine_read_misses_are_one_counter_family_by_outcome(tmp_path: object) -> None:
    from kvstore.engine.device import MemoryDevice
    from kvstore.engine.store import Engine
    from kvstore.engine.types import EngineConfig

    eng = Engine.open(EngineConfig(data_dir=f"{tmp_path}/d", capacity_bytes=8 << 20,
                                   segment_bytes=1 << 20, dram_bytes=0), MemoryDevice())
    try:
        eng.create_namespace("ns1")
        eng.put("ns1", "k", b"x" * 100)
        assert eng.get("ns1", "nope") is None and eng.get("ns1", "k") == b"x" * 100
        s = samples(Metrics(eng))
        assert s[("kvstore_engine_read_misses_total", (("outcome", "absent"),))] == 1
        assert s[("kvstore_engine_read_misses_total", (("outcome", "corrupt"),))] == 0
        assert s[("kvstore_engine_misses_total", ())] == 1
    finally:
        eng.close()


def test_op_counters_histogram_edges_and_summary() -> None:
    """Buckets are "less or equal" (a value on a bound counts in it), a value past the last
    bound only in +Inf, and op_summary sums the tiers of an op."""
    m = Metrics()
    m.observe("get", "dram", 10, 0.0005)  # exactly a bound
    m.observe("get", "flash", 5, 20.0)  # past 10 s
    s = samples(m)
    assert s[("kvstore_op_seconds_bucket", (("le", "0.0005"), ("op", "get"), ("tier", "dram")))] == 1
    assert s[("kvstore_op_seconds_bucket", (("le", "0.00025"), ("op", "get"),
                                            ("tier", "dram")))] == 0
    assert s[("kvstore_op_seconds_bucket", (("le", "10.0"), ("op", "get"), ("tier", "flash")))] == 0
    assert s[("kvstore_op_seconds_bucket", (("le", "+Inf"), ("op", "get"), ("tier", "flash")))] == 1
    assert s[("kvstore_op_seconds_sum", (("op", "get"), ("tier", "flash")))] == 20.0
    summary = m.op_summary()["get"]
    assert summary["count"] == 2 and summary["bytes"] == 15
    assert dict((le, n) for le, n in summary["buckets"])[0.0005] == 1
    assert summary["buckets"][-1] == [10.0, 1]
