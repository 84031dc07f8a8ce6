"""ListObjects paging and delimiter logic over a fake listing function (pure)."""

from __future__ import annotations

import bisect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.api.errors import S3Error
from kvstore.api.s3 import listing
from kvstore.engine.types import BlockMeta


def _lister(keys: list[str]) -> listing.ListFn:
    keys = sorted(set(keys))

    def fn(prefix: str, start_after: str, limit: int) -> tuple[list[BlockMeta], bool]:
        i = bisect.bisect_right(keys, start_after)
        out = [k for k in keys[i:] if k.startswith(prefix)]
        return [BlockMeta("b", k, 1, 0, 0, 0.0) for k in out[:limit]], len(out) > limit

    return fn


def _all(keys: list[str], prefix: str, delim: str, page: int) -> tuple[list[str], list[str]]:
    fn = _lister(keys)
    got_keys: list[str] = []
    got_prefixes: list[str] = []
    cursor = ""
    for _ in range(len(keys) + 2):
        p = listing.list_page(fn, prefix, delim, cursor, page)
        got_keys += [b.key for b in p.items]
        got_prefixes += p.prefixes
        assert len(p.items) + len(p.prefixes) <= page
        if not p.truncated:
            return got_keys, got_prefixes
        cursor = p.cursor
    raise AssertionError("listing did not end")


def _expected(keys: list[str], prefix: str, delim: str) -> tuple[list[str], list[str]]:
    ks, ps = [], []
    for k in sorted(set(keys)):
        if not k.startswith(prefix):
            continue
        rest = k[len(prefix):]
        if delim and delim in rest:
            cp = prefix + rest[:rest.index(delim) + len(delim)]
            if cp not in ps:
                ps.append(cp)
        else:
            ks.append(k)
    return ks, ps


def test_delimiter_groups_common_prefixes() -> None:
    keys = ["a/1", "a/2", "b", "c/x/1", "c/y", "d"]
    assert _all(keys, "", "/", 1000) == (["b", "d"], ["a/", "c/"])
    assert _all(keys, "c/", "/", 1000) == (["c/y"], ["c/x/"])
    assert _all(keys, "", "/", 1) == (["b", "d"], ["a/", "c/"])


@settings(max_examples=150, deadline=None)
@given(keys=st.lists(st.text(alphabet="ab/c", min_size=1, max_size=6), max_size=40),
       prefix=st.sampled_from(["", "a", "a/", "b/"]), delim=st.sampled_from(["", "/", "b"]),
       page=st.integers(1, 7))
def test_paging_matches_a_plain_scan(keys: list[str], prefix: str, delim: str,
                                     page: int) -> None:
    assert _all(keys, prefix, delim, page) == _expected(keys, prefix, delim)


def test_tokens_roundtrip_and_reject_garbage() -> None:
    c = "a/\U0010ffff"
    assert listing.decode_token(listing.encode_token(c)) == c
    with pytest.raises(S3Error):
        listing.decode_token("%%%")


def test_v2_document_has_the_s3_fields() -> None:
    body = listing.v2(_lister(["x/1", "x/2", "y"]), "bkt",
                      {"list-type": "2", "delimiter": "/", "max-keys": "1"}).decode()
    assert "<KeyCount>1</KeyCount>" in body and "<IsTruncated>true</IsTruncated>" in body
    assert "<NextContinuationToken>" in body and "<Prefix>x/</Prefix>" in body


def test_bad_max_keys_and_encoding() -> None:
    with pytest.raises(S3Error):
        listing.v2(_lister([]), "bkt", {"max-keys": "-1"})
    with pytest.raises(S3Error):
        listing.v2(_lister([]), "bkt", {"encoding-type": "base64"})
