"""The one place that turns errors into HTTP answers.

Handlers raise ``kvstore.errors.KVStoreError`` subclasses (engine, limits, auth) or ``S3Error``
(codes that only the S3 protocol has: InvalidDigest, InvalidRange, NoSuchUpload, ...). This module
maps both to a status code and a body: S3 XML (``Code``, ``Message``, ``Resource``,
``RequestId``) for the S3 surface, JSON for ``/v1``. Anything else is a bug: it answers 500
``InternalError`` with a generic message, and the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from xml.sax.saxutils import escape

from kvstore import errors as E

log = logging.getLogger("kvstore.api")

# S3-only error codes and their HTTP status (AWS S3 API reference, "Error responses").
S3_STATUS: dict[str, int] = {
    "AccessControlListNotSupported": 400,
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketAclWithObjectOwnership": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartNumber": 416,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MaxMessageLengthExceeded": 400,
    "MetadataTooLarge": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "MissingSecurityHeader": 400,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "NotModified": 304,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "SignatureDoesNotMatch": 403,
    "SlowDown": 503,
    "TooManyParts": 400,
    "XAmzContentChecksumMismatch": 400,
}

# kvstore error names that have a better-known S3 spelling.
_S3_NAME: dict[str, str] = {
    "InvalidKey": "InvalidArgument",
    "ProtocolError": "InvalidRequest",
    "CorruptRecord": "InternalError",
    "AlreadyExists": "BucketAlreadyExists",
}


class S3Error(E.KVStoreError):
    """An error only the S3 protocol knows. ``name`` is the S3 code; the status comes from
    ``S3_STATUS``. ``headers`` are extra response headers (e.g. ``Content-Range`` for 416)."""

    code = 70

    def __init__(self, name: str, message: str = "", *, headers: dict[str, str] | None = None,
                 elements: tuple[tuple[str, str], ...] = (), **detail: object) -> None:
        super().__init__(message or name, **detail)
        self.name = name
        self.http_status = S3_STATUS.get(name, 400)
        self.headers = headers or {}
        self.elements = elements  # extra (tag, text) of the XML body, after Message, as AWS's


class RequestExpired(E.AccessDenied):
    """A presigned URL past its expiry: AccessDenied (as before, to every front end), whose S3
    answer also carries AWS's X-Amz-Expires, Expires and ServerTime elements."""

    def __init__(self, elements: tuple[tuple[str, str], ...]) -> None:
        super().__init__("Request has expired")
        self.elements = elements


_INTERNAL_MESSAGE = "We encountered an internal error. Please try again."


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, S3-style code, message) for any exception; logs the unexpected ones."""
    if isinstance(exc, S3Error):
        return exc.http_status, exc.name, exc.message
    if isinstance(exc, E.KVStoreError):
        name = _S3_NAME.get(exc.name, exc.name)
        if isinstance(exc, E.InsufficientStorage):  # a full disk: say so (507), no details
            log.warning("storage error: %s", exc.message)
            return exc.http_status, exc.name, "The server's storage is full; retry later"
        if isinstance(exc, E.StorageError):  # device details stay in the log
            log.warning("storage error: %s", exc.message)
            return 500, "InternalError", _INTERNAL_MESSAGE
        return exc.http_status, name, exc.message
    log.error("unexpected error in a request handler", exc_info=exc)
    return 500, "InternalError", _INTERNAL_MESSAGE


class RequestIds:
    """Unique, cheap request ids: a per-process random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex().upper()
        self._count = itertools.count(1)  # next() on a count is atomic under the GIL: no lock

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):012X}"


request_ids = RequestIds()


def s3_error_body(name: str, message: str, resource: str, request_id: str,
                  elements: tuple[tuple[str, str], ...] = ()) -> bytes:
    extra = "".join(f"<{t}>{escape(v)}</{t}>" for t, v in elements)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
        f"<Code>{escape(name)}</Code><Message>{escape(message)}</Message>{extra}"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId>"
        "</Error>"
    ).encode()


def s3_error_response(
    exc: BaseException, resource: str, request_id: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and XML body of the S3 answer to ``exc``."""
    status, name, message = classify(exc)
    headers = [(b"x-amz-request-id", request_id.encode())]
    if isinstance(exc, S3Error):
        headers.extend((k.encode(), v.encode("latin-1")) for k, v in exc.headers.items())
    if status == 304:
        return status, headers, b""
    body = s3_error_body(name, message, resource, request_id,
                         exc.elements if isinstance(exc, (S3Error, RequestExpired)) else ())
    headers.append((b"content-type", b"application/xml"))
    if isinstance(exc, E.KVStoreError) and exc.retryable and status == 503:
        headers.append((b"retry-after", b"1"))
    return status, headers, body


def json_error(exc: BaseException, request_id: str = "") -> tuple[int, dict[str, object]]:
    """Status and JSON-able body of the ``/v1`` answer to ``exc``."""
    status, name, message = classify(exc)
    code = exc.code if isinstance(exc, E.KVStoreError) else E.KVStoreError.code
    retryable = isinstance(exc, E.KVStoreError) and exc.retryable
    body: dict[str, object] = {
        "error": {"code": code, "name": name, "message": message, "retryable": retryable},
    }
    if request_id:
        body["request_id"] = request_id
    return status, body


def json_error_bytes(exc: BaseException, request_id: str = "") -> tuple[int, bytes]:
    status, body = json_error(exc, request_id)
    return status, json.dumps(body).encode()
