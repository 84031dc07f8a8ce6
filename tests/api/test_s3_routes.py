"""The S3 router is a table (``kvstore.api.s3.app.ROUTES``): each request shape picks one row,
the metrics op name and the permission the policy is asked for come from that row, and what no
row takes is refused with S3's own codes."""

from __future__ import annotations

import pytest

from kvstore.api.errors import S3Error
from kvstore.api.s3 import acl, attributes, buckets, copying, multipart, objects
from kvstore.api.s3 import app as s3app
from kvstore.api.s3.http import Request
from kvstore.auth import Op


def _req(method: str, path: str, query: str = "", headers: dict[str, str] | None = None
         ) -> Request:
    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(),
             "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()]}

    async def receive() -> dict[str, object]:
        raise AssertionError("routing reads no body")

    return Request(scope, receive, "rid")


ROUTED = [
    ("GET", "/", "", {}, buckets.list_buckets, "list_buckets", None),
    ("PUT", "/b", "", {}, buckets.create_bucket, "create_bucket", None),
    ("GET", "/b", "location", {}, buckets.get_location, "get_bucket_location", Op.READ),
    ("GET", "/b", "versioning", {}, buckets.get_versioning, "get_bucket_versioning", Op.READ),
    ("GET", "/b", "uploads", {}, multipart.list_uploads, "list_multipart", Op.READ),
    ("GET", "/b", "list-type=2&prefix=a", {}, buckets.list_objects, "list", Op.READ),
    ("HEAD", "/b", "", {}, buckets.head_bucket, "head_bucket", Op.READ),
    ("DELETE", "/b", "", {}, buckets.delete_bucket, "delete_bucket", Op.DELETE),
    ("POST", "/b", "delete", {}, objects.delete_objects, "delete_objects", Op.DELETE),
    ("GET", "/b/k", "uploadId=u", {}, multipart.list_parts, "list_parts", Op.READ),
    ("GET", "/b/k", "attributes", {}, attributes.get_object_attributes, "get_attributes",
     Op.READ),
    ("GET", "/b", "acl", {}, acl.get_acl, "get_acl", Op.READ),
    ("PUT", "/b", "acl", {}, acl.put_acl, "put_acl", Op.WRITE),
    ("GET", "/b/k", "acl", {}, acl.get_acl, "get_acl", Op.READ),
    ("PUT", "/b/k", "acl", {}, acl.put_acl, "put_acl", Op.WRITE),
    ("GET", "/b", "ownershipControls", {}, acl.get_ownership, "get_ownership_controls",
     Op.READ),
    ("GET", "/b/k", "", {}, objects.get_object, "get", Op.READ),
    ("PUT", "/b/k", "uploadId=u&partNumber=1", {}, multipart.upload_part, "upload_part",
     Op.WRITE),
    ("PUT", "/b/k", "", {"x-amz-copy-source": "/b/j"}, copying.copy_object, "copy", Op.WRITE),
    ("PUT", "/b/k/deeper", "", {}, objects.put_object, "put", Op.WRITE),
    ("HEAD", "/b/k", "", {}, objects.head_object, "head", Op.READ),
    ("DELETE", "/b/k", "uploadId=u", {}, multipart.abort, "abort_multipart", Op.WRITE),
    ("DELETE", "/b/k", "", {}, objects.delete_object, "delete", Op.DELETE),
    ("POST", "/b/k", "uploads", {}, multipart.create, "create_multipart", Op.WRITE),
    ("POST", "/b/k", "uploadId=u", {}, multipart.complete, "complete_multipart", Op.WRITE),
]


@pytest.mark.parametrize(("method", "path", "query", "headers", "handler", "op", "needs"),
                         ROUTED, ids=[f"{r[0]} {r[1]}?{r[2]}" for r in ROUTED])
def test_each_request_shape_picks_its_row(method, path, query, headers, handler, op,
                                          needs) -> None:
    assert s3app.route(_req(method, path, query, headers)) == (handler, op, needs)


REFUSED = [
    ("PUT", "/", "", "MethodNotAllowed"),
    ("PUT", "/b", "cors", "NotImplemented"),  # an unsupported sub-resource, before any row
    ("DELETE", "/b/k", "acl", "NotImplemented"),  # ?acl answers GET and PUT only
    ("GET", "/b/k", "tagging", "NotImplemented"),
    ("PUT", "/b", "cors-ish=1", "NotImplemented"),  # bucket configuration
    ("DELETE", "/b", "x=1", "NotImplemented"),
    ("PUT", "/b/k", "partNumber=1", "InvalidArgument"),
    ("POST", "/b", "", "NotImplemented"),
    ("POST", "/b/k", "", "NotImplemented"),
    ("PATCH", "/b/k", "", "MethodNotAllowed"),
    ("OPTIONS", "/b", "", "MethodNotAllowed"),
]


@pytest.mark.parametrize(("method", "path", "query", "code"), REFUSED,
                         ids=[f"{r[0]} {r[1]}?{r[2]}" for r in REFUSED])
def test_what_no_row_takes_is_refused(method, path, query, code) -> None:
    with pytest.raises(S3Error) as e:
        s3app.route(_req(method, path, query))
    assert e.value.name == code


def test_every_handler_row_is_reachable() -> None:
    """No row is shadowed by an earlier one of the same target and method."""
    reached = {(r[4], r[5]) for r in ROUTED}
    rows = {(row.handler, row.op) for row in s3app.ROUTES if row.handler is not None}
    assert rows == reached


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("headers", [{}, {"range": "bytes=0-1"}, {"x-amz-copy-source": "b/k"}])
def test_the_fast_path_answers_what_the_table_answers(method: str,
                                                      headers: dict[str, str]) -> None:
    """An object's GET or HEAD without a query skips ``route`` (``_FAST``): same handler, op
    name and permission as the table's first matching row."""
    assert s3app._FAST[method] == s3app.route(_req(method, "/b/some/key", "", headers))
