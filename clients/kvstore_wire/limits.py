"""The bounds both ends of the bulk port know: sizes of keys, blocks, batches, frames, windows.

The server's ``kvstore.limits`` imports these (they are the same objects: one definition) and
adds the bounds only the server has (segments, the DRAM tier, timeouts...). Names carry their
unit last. Past a bound the answer is a typed error (``kvstore_wire.errors``).
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# --- Keys and namespaces ------------------------------------------------------------------

# S3 caps object keys at 1024 bytes; block keys are 32 hex chars, engines' own keys (vLLM's
# sha256 hex) are 64. The record header stores the key inline, so this also bounds the header.
key_bytes_max = 1024

# S3 bucket name rules: 3..63 characters.
namespace_bytes_min = 3
namespace_bytes_max = 63

# --- Blocks, batches and chains -----------------------------------------------------------

# One KV block (one object). 64 MiB covers a 16-token block of a 405B model at fp16 with room;
# larger values belong in several blocks. Must fit in one segment with its header.
block_bytes_max = 64 * MiB

# Keys in one batch request (exists, delete, get, put). A 128k-token prompt at 16 tokens per
# block is 8192 blocks.
batch_keys_max = 8192

# Keys in one longest-prefix lookup chain (same reasoning as the batch bound).
chain_keys_max = 8192

# Bytes of payload one batched GET or PUT may move in one request.
batch_bytes_max = 1 * GiB

# Every integer of a model layout (layers, heads, head size, tokens per block, TP size and rank)
# is at most this: far past any model, and well inside what the fingerprint's msgpack encoding
# and every language's 32-bit integers hold.
layout_int_max = 2**31 - 1
# Every string of a layout (model, dtype, revision, tenant salt), in characters.
layout_str_chars_max = 256

# --- Leases and TTL -----------------------------------------------------------------------

# A lookup may pin found blocks so eviction cannot take them before the engine reads them.
# Leases are short: a client that dies must not pin capacity for long.
lease_seconds_max = 60.0

# Per-block TTL: one year is "forever" for a KV cache.
ttl_seconds_max = 365 * 24 * 3600

# --- The bulk port ------------------------------------------------------------------------

# Concurrent client connections per listener (the server's default of --max-connections); a
# client's connection pool stays under it too.
connections_max = 1024

# A bulk frame's msgpack header: small, because it carries only metadata.
frame_header_bytes_max = 1 * MiB

# A block's opaque metadata on the wire (PUT_BATCH ``metas``, BLOCK ``meta``: the S3 headers a
# node forwards to the block's owner). It rides in a frame header; a server stores it in the
# block's record header page, whose own bound is tighter.
block_meta_bytes_max = 4 * KiB

# Bytes of requests one bulk connection may have in flight before the server stops reading.
connection_inflight_bytes_max = 256 * MiB

# Pipelined requests one bulk connection may have in flight.
connection_inflight_requests_max = 64

# A same-host client's shared-memory region (bulk shm transport): the server maps it, so it
# counts against the server's address space; one region per connection.
shm_region_bytes_max = 16 * GiB

# A client's NIXL agent metadata (UCX worker addresses, about 0.5 KiB here; more with several
# rails/backends). It rides in a frame header, so it must stay well under frame_header_bytes_max.
nixl_metadata_bytes_max = 64 * KiB

# A client's NIXL-registered region: the server only addresses into it (never maps it), but
# offsets and sizes are still checked against a bound, like the shm region.
nixl_region_bytes_max = 64 * GiB

assert namespace_bytes_min <= namespace_bytes_max
assert block_bytes_max <= batch_bytes_max, "one block must fit in a batch"
assert block_bytes_max <= connection_inflight_bytes_max, "one PUT must fit in the window"
assert nixl_metadata_bytes_max * 4 <= frame_header_bytes_max, "NIXL metadata rides in a header"
assert 0 < layout_int_max < 2**32, "layout integers fit every language's 32-bit types"
assert block_meta_bytes_max * 64 <= frame_header_bytes_max, "a batch's metadata rides in a header"
