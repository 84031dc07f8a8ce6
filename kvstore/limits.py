"""Every bound of kvstore, in one place.

Names carry their unit last (``block_bytes_max``, ``lease_seconds_max``). Each bound says why it
exists. Code never hard-codes a bound: it imports it from here, so the limits a user hits are the
limits this file documents. Past a bound the answer is a typed error (see ``kvstore.errors``),
never a crash and never an unbounded queue.
"""

from __future__ import annotations

# The bounds the client knows too are defined once, in the client distribution's wire package
# (``clients/kvstore_wire/limits.py``): these names are those very values.
from kvstore_wire.limits import (  # noqa: F401 - re-exported
    GiB,
    KiB,
    MiB,
    batch_bytes_max,
    batch_keys_max,
    block_bytes_max,
    block_meta_bytes_max,
    chain_keys_max,
    connection_inflight_bytes_max,
    connection_inflight_requests_max,
    connections_max,
    frame_header_bytes_max,
    key_bytes_max,
    layout_int_max,
    layout_str_chars_max,
    lease_seconds_max,
    namespace_bytes_max,
    namespace_bytes_min,
    nixl_metadata_bytes_max,
    nixl_region_bytes_max,
    shm_region_bytes_max,
    ttl_seconds_max,
)

# --- Alignment and on-disk geometry -------------------------------------------------------

# O_DIRECT needs offsets, lengths and buffer addresses aligned to the logical block size; 4 KiB
# covers every SSD and virtio disk we target and lets a torn write be detected per page.
io_alignment_bytes = 4 * KiB

# One segment file. Large enough that reclaiming one is rare and sequential, small enough that
# reclaiming one frees capacity in useful steps on a 10 GiB budget.
segment_bytes_default = 256 * MiB
segment_bytes_min = 1 * MiB
segment_bytes_max = 4 * GiB

# --- Keys and namespaces ------------------------------------------------------------------

# Namespaces (buckets) one node holds: the per-namespace state is small, but not free.
namespaces_max = 4096

# --- Blocks -------------------------------------------------------------------------------

# A record's payload is checksummed per chunk of this size too (xxh3-64 each, a table in the
# record header), so a ranged read reads and verifies only the chunks it touches: a 100-byte
# range of a 64 MiB block reads 1 MiB and a page, not 64 MiB. Larger chunks cost ranged reads
# bytes; smaller ones cost header room (64 MiB / 1 MiB = 64 entries = 512 bytes) and a hash call
# each. A power of two and whole pages, so chunks start on O_DIRECT boundaries.
record_chunk_bytes = 1 * MiB
assert record_chunk_bytes & (record_chunk_bytes - 1) == 0, "chunk size must be a power of two"
assert record_chunk_bytes % io_alignment_bytes == 0, "chunks must start on page boundaries"
assert io_alignment_bytes <= record_chunk_bytes <= block_bytes_max

# --- Encryption at rest (engine/crypto.py) -------------------------------------------------
master_key_bytes = 32  # AES-256 master key (key-encryption key), `kvstore keygen` writes one
data_key_bytes = 32  # AES-256-GCM data key of one namespace, wrapped by the master key
gcm_nonce_bytes = 12  # 96-bit random nonce per record (stored in its header)
gcm_tag_bytes = 16  # full GCM tag, never truncated
# NIST SP 800-38D 8.3: random 96-bit nonces keep the chance of any reuse under 2**-32 for at
# most 2**32 encryptions under one key. One encryption per record write, per namespace key.
gcm_records_per_data_key_max = 2**32
assert master_key_bytes == data_key_bytes == 32, "AES-256 keys"
assert gcm_nonce_bytes == 12 and gcm_tag_bytes == 16

# --- Leases and TTL -----------------------------------------------------------------------

# Blocks pinned by leases at once, across all clients: pins hold capacity hostage.
leased_blocks_max = 1_000_000

# Bytes leases may pin at once (the leased-bytes budget), as a fraction of the flash capacity:
# the default of ``--lease-budget`` and the most it may be set to. Reclaim re-appends pinned
# blocks instead of evicting them, so it frees only what is not pinned; the engine lowers the
# budget further where the store has too few segments for reclaim to always finish (see
# ``engine/leases.py``). Past the budget a lookup pins fewer blocks and says so.
leased_fraction_of_capacity_default = 0.25
leased_fraction_of_capacity_max = 0.4
assert 0 < leased_fraction_of_capacity_default <= leased_fraction_of_capacity_max < 0.5

