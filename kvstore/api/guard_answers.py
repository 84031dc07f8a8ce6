"""The HTTP guard's own answers (``kvstore.api.http_guard``): what it says when it refuses or
times out a request before, or instead of, the app. S3 XML, or JSON on the control paths (as the
apps answer); each closes the connection."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from kvstore import errors as E
from kvstore import limits
from kvstore.api.app import Receive, Scope, Send, is_control_path
from kvstore.api.errors import S3Error, json_error_bytes, request_ids, s3_error_response


def _error_bytes(exc: E.KVStoreError, path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    if path and is_control_path(path):
        status, body = json_error_bytes(exc, request_ids.next())
        return status, [(b"content-type", b"application/json")], body
    return s3_error_response(exc, path or "/", request_ids.next())


async def probes_only(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer on a probe-only slot to anything but a health probe: 503, then close."""
    exc = E.Busy("all connection slots are taken; only /healthz and /readyz are served now")
    status, headers, body = _error_bytes(exc, scope.get("path", "/"))
    headers = [*headers, (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def timeout_response(path: str) -> bytes:
    """A complete ``408 RequestTimeout`` response that closes the connection."""
    return closing_response(
        E.RequestTimeout("the request was not received in time; retry on a new connection"), path)


def header_too_large_response(path: str) -> bytes:
    """A complete ``400 RequestHeaderSectionTooLarge`` response that closes the connection."""
    return closing_response(S3Error(
        "RequestHeaderSectionTooLarge", "Your request header section exceeds the maximum "
        f"allowed size ({limits.http_header_bytes_max} bytes for the request line and "
        "headers)."), path)


def closing_response(exc: E.KVStoreError, path: str) -> bytes:
    """A complete error response (S3 XML, or JSON on control paths) with connection: close."""
    status, headers, body = _error_bytes(exc, path)
    lines = [STATUS_LINE[status]]
    for name, value in [*headers, (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")]:
        lines.append(name + b": " + value + b"\r\n")
    return b"".join([*lines, b"\r\n", body])
