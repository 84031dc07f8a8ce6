"""The one error mapper (kvstore/api/errors.py): S3 XML and /v1 JSON forms."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET

import pytest

from kvstore import errors as E
from kvstore.api.errors import S3Error, json_error, json_error_bytes, s3_error_response


@pytest.mark.parametrize("exc,status,code", [
    (E.NamespaceNotFound("x"), 404, "NoSuchBucket"),
    (E.NotFound("x"), 404, "NoSuchKey"),
    (E.InvalidNamespace("x"), 400, "InvalidBucketName"),
    (E.EntityTooLarge("x"), 400, "EntityTooLarge"),
    (E.ChecksumMismatch("x"), 400, "BadDigest"),
    (E.AccessDenied("x"), 403, "AccessDenied"),
    (E.AuthenticationFailed("x"), 403, "SignatureDoesNotMatch"),
    (E.NamespaceNotEmpty("x"), 409, "BucketNotEmpty"),
    (E.NotImplementedFeature("x"), 501, "NotImplemented"),
    (E.CapacityExhausted("x"), 503, "InsufficientCapacity"),
    (E.InvalidKey("x"), 400, "InvalidArgument"),
    (S3Error("InvalidRange", "x"), 416, "InvalidRange"),
    (S3Error("InvalidDigest", "x"), 400, "InvalidDigest"),
    (S3Error("XAmzContentChecksumMismatch"), 400, "XAmzContentChecksumMismatch"),
    (S3Error("RequestTimeTooSkewed"), 403, "RequestTimeTooSkewed"),
])
def test_s3_xml_form(exc: Exception, status: int, code: str) -> None:
    st, headers, body = s3_error_response(exc, "/bkt/key", "RID1")
    assert st == status
    el = ET.fromstring(body)
    assert el.tag == "Error"
    assert el.findtext("Code") == code
    assert el.findtext("Resource") == "/bkt/key"
    assert el.findtext("RequestId") == "RID1"
    assert (b"content-type", b"application/xml") in headers


def test_unexpected_exception_is_500_without_details(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="kvstore.api"):
        st, _h, body = s3_error_response(RuntimeError("secret /path/detail"), "/b", "R")
    assert st == 500
    assert b"InternalError" in body and b"secret" not in body
    assert "secret /path/detail" in caplog.text


def test_storage_error_hides_device_details() -> None:
    st, _h, body = s3_error_response(E.StorageError("pread /dev/nvme0 failed"), "/b", "R")
    assert st == 500 and b"nvme0" not in body


def test_not_modified_has_no_body() -> None:
    st, _h, body = s3_error_response(S3Error("NotModified"), "/b/k", "R")
    assert st == 304 and body == b""


def test_xml_escapes_message() -> None:
    _st, _h, body = s3_error_response(E.InvalidArgument("<&>"), "/b/<k>", "R")
    el = ET.fromstring(body)
    assert el.findtext("Message") == "<&>" and el.findtext("Resource") == "/b/<k>"


def test_json_form() -> None:
    st, body = json_error(E.Busy("later"), "RID")
    assert st == 503
    assert body == {"error": {"code": 30, "name": "SlowDown", "message": "later",
                              "retryable": True}, "request_id": "RID"}
    st, raw = json_error_bytes(ValueError("boom"))
    assert st == 500 and json.loads(raw)["error"]["name"] == "InternalError"