# --- Capacity -----------------------------------------------------------------------------

# Reclaim starts above the high watermark and stops at the low one (fractions of capacity).
capacity_high_watermark = 0.95
capacity_low_watermark = 0.85

# Smallest flash budget: at least two segments (one active, one to reclaim).
capacity_segments_min = 2

# Default DRAM tier: small enough to start anywhere.
dram_bytes_default = 256 * MiB

# Reads recently enough to be re-inserted when their segment is reclaimed (Navy "reinsertion").
# Bounded so reclaim cannot rewrite the whole store.
reinsert_fraction_max = 0.5

# --- I/O ----------------------------------------------------------------------------------

# Operations in flight in one io_uring ring (submission queue entries).
uring_entries = 64

# Idle bytes an aligned buffer pool keeps for reuse (per pool: the engine's, the bulk port's,
# the S3 app's). Covers a bulk connection's in-flight window; beyond it buffers are unmapped.
buffer_pool_idle_bytes_max = 512 * MiB

# Threads one PosixDevice batch spreads its ops over (the caller and a pool of the rest): the
# queue depth a single put_many or batched get gives the POSIX fallback (it has no ring).
posix_batch_threads = 8

# Device auto-selection measures io_uring and POSIX on the data directory's disk: each writes
# then reads this many bytes of 2 MiB ops at this depth (a few tens of milliseconds at start).
device_probe_bytes = 32 * MiB
device_probe_depth = 8
# Bandwidths within this fraction of each other are a tie, broken by CPU seconds per byte.
device_choice_margin_fraction = 0.1

# --- Network edges ------------------------------------------------------------------------

# The highest value --max-connections takes (its default is ``connections_max``).
connections_max_allowed = 65536

# Write-buffer water marks for flow control on the bulk port.
write_buffer_high_bytes = 8 * MiB
write_buffer_low_bytes = 2 * MiB

# HTTP request body: a multipart part or a single PutObject.
http_body_bytes_max = block_bytes_max

# HTTP: the request line and headers of one request (URL and query included), as they arrive.
# S3 caps a PUT's headers at 8 KiB; this leaves room for a presigned URL of the longest key and
# what proxies add. Past it: 400 RequestHeaderSectionTooLarge, closed (kvstore.api.http_guard).
# Without it httptools grew a header without bound, in quadratic time (20 MiB: 4 s of the loop).
http_header_bytes_max = 64 * KiB

# A /v1 control-plane JSON body: a full chain or batch of maximal keys (8192 x 1 KiB), JSON-quoted,
# fits with room; anything larger is not a legal control request.
control_body_bytes_max = 16 * MiB

# Multipart uploads open at once, and parts per upload (S3 allows 10,000).
multipart_uploads_max = 1024
multipart_parts_max = 10_000

# Objects in one DeleteObjects request (S3 allows 1000).
delete_objects_max = 1000

# ListObjectsV2 page size (S3's max-keys cap).
list_keys_max = 1000

# Graceful shutdown: drain in-flight requests for at most this long.
shutdown_seconds_max = 10.0

# TLS: how long a closing connection waits for the peer's close_notify (asyncio's default is
# 30 s; an idle HTTPS keep-alive client never answers, and held a graceful stop to its bound).
tls_close_timeout_seconds = 1.0
assert tls_close_timeout_seconds < shutdown_seconds_max

# Presigned URL lifetime (S3 caps it at 7 days).
presign_seconds_max = 7 * 24 * 3600

# SigV4 clock skew tolerated.
clock_skew_seconds_max = 15 * 60

# `--domain` of virtual-host-style addressing: BUCKET.DOMAIN must still be a DNS name (at most
# 253 characters) for the longest bucket name.
s3_domain_bytes_max = 253 - namespace_bytes_max - 1

# S3 user metadata (x-amz-meta-*) per object: S3's own cap; it rides in the record's meta bytes.
s3_user_metadata_bytes_max = 2 * KiB

# A multipart object's record keeps its parts' checksums (13 SHA-256 values at most: ~600
# bytes) only while its whole meta stays within this; the record header holds at least this
# much meta (asserted in engine/format.py).
s3_part_checksums_meta_bytes_max = 2 * KiB

# XML request bodies (DeleteObjects with 1000 keys of 1 KiB, CompleteMultipartUpload with
# 10,000 parts) fit well under this; anything larger is refused before parsing.
s3_xml_body_bytes_max = 4 * MiB

