"""Hypothesis on the S3 surface's parsers of untrusted input: XML bodies (DeleteObjects,
CompleteMultipartUpload), Range and x-amz-copy-source-range, ListBuckets' paging,
x-amz-object-attributes, aws-chunked bodies and SigV4 authorization headers. Whatever the
bytes, each answers its result or a typed ``S3Error`` — never another exception (a 500) — and
results stay inside their bounds. Plus the XML bombs a hardened parser must refuse."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.api.errors import S3Error
from kvstore.api.s3 import sigv4
from kvstore.api.s3.attributes import ATTRIBUTES, requested
from kvstore.api.s3.buckets import buckets_page
from kvstore.api.s3.chunked import AwsChunkedDecoder
from kvstore.api.s3.http import copy_source_range, copy_source_slice, parse_range, range_request
from kvstore.api.s3.xml import parse_complete, parse_delete

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# headers reach the parsers decoded as latin-1: every byte is a character
header_text = st.binary(max_size=80).map(lambda b: b.decode("latin-1"))
digits = st.text(alphabet="0123456789", min_size=1, max_size=25)
unicode_digits = st.text(alphabet="0123456789²³¹٣५߃", min_size=1, max_size=8)


def _range_headers() -> st.SearchStrategy[str]:
    part = st.one_of(st.just(""), digits, unicode_digits, st.just(" "), st.just("-1"))
    return st.one_of(header_text, st.builds(lambda a, b: f"bytes={a}-{b}", part, part),
                     st.builds(lambda a: f"bytes=-{a}", part),
                     st.builds(lambda n: "bytes=" + "9" * n + "-", st.integers(4000, 6000)))


@FUZZ
@given(_range_headers(), st.integers(0, 2**40))
def test_range_is_in_bounds_or_a_typed_error(header: str, size: int) -> None:
    try:
        r = parse_range(header, size)
    except S3Error as exc:
        assert exc.name == "InvalidRange"
        return
    if r is not None:
        start, end = r
        assert 0 <= start < end <= size
    req = range_request(header)
    assert req is None or isinstance(req[0], int)


@FUZZ
@given(_range_headers(), st.integers(0, 2**40))
def test_copy_source_range_is_within_the_source_or_a_typed_error(header: str, size: int) -> None:
    try:
        first, last = copy_source_range(header)
    except S3Error as exc:
        assert exc.name == "InvalidArgument"
        return
    assert 0 <= first <= last
    try:
        start, end = copy_source_slice((first, last), size)
    except S3Error as exc:
        assert exc.name == "InvalidRange" and last >= size
        return
    assert 0 <= start < end <= size and end - start == last - first + 1


@FUZZ
@given(st.lists(st.text(alphabet="abc-.0", min_size=3, max_size=6), unique=True, max_size=30),
       st.dictionaries(st.sampled_from(["prefix", "max-buckets", "continuation-token"]),
                       st.one_of(header_text, digits, st.just("0"), st.just("10001"))))
def test_buckets_page_is_a_slice_or_a_typed_error(names: list[str],
                                                  query: dict[str, str]) -> None:
    names = sorted(names)
    try:
        page, token = buckets_page(names, query)
    except S3Error as exc:
        assert exc.name == "InvalidArgument"
        return
    assert page == sorted(page) and set(page) <= set(names)
    assert all(n.startswith(query.get("prefix", "")) for n in page)
    assert token is None or page


@FUZZ
@given(header_text)
def test_object_attributes_header_parses_or_a_typed_error(header: str) -> None:
    try:
        got = requested({"x-amz-object-attributes": header})
    except S3Error as exc:
        assert exc.name == "InvalidArgument"
        return
    assert got and got <= set(ATTRIBUTES)


_xml_piece = st.sampled_from([
    "<Delete>", "</Delete>", "<Object>", "</Object>", "<Key>", "</Key>", "<Quiet>true</Quiet>",
    "<CompleteMultipartUpload>", "</CompleteMultipartUpload>", "<Part>", "</Part>",
    "<PartNumber>", "</PartNumber>", "<ETag>", "</ETag>", "<ChecksumCRC32>", "</ChecksumCRC32>",
    "1", "²", "9" * 5000, "abc", "&amp;", "&lt;", "&#0;", "<![CDATA[x]]>", "<?xml version='1.0'?>",
    "\x00", "\ud800", "<", ">", " xmlns='http://s3.amazonaws.com/doc/2006-03-01/'",
])


_part_text = st.one_of(digits, unicode_digits, header_text, st.just("9" * 5000), st.just("0"))
_complete_doc = st.lists(st.tuples(_part_text, header_text), max_size=4).map(
    lambda parts: ("<CompleteMultipartUpload>" + "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts)
        + "</CompleteMultipartUpload>").encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.one_of(st.binary(max_size=300), _complete_doc,
                 st.lists(_xml_piece, max_size=30).map(
                     lambda ps: "".join(ps).encode("utf-8", "surrogatepass"))))
def test_xml_bodies_parse_or_a_typed_error(body: bytes) -> None:
    for parse in (parse_delete, parse_complete):
        try:
            out = parse(body)
        except S3Error as exc:
            assert exc.name in ("MalformedXML", "InvalidPart", "InvalidArgument"), exc.name
            continue
        assert isinstance(out, (list, tuple))


BOMBS = [
    b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
    b"<!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]>"
    b"<Delete><Object><Key>&lol2;</Key></Object></Delete>",
    b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
    b"<Delete><Object><Key>&e;</Key></Object></Delete>",
    b"<?xml version='1.0'?><!DOCTYPE x SYSTEM 'http://127.0.0.1:1/x.dtd'><Delete/>",
    b"<!doctype Delete><Delete/>",
    b"<?xml version='1.0' encoding='utf-16'?>" + "<!DOCTYPE x []><Delete/>".encode("utf-16-le"),
]


@pytest.mark.parametrize("bomb", BOMBS)
def test_entity_and_dtd_bodies_are_refused(bomb: bytes) -> None:
    """Billion laughs, external entities, external DTDs: refused before any expansion."""
    with pytest.raises(S3Error) as exc:
        parse_delete(bomb)
    assert exc.value.name == "MalformedXML"


@FUZZ
@given(st.one_of(header_text,
                 st.builds(lambda c, s, g: f"AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s}, "
                                           f"Signature={g}", header_text, header_text,
                           header_text)),
       header_text)
def test_authorization_header_parses_or_a_typed_error(header: str, amz_date: str) -> None:
    try:
        p = sigv4.parse_authorization(header, amz_date)
    except S3Error:
        return
    assert p.access_key


@FUZZ
@given(st.dictionaries(st.sampled_from(["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
                                        "X-Amz-Expires", "X-Amz-SignedHeaders",
                                        "X-Amz-Signature"]),
                       st.one_of(header_text, digits, st.just("AWS4-HMAC-SHA256"))))
def test_presigned_query_parses_or_a_typed_error(query: dict[str, str]) -> None:
    try:
        sigv4.parse_presigned(query)
    except S3Error:
        pass


def _chunked(payload: bytes, chunk: int) -> bytes:
    out = b""
    for i in range(0, len(payload), chunk):
        c = payload[i:i + chunk]
        out += f"{len(c):x};chunk-signature={'0' * 64}\r\n".encode() + c + b"\r\n"
    return out + b"0;chunk-signature=" + b"0" * 64 + b"\r\n\r\n"


@FUZZ
@given(st.binary(max_size=200), st.integers(1, 64),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       st.integers(0, 10_000), st.integers(1, 50))
def test_aws_chunked_decodes_or_a_typed_error(payload: bytes, chunk: int,
                                              flips: list[tuple[int, int]], cut: int,
                                              step: int) -> None:
    """Valid aws-chunked bodies (development mode: signatures not checked) round trip; mutated
    or cut ones end in S3Error or an incomplete body, never another exception, and never write
    past the buffer they were given."""
    wire = bytearray(_chunked(payload, chunk))
    mutated = bool(flips) or cut < len(wire)
    for pos, val in flips:
        wire[pos % len(wire)] = val
    wire = wire[:cut] if cut < len(wire) else wire
    out = bytearray(len(payload))
    dec = AwsChunkedDecoder(memoryview(out), sigv4.STREAMING_SIGNED)
    try:
        for i in range(0, len(wire), step):
            dec.feed(bytes(wire[i:i + step]))
    except S3Error:
        assert mutated
        return
    assert dec.length <= len(out)
    if not mutated:
        assert dec.done and bytes(out) == payload
        assert hashlib.sha256(out).digest() == hashlib.sha256(payload).digest()
