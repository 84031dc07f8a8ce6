"""The pod client's own bounds (DESIGN section 6): how long a node may stay silent before its
part of a batch is a miss, and when a node's circuit breaker opens and probes again.

Client-side only (the server never sees them), so they live here and not in
``kvstore_wire.limits``. Names carry their unit last; the relations are asserted below.
"""

from __future__ import annotations

# A node that does not answer within this (connect, or any one wait for bytes) is a miss for
# reads and a skipped write. A healthy node on a pod network answers a batch's first bytes in
# well under a millisecond; one second is long enough not to flap on a GC pause or a full
# device queue, short enough that an inference step does not stall on a dead node.
node_timeout_seconds_default = 1.0
node_timeout_seconds_min = 0.001
node_timeout_seconds_max = 60.0

# Consecutive failures (timeouts, refused or reset connections) that open a node's breaker.
# One refused connection is already telling (SIGKILLed process), but a reset pooled connection
# after a node restart is also one failure: three keeps a single hiccup from opening it.
breaker_failures_default = 3
breaker_failures_max = 1000

# How long an open breaker skips its node before letting one probe through (half-open); a
# failed probe opens it again for twice as long, up to the maximum.
breaker_open_seconds_default = 1.0
breaker_open_seconds_max = 60.0

# Threads of a PodClient's pool: per-node parts of one batch run in parallel (one task per
# node and replica rank), several callers' batches share it.
pod_threads_default = 16
pod_threads_max = 256

# Owners remembered per client (key -> its owner ids, for the current membership view):
# placement is pure Python, about 2 us per (key, node), so a 1,000-key chain over 3 nodes costs
# ~6 ms to place; chains are looked up again and again, so a bounded memo makes the repeat
# lookups cost a dict probe. About 250 bytes an entry: 64 MiB at the bound. Cleared whenever
# the membership changes, and wholesale when full (bounded, no LRU bookkeeping per hit).
placement_cache_entries_max = 1 << 18

# etcd membership (kvstore_client.pod_etcd): one etcd call's bound; how often the watcher
# thread looks at its stop flag; a full re-list as a safety net under the watch; the retry
# backoff while etcd is unreachable (the last view is kept meanwhile).
etcd_timeout_seconds_default = 2.0
etcd_poll_seconds = 0.1
etcd_relist_seconds = 5.0
etcd_retry_seconds_min = 0.1
etcd_retry_seconds_max = 2.0

# A namespace's replica count (copies of each block on distinct nodes).
replicas_max = 8

assert 0 < node_timeout_seconds_min <= node_timeout_seconds_default <= node_timeout_seconds_max
assert 1 <= breaker_failures_default <= breaker_failures_max
assert 0 < breaker_open_seconds_default <= breaker_open_seconds_max
assert 1 <= pod_threads_default <= pod_threads_max
assert replicas_max >= 1
assert placement_cache_entries_max >= 1
assert 0 < etcd_poll_seconds <= etcd_relist_seconds
assert 0 < etcd_retry_seconds_min <= etcd_retry_seconds_max