# Bytes of multipart parts staged in memory across all open uploads: parts wait in RAM until
# Complete, so their total must not grow without bound.
multipart_staged_bytes_max = 2 * GiB

# An upload untouched this long is dropped (its parts freed) when room is needed.
multipart_idle_seconds_max = 3600.0

# S3's minimum size of a multipart part other than the last (CompleteMultipartUpload answers
# EntityTooSmall below it). With ``block_bytes_max`` it also bounds the parts an object has.
multipart_part_bytes_min = 5 * MiB

# Completed uploads remembered (their answer) so that a repeated CompleteMultipartUpload of the
# same parts answers the same result, as S3 does; the oldest are forgotten first, and none is
# kept longer than ``multipart_idle_seconds_max``.
multipart_completed_remembered_max = 1024

# GetObject/HeadObject answer headers rendered per object version (kvstore.api.s3.answer_cache),
# keyed by bucket and key: an entry holds at most a record's metadata (block_meta_bytes_max)
# three times over (packed, unpacked, rendered) plus its key, so at most ~32 MiB, typically a
# few hundred bytes each. The oldest insertion is dropped first.
s3_answer_cache_entries_max = 2048

# PUT bodies are copied into their buffer and fed to the MD5 ETag (and the SHA-256 of a signed
# payload) while they arrive, in batches of at least this many bytes (fewer thread hand-offs per
# body: 4 for 2 MiB), one batch in flight per request (kvstore.api.s3.intake).
s3_intake_batch_bytes = 512 * KiB

# Threads that run those batches where hashlib digests them (a body that started alone, a
# signed payload's SHA-256, a CPU without SIMD kernels): MD5 runs at ~0.7 GB/s per core and one
# body's MD5 cannot be split, so concurrent PUTs hash on as many cores as there are threads
# (hashlib releases the GIL). Bodies whose MD5 is in the SIMD lanes are copied and hashed by the
# combiner's own thread instead (kvstore.api.s3.md5lanes). A request waits for a free one; at
# most one batch per request is queued.
s3_hash_threads = 8

# The SIMD MD5 combiner (kvstore.api.s3.md5lanes) takes at most this many queued streams per
# round and hashes at most this many bytes of each before it takes in streams that queued
# meanwhile (~0.25 ms per round with 8 lanes full).
s3_md5_lane_streams_max = 64
s3_md5_lane_round_bytes = 128 * KiB
# Before each round the combiner waits at most this long for the other bodies in flight to queue
# their next batch (at most one stream more than the last round had), so that rounds fill the
# lanes: 3.6-3.8 streams a round waiting only when a leader starts, 4.8-5.3 waiting before each
# round (8 writers, 2 MiB PUTs). A lone body never waits; a body whose neighbours stall waits at
# most this much per round, 4 rounds per intake batch (16 per 2 MiB body: 8 ms).
s3_md5_lane_gather_us = 500
# The combiner's thread exits after this long without a batch (the next one starts it again).
s3_md5_lane_idle_seconds = 10.0
assert s3_md5_lane_round_bytes % 64 == 0, "MD5 works on 64-byte blocks"
assert s3_hash_threads <= s3_md5_lane_streams_max <= 256, "native STREAMS_MAX"
assert 0 <= s3_md5_lane_gather_us <= 10_000, "waits, not stalls"
assert s3_md5_lane_idle_seconds * 1e6 > s3_md5_lane_gather_us

# Conditional writes (If-Match) of one key are serialized by one of this many locks (striped by
# key), so that two writers holding the same ETag cannot both succeed.
conditional_write_locks = 64

# One device write of a batched put: packs many small records into one I/O (a 4 KiB O_DIRECT
# write costs about as much as a 1 MiB one here) without holding huge buffers.
write_chunk_bytes_max = 8 * MiB

# --- NIXL transport (optional extra; kvstore.transport.nixl) -------------------------------

# Server staging memory registered with its NIXL agent once: one-sided transfers need registered
# memory on both ends, and engine buffers are not registered. Each request holds one chunk at a
# time (blocks are packed into it; a larger block streams through it in pieces), so concurrent
# NIXL requests beyond the chunk count wait for a chunk instead of allocating more.
nixl_staging_chunk_bytes = 16 * MiB
nixl_staging_chunks = 4

# One NIXL transfer (or waiting for a staging chunk) past this fails the request: a peer that
# vanished or a stuck UCX endpoint must not hold a chunk or a task forever.
nixl_transfer_seconds_max = 30.0

# How long an append waits for earlier appends in the same segment to reach the device before
# it gives up with a StorageError (a device that hangs this long is broken).
write_wait_seconds_max = 60.0

