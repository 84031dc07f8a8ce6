"""kvstore_connectors.keys: what the engine connectors' keys bind, and that they are the same
in every process (blake2b, never Python's salted hash())."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from kvstore_connectors.keys import EngineLayout, Layout, opaque_key, prefix_keys
from kvstore_wire.errors import LimitExceeded
from kvstore_wire.keys import block_keys

ROOT = Path(__file__).resolve().parents[2]
BASE = Layout(model="tiny-llama", dtype="float32", num_layers=2, num_kv_heads=2, head_dim=64,
              tokens_per_block=32)
ENG = EngineLayout(layout=BASE, engine="vllm", kv_layout="NHD", extra={"pp_size": 1})
TOKENS = list(range(100, 200))


def test_every_bound_field_changes_the_fingerprint() -> None:
    variants = [
        replace(ENG, layout=replace(BASE, model="other")),
        replace(ENG, layout=replace(BASE, dtype="bfloat16")),
        replace(ENG, layout=replace(BASE, tp_size=2, tp_rank=1)),
        replace(ENG, layout=replace(BASE, tp_size=2, tp_rank=0)),
        replace(ENG, layout=replace(BASE, tenant_salt="fleet-b")),
        replace(ENG, layout=replace(BASE, tokens_per_block=16)),
        replace(ENG, engine="sglang"),
        replace(ENG, kv_layout="HND"),
        replace(ENG, extra={"pp_size": 2}),
    ]
    prints = {v.fingerprint() for v in variants} | {ENG.fingerprint()}
    assert len(prints) == len(variants) + 1
    # the engine layout never collides with the plain SDK fingerprint of its Layout
    assert ENG.fingerprint() != BASE.fingerprint()


def test_extra_order_does_not_matter() -> None:
    a = replace(ENG, extra={"a": 1, "b": [1, 2]})
    b = replace(ENG, extra={"b": [1, 2], "a": 1})
    assert a.fingerprint() == b.fingerprint()


def test_prefix_keys_chain_and_bind_the_cache_salt() -> None:
    fp = ENG.fingerprint()
    keys = prefix_keys(fp, TOKENS, 32)
    assert len(keys) == 3                                   # 100 tokens: 3 full blocks
    assert keys == block_keys(fp, TOKENS, 32)               # plain prompts: the SDK's chain
    assert prefix_keys(fp, TOKENS[:64], 32) == keys[:2]     # a prefix has a prefix of keys
    changed = prefix_keys(fp, TOKENS[:40] + [7] + TOKENS[41:], 32)
    assert changed[0] == keys[0] and changed[1:] != keys[1:] and changed[2] != keys[2]
    salted = prefix_keys(fp, TOKENS, 32, cache_salt="tenant-a")
    assert not set(salted) & set(keys)                      # the salt changes every key
    assert salted != prefix_keys(fp, TOKENS, 32, cache_salt="tenant-b")
    assert salted == prefix_keys(fp, TOKENS, 32, cache_salt="tenant-a")
    lora = prefix_keys(fp, TOKENS, 32, lora="adapter-1")
    mm = prefix_keys(fp, TOKENS, 32, mm_hashes=["img-1"])
    assert len({*lora, *mm, *keys}) == 9
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys)


def test_prefix_keys_bounds() -> None:
    with pytest.raises(ValueError):
        prefix_keys(ENG.fingerprint(), TOKENS, 0, cache_salt="s")
    with pytest.raises(LimitExceeded):
        prefix_keys(ENG.fingerprint(), [1] * (8193 * 2), 2, cache_salt="s")
    assert prefix_keys(ENG.fingerprint(), TOKENS[:31], 32, cache_salt="s") == []


def test_opaque_key() -> None:
    fp = ENG.fingerprint()
    k = opaque_key(fp, b"\x01" * 36)
    assert len(k) == 32 and k == opaque_key(fp, b"\x01" * 36)
    assert k != opaque_key(fp, b"\x01" * 35 + b"\x02")
    assert k != opaque_key(replace(ENG, kv_layout="HND").fingerprint(), b"\x01" * 36)
    with pytest.raises(ValueError):
        opaque_key(b"short", b"x")


def test_same_keys_in_processes_with_different_hash_seeds() -> None:
    code = ("from kvstore_connectors.keys import *; from dataclasses import replace\n"
            "L = Layout(model='tiny-llama', dtype='float32', num_layers=2, num_kv_heads=2, "
            "head_dim=64, tokens_per_block=32)\n"
            "E = EngineLayout(layout=L, engine='vllm', kv_layout='NHD', extra={'pp_size': 1})\n"
            "print(E.fingerprint_hex(), *prefix_keys(E.fingerprint(), list(range(100, 200)), "
            "32, cache_salt='s'))")
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'clients'}"}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                capture_output=True, text=True).stdout)
    assert len(outs) == 1
    fp_hex, *keys = outs.pop().split()
    assert fp_hex == ENG.fingerprint_hex()
    assert keys == prefix_keys(ENG.fingerprint(), TOKENS, 32, cache_salt="s")


def test_golden_vectors() -> None:
    """Pinned once from the implementation: a change here changes every stored key (bump
    ENGINE_KEY_SCHEME with it)."""
    assert ENG.fingerprint_hex() == "7cb6ecb0cc86faa2446ab943923b6d1d"
    assert prefix_keys(ENG.fingerprint(), TOKENS, 32, cache_salt="s") == [
        "782a654d41d54e6f36d1e3b0b1dd0668", "b438bb0aa7ec268f1bce34bee639bf77",
        "51a52b46201f229f1876da226f763ea6"]
    assert opaque_key(ENG.fingerprint(), b"\x01" * 36) == "804793cf895d3d6bcebe8287fc33f738"
