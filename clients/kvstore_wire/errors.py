"""One error hierarchy for kvstore: the errors that cross the wire.

Every error has a stable numeric ``code`` (shared by the bulk protocol's error frames), a stable
``name`` (used as the S3 error code where one fits), a ``retryable`` flag for clients and an
``http_status`` hint. The HTTP layer maps these to responses in exactly one place; the bulk
protocol carries ``code`` in its error frames; the client SDK turns codes back into classes with
``error_from_code``. The server (``kvstore.errors``) re-exports these classes (the same
objects) and adds the errors that never leave it.
"""

from __future__ import annotations


class KVStoreError(Exception):
    code: int = 1
    name: str = "InternalError"
    retryable: bool = False
    http_status: int = 500

    def __init__(self, message: str = "", **detail: object) -> None:
        super().__init__(message or self.name)
        self.message = message or self.name
        self.detail = detail

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "name": self.name, "message": self.message}


class InvalidArgument(KVStoreError):
    code, name, http_status = 2, "InvalidArgument", 400


class InvalidKey(InvalidArgument):
    code, name = 3, "InvalidKey"


class InvalidNamespace(InvalidArgument):
    code, name = 4, "InvalidBucketName"


class LimitExceeded(InvalidArgument):
    """A bounded input went past its bound (see kvstore_wire.limits, kvstore.limits)."""

    code, name = 5, "LimitExceeded"


class EntityTooLarge(LimitExceeded):
    code, name = 6, "EntityTooLarge"


class ChecksumMismatch(InvalidArgument):
    """The payload does not match the checksum the sender declared."""

    code, name = 7, "BadDigest"


class NotFound(KVStoreError):
    code, name, http_status = 10, "NoSuchKey", 404


class NamespaceNotFound(NotFound):
    code, name = 11, "NoSuchBucket"


class AlreadyExists(KVStoreError):
    code, name, http_status = 12, "AlreadyExists", 409


class NamespaceNotEmpty(KVStoreError):
    code, name, http_status = 13, "BucketNotEmpty", 409


class PreconditionFailed(KVStoreError):
    code, name, http_status = 14, "PreconditionFailed", 412


class QuotaExceeded(KVStoreError):
    """A write would take a namespace or a tenant past its byte quota, and the quota is strict
    (``quota_mode = "strict"``; the default mode evicts the namespace's oldest blocks instead).
    S3 answers 403 QuotaExceeded (the code AWS uses for service quotas): clients do not retry a
    403, and a retry would not help until something is deleted."""

    code, name, http_status = 15, "QuotaExceeded", 403


class AccessDenied(KVStoreError):
    code, name, http_status = 20, "AccessDenied", 403


class AuthenticationFailed(AccessDenied):
    code, name = 21, "SignatureDoesNotMatch"


class Busy(KVStoreError):
    """Temporarily over a capacity or concurrency bound; retry later."""

    code, name, retryable, http_status = 30, "SlowDown", True, 503


class CapacityExhausted(Busy):
    """Nothing can be reclaimed right now (all space pinned by leases or readers)."""

    code, name = 31, "InsufficientCapacity"


class ShuttingDown(Busy):
    code, name = 32, "ServiceUnavailable"


class ProtocolError(KVStoreError):
    """A peer sent bytes that are not a legal frame in the connection's state."""

    code, name, http_status = 40, "ProtocolError", 400


class RequestTimeout(KVStoreError):
    """A peer was too slow or silent: headers, body or handshake not received in time, or an
    idle connection closed (``kvstore.limits``, connection timeouts). Retry on a new
    connection."""

    code, name, retryable, http_status = 41, "RequestTimeout", True, 408


class NotImplementedFeature(KVStoreError):
    code, name, http_status = 50, "NotImplemented", 501


class StorageError(KVStoreError):
    """The device failed an I/O; the block is treated as missing."""

    code, name, retryable, http_status = 60, "InternalError", True, 500


class InsufficientStorage(StorageError):
    """The file system holding the data dir is full (ENOSPC, EDQUOT): the write was not done
    and nothing acknowledged; reads keep working. Retryable: deleting blocks, or the disk
    getting space back, lets writes through again. HTTP 507 Insufficient Storage (botocore does
    not retry it: no retry storm against a full disk)."""

    code, name, retryable, http_status = 64, "InsufficientStorage", True, 507


def all_errors() -> list[type[KVStoreError]]:
    """Every error class defined so far (the server adds its own subclasses)."""
    out: list[type[KVStoreError]] = []
    todo: list[type[KVStoreError]] = [KVStoreError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def assert_codes_unique() -> None:
    classes = all_errors()
    assert len({c.code for c in classes}) == len(classes), "error codes must be unique"


assert_codes_unique()
ERRORS_BY_CODE: dict[int, type[KVStoreError]] = {c.code: c for c in all_errors()}


def error_from_code(code: int, message: str = "") -> KVStoreError:
    """Rebuild an error from its stable code (used by clients reading error frames); a code
    this side does not know becomes a plain ``KVStoreError``."""
    cls = ERRORS_BY_CODE.get(code, KVStoreError)
    return cls(message)