# Chunks one batched put keeps in flight at once (write_chunk_bytes_max each; a call is cut into
# at least this many where its records allow): the queue depth one put_many gives the device,
# and the buffers it holds at once (64 MiB).
write_wave_chunks_max = 8

# Single puts from concurrent callers queue for the engine's put writer (kvstore.engine.coalesce),
# which takes up to this many queued puts at a time into its pipeline, as one batch.
put_coalesce_batch_max = 64
# ... and at most this many payload bytes (the first put always goes): one wave of 2 MiB writes.
# A larger batch adds no depth (a pipeline keeps write_wave_chunks_max writes in flight, packing
# a batch's records into larger chunks) while its puts wait for each other. With the earlier
# overlapping leaders, 32 threads of 2 MiB single puts: 1.75-2.21 GB/s medians without it,
# 2.09-2.43 with it, in four A/B sessions; 8 threads: no difference
# (loadtest/results/coalesce-batch-20261203.md). Small records still coalesce 64 at a time.
put_coalesce_batch_bytes_max = write_wave_chunks_max * 2 * MiB
# While its writes are in flight the put writer takes the puts that queued meanwhile into the
# same pipeline (the device queue stays full across batches), up to this many puts; then the
# pipeline drains and the next one starts (bounds the pipeline's lists of puts).
put_coalesce_pipeline_puts_max = 1024
# How long a queued put waits for the writes ahead of it before it gives up with a StorageError
# (the writer writes within write_wait_seconds_max per chunk, or fails).
put_coalesce_wait_seconds_max = 300.0

# Group commit (kvstore.engine.group): chunks of concurrent writers reserved back to back are
# written by one device op when each is at most this big (and all of them together at most
# write_chunk_bytes_max); larger chunks gain nothing from sharing an op and would be copied.
group_commit_chunk_bytes_max = 1 * MiB

# Rolled segments queued for (or being) sealed off the write lock (kvstore.engine.sealer); past
# it a roll seals inline. The writer whose call rolled waits for its seal, so this is also how
# many rolls can overlap their seals with other writers' appends.
seal_queue_segments_max = 4

# Threads that run engine calls for the asyncio edges. Flash I/O blocks a thread per request,
# so this is the queue depth the edges can give the device (reads reach fio's QD8 figure at 8).
engine_threads = 8
# Engine calls running or waiting for a thread, at most: past it a request is Busy (503) at once,
# so a stalled disk cannot grow a queue (kvstore.service.runner).
engine_queue_max = 1024
# An engine call that has not answered in this long (a stalled or very slow disk) answers its
# request Busy (503) instead; the thread finishes its I/O whenever the disk lets it, still
# counted against engine_queue_max. --engine-timeout.
engine_call_timeout_seconds_default = 30.0

# The DRAM tier may take at most this fraction of the machine's memory: the index, buffer pools
# and the OS need the rest (a larger --dram is refused at start, not discovered by the OOM killer).
dram_fraction_of_memory_max = 0.8

# --- Connection timeouts (slow or silent peers) -------------------------------------------
# Every open connection holds one of connections_max slots; these decide how long a peer that
# sends nothing, or too little, may hold one. All are --flags (kvstore.config) within
# [connection_timeout_seconds_min, connection_timeout_seconds_max].

# HTTP: the request line and headers must be complete this long after the connection was
# accepted, or after the previous response on a keep-alive connection was sent. Machine clients
# send a request in one write; 10 s is generous for any network that can carry KV blocks.
http_header_timeout_seconds_default = 10.0

# HTTP keep-alive: a connection idle between requests is closed after this long (uvicorn's own
# default). The header deadline keeps running under it, so it must not be longer.
http_keepalive_timeout_seconds_default = 5.0

# A request body (HTTP) or PUT payload (bulk port) that the server is reading: no byte for this
# long closes the connection. Time the server itself is not reading (flow control, waiting to
# send 100-continue) does not count.
body_idle_timeout_seconds_default = 30.0

# The slowest body that may keep its connection: a floor on the bytes per second averaged over
# the last body_rate_window_seconds of reading, checked once body_rate_grace_seconds of reading
# have passed (TCP slow start, a client's first write). 64 KiB/s: holding all 1024 slots costs
# a peer 64 MiB/s of real upload, and a 64 MiB block may take up to 1024 s. 0 turns it off.
body_min_rate_bytes_per_second_default = 64 * KiB
body_rate_window_seconds_default = 10.0
body_rate_grace_seconds_default = 5.0

