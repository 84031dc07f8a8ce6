"""kvstore.keys: golden vectors pin the key derivation; properties say what it promises.

The vectors were computed once from the implementation and are pinned as literals: a change
here is a change of the key scheme, which must come with a new KEY_SCHEME_VERSION.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvstore_wire import keys

from kvstore import limits
from kvstore.errors import InvalidKey, InvalidNamespace, LimitExceeded
from kvstore.keys import (
    KEY_SCHEME_VERSION,
    Layout,
    block_keys,
    chain_root,
    next_key,
    validate_key,
    validate_namespace,
)

LLAMA = Layout(model="meta-llama/Llama-3.1-8B-Instruct", dtype="bf16", num_layers=32,
               num_kv_heads=8, head_dim=128, tokens_per_block=16, revision="0e9e39f")
SMALL = Layout(model="m", dtype="fp8", num_layers=1, num_kv_heads=1, head_dim=64,
               tokens_per_block=4, tp_rank=1, tp_size=2, tenant_salt="acme")

GOLDEN_CANONICAL = (
    "8ba56474797065a462663136a8686561645f64696dcc80a56d6f64656cd9206d6574612d6c6c616d612f4c6c61"
    "6d612d332e312d38422d496e737472756374ac6e756d5f6b765f686561647308aa6e756d5f6c617965727320a8"
    "7265766973696f6ea730653965333966a6736368656d6501ab74656e616e745f73616c74a0b0746f6b656e735f"
    "7065725f626c6f636b10a774705f72616e6b00a774705f73697a6501"
)
GOLDEN_FINGERPRINT = "dadaf0c67e7b5a3261a59d08cf2cb9d4"
GOLDEN_ROOT = "40d4fe88aa702b027633338311d21c2b"
GOLDEN_KEYS = ["5a07e94673803b20c8de227bccd3fca5", "a1f5957f10737bef9f88e1b7d9f0ebfe"]
GOLDEN_EXTRA = "f1ab5db7db138e294ea235af7f75ee6d"
GOLDEN_SMALL_FINGERPRINT = "f4dc1a47b36991f9d07f56be5f8a1001"
GOLDEN_SMALL_KEYS = ["59ff6347bc8fd8a5536e5821fb926254", "eeb0617246f63fe3138219e7832faaa8"]
SMALL_TOKENS = [2**32 - 1, 0, 7, 9, 100000, 5, 6, 7]


def test_golden_vectors() -> None:
    assert KEY_SCHEME_VERSION == 1
    assert LLAMA.canonical_bytes().hex() == GOLDEN_CANONICAL
    assert LLAMA.fingerprint_hex() == GOLDEN_FINGERPRINT
    fp = LLAMA.fingerprint()
    assert chain_root(fp).hex() == GOLDEN_ROOT
    assert block_keys(fp, list(range(40)), 16) == GOLDEN_KEYS
    assert next_key(chain_root(fp), [1, 2, 3], b"lora:7").hex() == GOLDEN_EXTRA
    assert SMALL.fingerprint_hex() == GOLDEN_SMALL_FINGERPRINT
    assert block_keys(SMALL.fingerprint(), SMALL_TOKENS, 4, extras=[b"", b"x"]) == GOLDEN_SMALL_KEYS


def test_vectors_follow_the_documented_scheme() -> None:
    """Recompute the vectors from DESIGN section 3 with hashlib alone (another implementation
    in another language can do the same)."""
    fields = {"model": LLAMA.model, "dtype": "bf16", "num_layers": 32, "num_kv_heads": 8,
              "head_dim": 128, "tokens_per_block": 16, "revision": "0e9e39f", "tp_rank": 0,
              "tp_size": 1, "tenant_salt": "", "scheme": 1}
    canonical = msgpack.packb(dict(sorted(fields.items())), use_bin_type=True)
    assert canonical.hex() == GOLDEN_CANONICAL

    def h(data: bytes, person: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=16, person=person).digest()

    fp = h(canonical, b"kvstore.ns.v1")
    key = h(fp, b"kvstore.root.v1")
    assert (fp.hex(), key.hex()) == (GOLDEN_FINGERPRINT, GOLDEN_ROOT)
    out = []
    for i in range(2):
        toks = list(range(40))[i * 16 : (i + 1) * 16]
        body = struct.pack("<I", 16) + struct.pack("<16I", *toks) + struct.pack("<I", 0)
        key = h(key + body, b"kvstore.blk.v1")
        out.append(key.hex())
    assert out == GOLDEN_KEYS


def test_deterministic_across_processes_and_hash_seeds() -> None:
    code = (
        "from kvstore.keys import Layout, block_keys\n"
        "lay = Layout(model='meta-llama/Llama-3.1-8B-Instruct', dtype='bf16', num_layers=32,"
        " num_kv_heads=8, head_dim=128, tokens_per_block=16, revision='0e9e39f')\n"
        "print(lay.fingerprint_hex(), *block_keys(lay.fingerprint(), list(range(40)), 16))\n"
    )
    root = Path(__file__).resolve().parents[1]
    outs = set()
    for seed in ("0", "12345", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed,
                   PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60, check=True)
        outs.add(res.stdout.strip())
    assert outs == {" ".join([GOLDEN_FINGERPRINT, *GOLDEN_KEYS])}


def test_chain_prefix_property() -> None:
    fp = LLAMA.fingerprint()
    tokens = [(i * 7919) % 50000 for i in range(16 * 10)]
    full = block_keys(fp, tokens, 16)
    assert len(full) == 10 and len(set(full)) == 10
    for n in range(11):
        assert block_keys(fp, tokens[: 16 * n], 16) == full[:n]
    # a change in block j changes key j and every key after it, never the ones before
    changed = list(tokens)
    changed[16 * 4 + 3] += 1
    other = block_keys(fp, changed, 16)
    assert other[:4] == full[:4]
    assert all(a != b for a, b in zip(other[4:], full[4:], strict=True))


def test_partial_trailing_block_is_ignored() -> None:
    fp = LLAMA.fingerprint()
    tokens = list(range(48))
    assert block_keys(fp, tokens + [1, 2, 3], 16) == block_keys(fp, tokens, 16)
    assert block_keys(fp, tokens[:15], 16) == []
    assert block_keys(fp, [], 16) == []


@pytest.mark.parametrize("change", [
    {"model": "other"}, {"revision": "r2"}, {"dtype": "fp16"}, {"num_layers": 31},
    {"num_kv_heads": 4}, {"head_dim": 64}, {"tokens_per_block": 32}, {"tp_size": 2},
    {"tenant_salt": "acme"},
])
def test_a_different_layout_gives_a_different_fingerprint(change: dict[str, object]) -> None:
    other = replace(LLAMA, **change)
    assert other.fingerprint() != LLAMA.fingerprint()
    tokens = list(range(32))
    assert block_keys(other.fingerprint(), tokens, 16)[0] != block_keys(LLAMA.fingerprint(),
                                                                         tokens, 16)[0]


def test_tp_rank_separates_shards() -> None:
    a = replace(LLAMA, tp_size=2, tp_rank=0)
    b = replace(LLAMA, tp_size=2, tp_rank=1)
    assert a.fingerprint() != b.fingerprint()


def test_extras_are_part_of_the_key() -> None:
    fp = LLAMA.fingerprint()
    tokens = list(range(32))
    plain = block_keys(fp, tokens, 16)
    assert block_keys(fp, tokens, 16, extras=[b"", b""]) == plain
    lora = block_keys(fp, tokens, 16, extras=[b"lora:1", b""])
    assert lora[0] != plain[0] and lora[1] != plain[1]
    # the length prefix keeps token/extra boundaries apart
    assert next_key(b"\0" * 16, [1], b"") != next_key(b"\0" * 16, [], b"\x01\x00\x00\x00")
    with pytest.raises(ValueError):
        block_keys(fp, tokens, 16, extras=[b""])


def test_root_is_not_a_block_key() -> None:
    fp = LLAMA.fingerprint()
    assert chain_root(fp) != next_key(fp, [])
    with pytest.raises(ValueError):
        chain_root(b"short")


def test_bad_inputs() -> None:
    fp = LLAMA.fingerprint()
    with pytest.raises(ValueError):
        block_keys(fp, [1, 2], 0)
    for bad in (-1, 2**32):
        with pytest.raises(ValueError):
            next_key(fp, [bad])
    with pytest.raises(LimitExceeded):
        block_keys(fp, [0] * (limits.chain_keys_max + 1), 1)
    assert len(block_keys(fp, [0] * limits.chain_keys_max, 1)) == limits.chain_keys_max
    for kw in ({"num_layers": 0}, {"head_dim": -1}, {"tp_size": 0}, {"tp_rank": 1},
               {"model": ""}):
        with pytest.raises(ValueError):
            replace(LLAMA, **kw)


def test_block_bytes() -> None:
    assert LLAMA.block_bytes() == 2 * 32 * 8 * 128 * 16 * 2
    assert SMALL.block_bytes() == 2 * 1 * 1 * 64 * 4 * 1  # one head per shard at least
    assert replace(LLAMA, dtype="BF16").block_bytes() == LLAMA.block_bytes()
    assert replace(LLAMA, dtype="int4-awq").block_bytes() is None


def test_validate_namespace_and_key() -> None:
    for ok in ("abc", "my-bucket.v1", "a" * 63, "0ab"):
        assert validate_namespace(ok) == ok
    for bad in ("ab", "a" * 64, "Abc", "a_b", "-ab", "ab-", "a..b", "192.168.1.1", ""):
        with pytest.raises(InvalidNamespace):
            validate_namespace(bad)
    assert validate_key("k") == b"k"
    assert validate_key("é/日本") == "é/日本".encode()
    assert validate_key("k" * limits.key_bytes_max) == b"k" * limits.key_bytes_max
    for bad in ("", "a\x00", "k" * (limits.key_bytes_max + 1), "é" * 513):
        with pytest.raises(InvalidKey):
            validate_key(bad)
    with pytest.raises(InvalidKey):
        validate_key(b"bytes")  # type: ignore[arg-type]


_NS_ALPHABET = "abcz09.-xnsthre3dmoliapbxX_ "


@given(st.one_of(st.text(alphabet=_NS_ALPHABET, min_size=0, max_size=70),
                 st.from_regex(keys.namespace_pattern(), fullmatch=True),
                 st.sampled_from(["xn--abc", "abc-s3alias", "1.2.3.4", "a..b", "a.-b", "ab",
                                  "a" * 63, "a" * 64, "bucket.mrap", "amzn-s3-demo-x"])))
@settings(max_examples=600)
def test_namespace_pattern_is_the_validator(name: str) -> None:
    """The regular expression OpenAPI documents is exactly the rules the server applies."""
    assert (re.fullmatch(keys.namespace_pattern(), name) is not None) == \
        (keys.namespace_problem(name) is None), name
