"""One error hierarchy for kvstore.

Every error has a stable numeric ``code`` (shared by the bulk protocol's error frames), a stable
``name`` (used as the S3 error code where one fits), a ``retryable`` flag for clients and an
``http_status`` hint. The HTTP layer maps these to responses in exactly one place; the bulk
protocol carries ``code`` in its error frames; the client SDK turns codes back into classes with
``error_from_code``.

The errors that cross the wire are defined once, in ``kvstore_wire.errors`` (the client
distribution, ``clients/``), and re-exported here as the same classes; the errors that never
leave the server are defined below.
"""

from __future__ import annotations

import errno

from kvstore_wire.errors import (
    AccessDenied,
    AlreadyExists,
    AuthenticationFailed,
    Busy,
    CapacityExhausted,
    ChecksumMismatch,
    EntityTooLarge,
    InsufficientStorage,
    InvalidArgument,
    InvalidKey,
    InvalidNamespace,
    KVStoreError,
    LimitExceeded,
    NamespaceNotEmpty,
    NamespaceNotFound,
    NotFound,
    NotImplementedFeature,
    PreconditionFailed,
    ProtocolError,
    QuotaExceeded,
    RequestTimeout,
    ShuttingDown,
    StorageError,
    all_errors,
    assert_codes_unique,
    error_from_code,
)

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "AuthenticationFailed",
    "Busy",
    "CapacityExhausted",
    "ChecksumMismatch",
    "CorruptRecord",
    "DataDirLocked",
    "ERRORS_BY_CODE",
    "EntityTooLarge",
    "InsufficientStorage",
    "InvalidArgument",
    "InvalidKey",
    "InvalidNamespace",
    "KVStoreError",
    "LimitExceeded",
    "MasterKeyError",
    "NamespaceNotEmpty",
    "NamespaceNotFound",
    "NotFound",
    "NotImplementedFeature",
    "PreconditionFailed",
    "ProtocolError",
    "QuotaExceeded",
    "RequestTimeout",
    "ShuttingDown",
    "StorageError",
    "error_from_code",
]


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # a full file system: InsufficientStorage


def no_space(exc: BaseException) -> InsufficientStorage | None:
    """``InsufficientStorage`` for an ``OSError`` of a full file system, else None."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return InsufficientStorage(f"no space left for the data dir: {exc.strerror}")
    return None


class CorruptRecord(StorageError):
    """A record failed its checksum or key check. Never surfaced as data: a read turns it into
    a miss."""

    code, name, retryable = 61, "CorruptRecord", False


class DataDirLocked(KVStoreError):
    """Another process (or another open engine) owns the data directory: its lock file is held.
    ``detail`` carries ``data_dir`` and ``pid`` (0 when the holder's PID could not be read)."""

    code, name = 62, "DataDirLocked"


class MasterKeyError(KVStoreError):
    """The master key does not open this store (a wrong key, none for a store that holds
    encrypted blocks, a malformed key file). The engine refuses to open: nothing is dropped."""

    code, name = 63, "MasterKeyError"


assert_codes_unique()
# Every code, the server-only ones included.
ERRORS_BY_CODE: dict[int, type[KVStoreError]] = {c.code: c for c in all_errors()}