# Bulk port: HELLO and AUTH must be done this long after accept (before it, the peer is nobody).
bulk_handshake_timeout_seconds_default = 10.0

# Bulk port: an authenticated connection with nothing in flight and no bytes arriving is closed
# after this long. Engines keep pools of connections, so it is long; the SDK retries a request
# that finds its pooled connection closed.
bulk_idle_timeout_seconds_default = 300.0

# HTTP connection slots (out of connections_max) only health probes (GET/HEAD /healthz,
# /readyz) may use: while connections_max minus this many connections are inside requests, any
# other request gets 503 SlowDown, so requests that hold their connections (slow bodies, long
# calls) cannot fail the kubelet's probes. (Silent sockets need no slice: at the cap a new
# connection evicts the one that has waited longest for its headers; see kvstore.api.http_guard.)
probe_connections_reserved_default = 16

# After a timeout's error answer (408, or a bulk ERROR frame), how long the peer has to read
# it before the socket is aborted: a peer that reads nothing must not hold the slot instead.
timeout_close_grace_seconds = 1.0

# What the configurable timeouts above may be set to.
connection_timeout_seconds_min = 0.05
connection_timeout_seconds_max = 3600.0

# A watchdog checks a deadline this many times per its shortest timeout (its resolution: a
# timeout fires between 1 and 1 + 1/ticks of its value).
watchdog_ticks_per_timeout = 4

assert 0 < probe_connections_reserved_default < connections_max // 2 < connections_max_allowed
assert 0 < http_keepalive_timeout_seconds_default <= http_header_timeout_seconds_default
assert bulk_handshake_timeout_seconds_default <= bulk_idle_timeout_seconds_default
assert all(connection_timeout_seconds_min <= t <= connection_timeout_seconds_max for t in (
    http_header_timeout_seconds_default, http_keepalive_timeout_seconds_default,
    body_idle_timeout_seconds_default, body_rate_window_seconds_default,
    body_rate_grace_seconds_default, bulk_handshake_timeout_seconds_default,
    bulk_idle_timeout_seconds_default))
# An HTTP head holds a presigned URL of the longest bucket and key, percent-encoded (3 bytes a
# byte), its query, the user metadata and the usual headers; heads arriving on every slot of
# the default cap hold at most 64 MiB.
assert (3 * (namespace_bytes_max + 1 + key_bytes_max) + s3_user_metadata_bytes_max + 8 * KiB
        <= http_header_bytes_max)
assert http_header_bytes_max * connections_max <= 64 * MiB
# The slowest legal body still ends: a maximal block at the floor rate within a day.
assert http_body_bytes_max / body_min_rate_bytes_per_second_default < 24 * 3600

# --- The pod (etcd membership; kvstore.cluster) -------------------------------------------

# A node's etcd lease: how long after its last keep-alive a dead node stays in every view. Short
# enough that a SIGKILLed node turns into misses quickly, long enough that a busy loop or a GC
# pause does not drop a live node. etcd grants at least its own minimum (about 2 s for one member).
etcd_lease_ttl_seconds_default = 10.0
etcd_lease_ttl_seconds_min = 1.0
etcd_lease_ttl_seconds_max = 300.0
# Keep-alives per lease TTL: three, so two lost in a row still leave the lease alive.
etcd_keepalives_per_ttl = 3
# One etcd call (grant, put, get, refresh, revoke): past it etcd counts as down for this node,
# which keeps its last view and keeps serving.
etcd_call_timeout_seconds_default = 2.0
etcd_call_timeout_seconds_min = 0.05
etcd_call_timeout_seconds_max = 30.0
# Pause between attempts to reach etcd again after it went away (then each etcd URL in turn).
etcd_retry_seconds = 0.5
# How long `kvstore serve` waits at start for its first registration before it serves anyway
# (etcd down at start is not fatal: the node serves alone and registers when etcd is back).
etcd_start_wait_seconds = 5.0
# Nodes and namespaces one pod view holds (a bound on what a watch may make a node keep).
pod_nodes_max = 1024

assert etcd_lease_ttl_seconds_min <= etcd_lease_ttl_seconds_default <= etcd_lease_ttl_seconds_max
assert etcd_keepalives_per_ttl >= 2
# A keep-alive must be able to finish before the next one is due, even at the shortest TTL.
assert etcd_call_timeout_seconds_default < etcd_lease_ttl_seconds_default / etcd_keepalives_per_ttl
assert etcd_call_timeout_seconds_min < etcd_lease_ttl_seconds_min / etcd_keepalives_per_ttl
assert 0 < etcd_retry_seconds < etcd_lease_ttl_seconds_default
assert namespaces_max <= 1_000_000 and pod_nodes_max >= 1

