"""ListObjects paging and delimiter logic over a fake listing function (pure)."""

from __future__ import annotations

import bisect
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.api.errors import S3Error
from kvstore.api.s3 import listing
from kvstore.api.s3.uploads import Upload
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


def _all_v1(keys: list[str], prefix: str, delim: str, page: int) -> tuple[list[str], list[str]]:
    """Pages of ListObjects v1 as a client walks them: the next marker is NextMarker (the last
    key or common prefix: sent only with a delimiter), else the last key listed."""
    fn = _lister(keys)
    got_keys: list[str] = []
    got_prefixes: list[str] = []
    marker = ""
    for _ in range(len(keys) + 2):
        p = listing.list_page(fn, prefix, delim, listing.after_marker(marker, prefix, delim),
                              page)
        got_keys += [b.key for b in p.items]
        got_prefixes += p.prefixes
        if not p.truncated:
            return got_keys, got_prefixes
        marker = p.last if delim else p.items[-1].key
    raise AssertionError("listing did not end")


@pytest.mark.parametrize("walk", [_all, _all_v1], ids=["cursor", "marker"])
@settings(max_examples=150, deadline=None)
@given(keys=st.lists(st.text(alphabet="ab/c", min_size=1, max_size=6), max_size=40),
       prefix=st.sampled_from(["", "a", "a/", "b/"]), delim=st.sampled_from(["", "/", "b"]),
       page=st.integers(1, 7))
def test_paging_matches_a_plain_scan(walk: Callable[[list[str], str, str, int],
                                                    tuple[list[str], list[str]]],
                                     keys: list[str], prefix: str, delim: str,
                                     page: int) -> None:
    """Paged by the internal cursor (v2 tokens) or by markers as a v1 client sends them (a
    NextMarker that is a common prefix resumes after every key under it): a plain scan."""
    assert walk(keys, prefix, delim, page) == _expected(keys, prefix, delim)


def test_v1_next_marker_only_with_a_delimiter() -> None:
    fn = _lister(["a/1", "a/2", "b", "c"])
    plain = listing.v1(fn, "bkt", {"max-keys": "1"}).decode()
    assert "<IsTruncated>true</IsTruncated>" in plain and "NextMarker" not in plain
    grouped = listing.v1(fn, "bkt", {"max-keys": "1", "delimiter": "/"}).decode()
    assert "<NextMarker>a/</NextMarker>" in grouped and "<Prefix>a/</Prefix>" in grouped
    after = listing.v1(fn, "bkt", {"delimiter": "/", "marker": "a/"}).decode()
    assert "a/" not in after.split("<Marker>")[1].split("</Marker>", 1)[1]  # a/ not repeated
    assert "<Key>b</Key>" in after and "<Key>c</Key>" in after


def _uploads(spec: list[str]) -> list[Upload]:
    """Open uploads of these keys (a key repeated: more than one upload of it), ordered as
    ``Uploads.for_bucket`` lists them."""
    ups = [Upload(f"{i:04x}{k}", "bkt", k, "t", float(i), {}, {}) for i, k in enumerate(spec)]
    return sorted(ups, key=lambda u: (u.key, u.initiated))


def _walk_uploads(ups: list[Upload], prefix: str, delim: str,
                  page: int) -> tuple[list[str], list[str]]:
    got: list[str] = []
    prefixes: list[str] = []
    key_marker = uid_marker = ""
    for _ in range(len(ups) + 2):
        p = listing.uploads_page(ups, prefix, delim, key_marker, uid_marker, page)
        got += [u.upload_id for u in p.uploads]
        prefixes += p.prefixes
        assert len(p.uploads) + len(p.prefixes) <= page
        if not p.truncated:
            return got, prefixes
        key_marker, uid_marker = p.next_key, p.next_upload_id
    raise AssertionError("listing did not end")


@settings(max_examples=150, deadline=None)
@given(spec=st.lists(st.text(alphabet="ab/", min_size=1, max_size=4), max_size=30),
       prefix=st.sampled_from(["", "a", "a/"]), delim=st.sampled_from(["", "/"]),
       page=st.integers(1, 5))
def test_upload_paging_lists_every_upload_once(spec: list[str], prefix: str, delim: str,
                                               page: int) -> None:
    """Paged by NextKeyMarker and NextUploadIdMarker, ListMultipartUploads shows every upload
    (several of one key too, split across pages) and every common prefix once, in order."""
    ups = _uploads(spec)
    want_ids, want_prefixes = [], []
    for u in ups:
        if not u.key.startswith(prefix):
            continue
        cp = listing.rolled_up(u.key, prefix, delim)
        if cp is None:
            want_ids.append(u.upload_id)
        elif cp not in want_prefixes:
            want_prefixes.append(cp)
    assert _walk_uploads(ups, prefix, delim, page) == (want_ids, want_prefixes)


def test_upload_id_marker_of_a_finished_upload() -> None:
    """An upload-id-marker no longer open: the key's uploads whose ids sort after it."""
    ups = _uploads(["k", "k", "k"])
    ids = [u.upload_id for u in ups]
    p = listing.uploads_page(ups, "", "", "k", ids[0] + "x", 10)
    assert [u.upload_id for u in p.uploads] == ids[1:]
    assert listing.uploads_page(ups, "", "", "k", "", 10).uploads == []  # key-marker alone
    empty = listing.uploads_page(ups, "", "", "", "", 0)
    assert (empty.uploads, empty.truncated) == ([], False)
