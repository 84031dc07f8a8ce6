"""Range and conditional-request rules of the S3 surface (pure)."""

from __future__ import annotations

import pytest

from kvstore.api.errors import S3Error
from kvstore.api.s3.http import check_conditions, http_date, parse_query, parse_range


@pytest.mark.parametrize("header,size,want", [
    (None, 10, None),
    ("bytes=0-0", 10, (0, 1)),
    ("bytes=2-5", 10, (2, 6)),
    ("bytes=5-", 10, (5, 10)),
    ("bytes=3-100", 10, (3, 10)),
    ("bytes=-3", 10, (7, 10)),
    ("bytes=-30", 10, (0, 10)),
    ("bytes=5-2", 10, None),       # invalid syntax: ignored, whole object
    ("items=0-1", 10, None),
    ("bytes=0-1,3-4", 10, None),   # multiple ranges: whole object, as S3 does
    ("bytes=abc", 10, None),
])
def test_parse_range(header: str | None, size: int, want: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == want


@pytest.mark.parametrize("header,size", [("bytes=10-", 10), ("bytes=10-20", 10),
                                         ("bytes=-0", 10), ("bytes=-5", 0), ("bytes=0-", 0)])
def test_unsatisfiable_range(header: str, size: int) -> None:
    with pytest.raises(S3Error) as ei:
        parse_range(header, size)
    assert ei.value.http_status == 416
    assert ei.value.headers["content-range"] == f"bytes */{size}"


T = 1_700_000_000.0


@pytest.mark.parametrize("headers,code", [
    ({"if-match": '"abc"'}, None),
    ({"if-match": '"x", "abc"'}, None),
    ({"if-match": "*"}, None),
    ({"if-match": '"nope"'}, "PreconditionFailed"),
    ({"if-none-match": '"abc"'}, "NotModified"),
    ({"if-none-match": '"nope"'}, None),
    ({"if-modified-since": http_date(T)}, "NotModified"),
    ({"if-modified-since": http_date(T - 10)}, None),
    ({"if-unmodified-since": http_date(T - 10)}, "PreconditionFailed"),
    ({"if-unmodified-since": http_date(T)}, None),
    # If-Match wins over If-Unmodified-Since, If-None-Match over If-Modified-Since
    ({"if-match": '"abc"', "if-unmodified-since": http_date(T - 10)}, None),
    ({"if-none-match": '"nope"', "if-modified-since": http_date(T)}, None),
    ({"if-modified-since": "not a date"}, None),
])
def test_conditions(headers: dict[str, str], code: str | None) -> None:
    if code is None:
        check_conditions(headers, "abc", T)
        return
    with pytest.raises(S3Error) as ei:
        check_conditions(headers, "abc", T)
    assert ei.value.name == code


def test_parse_query_keeps_empty_values_and_decodes() -> None:
    assert parse_query(b"uploads&prefix=a%2Fb&x=") == [("uploads", ""), ("prefix", "a/b"),
                                                         ("x", "")]