# Any-node access (kvstore.service.forward): a request for a block another node owns is done at
# that owner over its bulk port. One forwarded call (connect, HELLO, the call) is bounded by
# the forward timeout: past it the owner is a miss (reads) or a skipped write. Short, since a
# miss only costs a recomputation; long enough for a 64 MiB block over a busy link.
forward_timeout_seconds_default = 1.0
forward_timeout_seconds_min = 0.05
forward_timeout_seconds_max = 30.0
# The circuit breaker per owner (the SDK's): this many failures in a row open it; for
# forward_breaker_open_seconds calls skip that node (a miss at once), then one probe goes through.
forward_breaker_failures = 3
forward_breaker_open_seconds = 1.0
# Cached bulk clients, one per (node, tenant, namespace); each keeps this many idle connections.
forward_clients_max = 256
forward_pool_connections = 4
# One peer's answer to a whole-pod listing's page (GET /v1/{ns}/blocks: at most list_keys_max
# keys of up to key_bytes_max each, plus their S3 metadata and JSON framing).
forward_list_response_bytes_max = 16 * MiB
# An owner that answers NamespaceNotFound for a namespace this node has (created at another
# node a moment ago, not yet applied there from etcd's watch) is asked again after this pause,
# while the call's forward timeout lasts; past it the NoSuchBucket stands.
forward_namespace_retry_seconds = 0.05

assert (forward_timeout_seconds_min <= forward_timeout_seconds_default
        <= forward_timeout_seconds_max)
assert forward_breaker_failures >= 1 and forward_breaker_open_seconds > 0
assert 0 < forward_namespace_retry_seconds < forward_timeout_seconds_default
assert forward_list_response_bytes_max >= list_keys_max * 4 * KiB
assert forward_clients_max >= 1 and 1 <= forward_pool_connections <= connections_max

# A namespace's replica count in a pod (copies of each block on distinct nodes; the SDK's
# kvstore_client.podlimits.replicas_max is the same bound).
namespace_replicas_max = 8
# Copy-forward: after a read that missed at a block's owner and hit at its previous owner, the
# block is copied to the owner in the background. At most this many copies run at once on one
# node; a copy past it is dropped (counted: kvstore_copy_forward_total{outcome="dropped"}): the
# next read of the block finds it at the previous owner again and tries once more.
copy_forward_inflight_max = 16

assert 1 <= namespace_replicas_max <= pod_nodes_max
assert copy_forward_inflight_max >= 1

# --- Redis protocol (RESP) listener (kvstore.protocol.resp, kvstore.transport.resp_server) ---

# An inline command (a line not starting with '*', e.g. typed into telnet): Redis's own cap.
resp_inline_bytes_max = 64 * KiB
# A '*N' or '$N' header line (digits and CRLF): anything longer is not a header.
resp_header_bytes_max = 64
# Arguments of one command: an MSET of a full batch (key and value each) plus its name.
resp_array_len_max = 2 * batch_keys_max + 1
# One bulk argument (a value): at most one block, the bound every front end has.
resp_bulk_bytes_max = block_bytes_max
# A bulk argument past resp_bulk_bytes_max but within this is read and dropped, and its command
# answered with an error (the connection stays usable); a longer one is a protocol error (the
# connection is closed): a peer cannot make the server read an unbounded value.
resp_oversized_skip_bytes_max = 2 * block_bytes_max
# All bulk arguments of one command together (an MSET): one connection's in-flight window.
resp_command_bytes_max = connection_inflight_bytes_max
# Bulk arguments at least this long are received straight into an aligned buffer the engine
# writes in place; shorter ones are cut out of the receive buffer.
resp_direct_bytes_min = 64 * KiB
# The per-connection receive buffer: holds a maximal inline command or a short bulk argument.
resp_recv_buffer_bytes = 256 * KiB
# Commands of one connection decoded but not answered yet (pipelining): past it reading pauses.
resp_pipeline_commands_max = connection_inflight_requests_max
# Value bytes of one connection's decoded, unanswered commands: past it decoding pauses (the
# bulk port's PUT window).
resp_inflight_bytes_max = connection_inflight_bytes_max
# Blocks one MGET opens ahead of the socket (as the bulk port's GET_BATCH does), and reads
# (GET, MGET) of one connection running at once: the leases one connection can hold.
resp_read_ahead_blocks = engine_threads
# Before AUTH (with credentials) a peer is nobody: its commands are decoded one at a time and
# may carry only short arguments, so it cannot make the server buffer a value (Redis 7 limits
# unauthenticated clients the same way: 10 arguments, 16 KiB each).
resp_preauth_array_len_max = 10
resp_preauth_bulk_bytes_max = 16 * KiB

