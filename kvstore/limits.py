"""Every bound of kvstore, in one place.

Names carry their unit last (``block_bytes_max``, ``lease_seconds_max``). Each bound says why it
exists. Code never hard-codes a bound: it imports it from here, so the limits a user hits are the
limits this file documents. Past a bound the answer is a typed error (see ``kvstore.errors``),
never a crash and never an unbounded queue.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

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

# S3 caps object keys at 1024 bytes; block keys are 32 hex chars, engines' own keys (vLLM's
# sha256 hex) are 64. The record header stores the key inline, so this also bounds the header.
key_bytes_max = 1024

# S3 bucket name rules: 3..63 characters.
namespace_bytes_min = 3
namespace_bytes_max = 63

# Namespaces (buckets) one node holds: the per-namespace state is small, but not free.
namespaces_max = 4096

# --- Blocks -------------------------------------------------------------------------------

# One KV block (one object). 32 MiB covers a 16-token block of a 405B model at fp16 with room;
# larger values belong in several blocks. Must fit in one segment with its header.
block_bytes_max = 64 * MiB

# --- Batches and chains -------------------------------------------------------------------

# Keys in one batch request (exists, delete, get, put). A 128k-token prompt at 16 tokens per
# block is 8192 blocks.
batch_keys_max = 8192

# Keys in one longest-prefix lookup chain (same reasoning as the batch bound).
chain_keys_max = 8192

# Bytes of payload one batched GET or PUT may move in one request.
batch_bytes_max = 1 * GiB

# --- Leases and TTL -----------------------------------------------------------------------

# A lookup may pin found blocks so eviction cannot take them before the engine reads them.
# Leases are short: a client that dies must not pin capacity for long.
lease_seconds_max = 60.0
lease_seconds_default = 5.0

# Blocks pinned by leases at once, across all clients: pins hold capacity hostage.
leased_blocks_max = 1_000_000

# Per-block TTL: one year is "forever" for a KV cache.
ttl_seconds_max = 365 * 24 * 3600

# --- Capacity -----------------------------------------------------------------------------

# Reclaim starts above the high watermark and stops at the low one (fractions of capacity).
capacity_high_watermark = 0.95
capacity_low_watermark = 0.85

# Smallest flash budget: at least two segments (one active, one to reclaim).
capacity_segments_min = 2

# Default DRAM tier: small enough to start anywhere.
dram_bytes_default = 256 * MiB

# Blocks the index may hold: bounds memory at ~100 bytes/block => ~1.6 GB at the max.
index_blocks_max = 16_000_000

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

# Concurrent client connections per listener.
connections_max = 1024

# A bulk frame's msgpack header: small, because it carries only metadata.
frame_header_bytes_max = 1 * MiB

# Bytes of requests one bulk connection may have in flight before the server stops reading.
connection_inflight_bytes_max = 256 * MiB

# Pipelined requests one bulk connection may have in flight.
connection_inflight_requests_max = 64

# A same-host client's shared-memory region (bulk shm transport): the server maps it, so it
# counts against the server's address space; one region per connection.
shm_region_bytes_max = 16 * GiB

# Write-buffer water marks for flow control on the bulk port.
write_buffer_high_bytes = 8 * MiB
write_buffer_low_bytes = 2 * MiB

# HTTP request body: a multipart part or a single PutObject.
http_body_bytes_max = block_bytes_max

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

# Presigned URL lifetime (S3 caps it at 7 days).
presign_seconds_max = 7 * 24 * 3600

# SigV4 clock skew tolerated.
clock_skew_seconds_max = 15 * 60

# S3 user metadata (x-amz-meta-*) per object: S3's own cap; it rides in the record's meta bytes.
s3_user_metadata_bytes_max = 2 * KiB

# XML request bodies (DeleteObjects with 1000 keys of 1 KiB, CompleteMultipartUpload with
# 10,000 parts) fit well under this; anything larger is refused before parsing.
s3_xml_body_bytes_max = 4 * MiB

# Bytes of multipart parts staged in memory across all open uploads: parts wait in RAM until
# Complete, so their total must not grow without bound.
multipart_staged_bytes_max = 2 * GiB

# An upload untouched this long is dropped (its parts freed) when room is needed.
multipart_idle_seconds_max = 3600.0

# One device write of a batched put: packs many small records into one I/O (a 4 KiB O_DIRECT
# write costs about as much as a 1 MiB one here) without holding huge buffers.
write_chunk_bytes_max = 8 * MiB

# --- NIXL transport (optional extra; kvstore.transport.nixl) -------------------------------

# A client's NIXL agent metadata (UCX worker addresses, about 0.5 KiB here; more with several
# rails/backends). It rides in a frame header, so it must stay well under frame_header_bytes_max.
nixl_metadata_bytes_max = 64 * KiB

# A client's NIXL-registered region: the server only addresses into it (never maps it), but
# offsets and sizes are still checked against a bound, like the shm region.
nixl_region_bytes_max = 64 * GiB

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

# Chunks one batched put reserves and submits together (write_chunk_bytes_max each): the queue
# depth one put_many gives the device, and the buffers it holds at once (64 MiB).
write_wave_chunks_max = 8

# Threads that run engine calls for the asyncio edges. Flash I/O blocks a thread per request,
# so this is the queue depth the edges can give the device (reads reach fio's QD8 figure at 8).
engine_threads = 8

# The DRAM tier may take at most this fraction of the machine's memory: the index, buffer pools
# and the OS need the rest (a larger --dram is refused at start, not discovered by the OOM killer).
dram_fraction_of_memory_max = 0.8
