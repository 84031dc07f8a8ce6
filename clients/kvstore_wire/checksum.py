"""The block checksum: one function for the SDK (PUT: declared; GET: verified), the bulk, shm
and NIXL transports and the server's engine (verified before a PUT is stored, stored in the
record).

xxh3-64: fast, releases the GIL on large buffers; payloads are not adversarial (the checksum
catches corruption in transit and at rest, it is not a MAC).
"""

from __future__ import annotations

from typing import Any

import xxhash

CHECKSUM_MAX = (1 << 64) - 1  # a block checksum is an unsigned 64-bit integer on the wire


def block_checksum(buf: Any) -> int:
    """xxh3-64 of anything with the buffer protocol (bytes, memoryview, mmap, numpy array)."""
    return xxhash.xxh3_64_intdigest(buf)