assert resp_header_bytes_max + resp_direct_bytes_min + 2 <= resp_recv_buffer_bytes
assert resp_inline_bytes_max < resp_recv_buffer_bytes
assert resp_direct_bytes_min <= resp_bulk_bytes_max <= resp_oversized_skip_bytes_max
assert resp_bulk_bytes_max <= resp_command_bytes_max <= batch_bytes_max
assert resp_array_len_max >= 2 * batch_keys_max + 1 and resp_pipeline_commands_max >= 1
assert resp_preauth_bulk_bytes_max < resp_direct_bytes_min and resp_preauth_array_len_max >= 7
assert resp_command_bytes_max <= resp_inflight_bytes_max

# --- KV events for routers (--kv-events; kvstore.transport.kv_events) -----------------------

# Events waiting for the publisher thread: past it new events are dropped and counted (a slow
# or absent subscriber never slows a put, and never grows memory).
kv_events_queue_max = 100_000
# Events one published batch carries at most (vLLM publishes one batch per scheduler step).
kv_events_batch_max = 1024
# ZMQ's own send high-water mark (messages queued per subscriber before ZMQ drops).
kv_events_hwm_messages = 100_000
# Token ids read from one block's metadata (``x-amz-meta-kv-token-ids``; S3's metadata cap
# bounds them first): more is not a block of a KV cache.
kv_events_token_ids_max = 4096
# How long a stopping server keeps publishing what is queued before it closes the socket.
kv_events_close_seconds = 1.0

assert 1 <= kv_events_batch_max <= kv_events_queue_max
assert 0 < kv_events_close_seconds < shutdown_seconds_max

# --- G4: the object-store tier below flash (kvstore.g4, issue 13) ---------------------------
# Retiring segments' live blocks are packed into objects of at most this many bytes (a few per
# segment: measured in docs/ARCHITECTURE.md, "G4"); a record larger than it gets one object.
g4_object_bytes_max = 16 * MiB
# Spill queue: retiring segments waiting for upload stay on flash, pinned (their files are kept
# past reclaim), so the queue is bounded in segments and in bytes; past either, a retiring
# segment is not spilled (its blocks are evicted as without G4, counted).
g4_spill_queue_segments_max = 8
g4_spill_queue_bytes_max = 2 * GiB
# Upload bandwidth: a token bucket (bytes per second; burst one object).
g4_spill_bytes_per_second_default = 256 * MiB
g4_spill_bytes_per_second_min = 1 * MiB
# One G4 request: connect and whole-request timeouts. A read-through runs on an engine thread
# and past its timeout is a miss; an upload is retried later.
g4_connect_timeout_seconds = 1.0
g4_read_timeout_seconds = 2.0
g4_upload_timeout_seconds = 60.0
# After this many failed requests in a row G4 counts as down: reads miss at once (no request)
# for g4_down_seconds, then one request probes it; uploads wait as long before retrying.
g4_breaker_failures = 3
g4_down_seconds = 1.0
# GC: expired and dropped blocks are swept this often; an object with no live block is deleted.
g4_gc_interval_seconds = 30.0
# Read-through latencies kept for the p50/p99 gauges (a ring of the newest reads).
g4_latency_samples = 1024

assert g4_object_bytes_max >= block_bytes_max // 4 and g4_object_bytes_max % io_alignment_bytes == 0
assert g4_spill_queue_segments_max >= 1 and g4_spill_queue_bytes_max >= segment_bytes_default
assert g4_spill_bytes_per_second_min <= g4_spill_bytes_per_second_default
assert 0 < g4_connect_timeout_seconds <= g4_read_timeout_seconds <= g4_upload_timeout_seconds
assert g4_breaker_failures >= 1 and g4_down_seconds > 0 and g4_latency_samples >= 100

# --- Relations between the bounds (checked at import: a bad edit fails at once) -------------

# On-disk geometry: segments are whole pages, and a default segment holds a maximal block with
# its header page (a --segment-size below that refuses the largest blocks: EntityTooLarge).
assert all(b % io_alignment_bytes == 0 for b in (
    segment_bytes_min, segment_bytes_default, segment_bytes_max, write_chunk_bytes_max,
    nixl_staging_chunk_bytes)), "segments, write chunks and NIXL chunks are whole pages"
assert segment_bytes_min <= segment_bytes_default <= segment_bytes_max
assert block_bytes_max + io_alignment_bytes <= segment_bytes_default, "a block fits a segment"
assert capacity_segments_min >= 2, "one segment to write, one to reclaim"
# A record's header is one page: its namespace, key and S3 user metadata fit in it with room
# for the fixed fields and S3's own metadata (content type, checksums); the chunk-checksum table
# takes what is left, its chunks larger than record_chunk_bytes when that is short (format.py).
assert (namespace_bytes_max + key_bytes_max + s3_user_metadata_bytes_max + 512
        <= io_alignment_bytes)
assert 0 < capacity_low_watermark < capacity_high_watermark <= 1.0
assert 0 < reinsert_fraction_max < 1 and 0 < dram_fraction_of_memory_max < 1
assert block_bytes_max <= dram_bytes_default, "the default DRAM tier holds a maximal block"

# Batches: what one request may carry fits what carries it.
assert 1 <= delete_objects_max <= batch_keys_max, "DeleteObjects is one batched delete"
assert list_keys_max <= batch_keys_max
assert 1 <= put_coalesce_batch_max <= batch_keys_max, "a coalesced batch is one put_many"
assert put_coalesce_pipeline_puts_max >= put_coalesce_batch_max
assert put_coalesce_batch_bytes_max >= write_wave_chunks_max * io_alignment_bytes
assert put_coalesce_wait_seconds_max >= write_wait_seconds_max
# A /v1 body holds a full batch or chain of maximal keys, JSON-quoted and comma-separated.
assert max(batch_keys_max, chain_keys_max) * (key_bytes_max + 3) <= control_body_bytes_max
# A bulk frame header holds a full batch of 64-character keys (vLLM's sha256 hex) with their
# lengths and checksums (msgpack: a 2-byte string header, 9-byte integers): maximal 1 KiB keys
# fill it sooner, and a header past frame_header_bytes_max is refused (a FrameTooLarge).
assert batch_keys_max * (64 + 2 + 9 + 9) <= frame_header_bytes_max
assert http_body_bytes_max >= block_bytes_max and multipart_staged_bytes_max >= block_bytes_max
assert 1 <= multipart_parts_max and 1 <= multipart_uploads_max
assert 0 < multipart_part_bytes_min <= block_bytes_max
assert multipart_completed_remembered_max >= 1 and conditional_write_locks >= 1
# a completed object's part sizes ride in its record header: few enough parts to fit
assert block_bytes_max // multipart_part_bytes_min + 1 <= 64

# Windows, buffers and regions: each holds at least one maximal block or one request's work.
assert 0 < write_buffer_low_bytes < write_buffer_high_bytes
assert write_chunk_bytes_max * write_wave_chunks_max <= buffer_pool_idle_bytes_max
assert min(shm_region_bytes_max, nixl_region_bytes_max) >= block_bytes_max
assert nixl_staging_chunks >= 1 and nixl_staging_chunk_bytes <= nixl_region_bytes_max
assert connection_inflight_requests_max >= 1 and engine_threads >= 1
assert engine_queue_max >= engine_threads
assert connection_timeout_seconds_min <= engine_call_timeout_seconds_default \
    <= connection_timeout_seconds_max
assert uring_entries & (uring_entries - 1) == 0 and 1 <= uring_entries <= 4096

# Timeouts: the bounds they are checked against, and the order they fire in.
assert body_rate_grace_seconds_default <= body_rate_window_seconds_default
assert 0 < timeout_close_grace_seconds < shutdown_seconds_max
assert 0 < lease_seconds_max <= ttl_seconds_max
assert clock_skew_seconds_max < presign_seconds_max
assert 0 < s3_domain_bytes_max and s3_domain_bytes_max + namespace_bytes_max + 1 <= 253

# --- quotas (kvstore.service.quota) --------------------------------------------------------
# Past a namespace's or tenant's byte quota (evict mode), a write deletes the namespace's oldest
# blocks until the write fits with this fraction of the quota to spare, so one eviction scan
# (which reads the segment summaries) pays for many writes rather than one each.
quota_evict_slack_fraction = 0.05
assert 0 <= quota_evict_slack_fraction < 0.5
