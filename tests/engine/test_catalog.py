"""The namespace catalog: validation, ids never reused, layouts, persistence encoding."""

from __future__ import annotations

import pytest

from kvstore import limits
from kvstore.engine.catalog import Catalog
from kvstore.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidNamespace,
    LimitExceeded,
    NamespaceNotFound,
)
from kvstore.keys import Layout

LAYOUT = dict(model="m", dtype="bf16", num_layers=2, num_kv_heads=4, head_dim=8,
              tokens_per_block=16)


def test_create_get_remove_and_ids_are_never_reused() -> None:
    c = Catalog()
    a = c.create("alpha", "t1", None, 0)
    assert a.owner == "t1" and a.block_bytes == 0 and a.fingerprint == ""
    assert c.get("alpha") == (1, a)
    c.create("beta", "", None, 0)
    c.remove("alpha")
    with pytest.raises(NamespaceNotFound):
        c.get("alpha")
    with pytest.raises(NamespaceNotFound):
        c.remove("alpha")
    again = c.create("alpha", "", None, 0)
    assert c.get("alpha")[0] == 3 and again.name == "alpha"
    assert c.id_to_name() == {2: "beta", 3: "alpha"}


def test_validation_errors() -> None:
    c = Catalog()
    c.create("alpha", "t1", None, 0)
    with pytest.raises(AlreadyExists):
        c.create("alpha", "t2", None, 0)
    for bad in ("ab", "UPPER", "has_underscore", "a" * 64, "1.2.3.4", "a..b", "-ab"):
        with pytest.raises(InvalidNamespace):
            c.create(bad, "", None, 0)
    with pytest.raises(InvalidArgument):
        c.create("gamma", "", None, -1)
    with pytest.raises(InvalidArgument):
        c.create("gamma", "", None, limits.block_bytes_max + 1)
    with pytest.raises(InvalidArgument):
        c.create("gamma", "", {"model": "m"}, 0)  # incomplete layout
    with pytest.raises(InvalidArgument):
        c.create("gamma", "", dict(LAYOUT, num_layers=0), 0)
    assert "gamma" not in c.by_name


def test_layout_gives_fingerprint_and_block_size() -> None:
    c = Catalog()
    info = c.create("model-a", "", LAYOUT, 0)
    lay = Layout(**LAYOUT)
    assert info.fingerprint == lay.fingerprint_hex()
    assert info.block_bytes == lay.block_bytes() == 2 * 2 * 4 * 8 * 16 * 2
    explicit = c.create("model-b", "", LAYOUT, 4096)
    assert explicit.block_bytes == 4096
    unknown = c.create("model-c", "", dict(LAYOUT, dtype="mystery"), 0)
    assert unknown.block_bytes == 0 and unknown.fingerprint


def test_encode_decode_round_trip() -> None:
    c = Catalog()
    c.create("alpha", "t1", LAYOUT, 0)
    c.create("beta", "", None, 123)
    c.remove("alpha")
    c.create("gamma", "t2", None, 0)
    c.create("delta", "", None, 0, replicas=2)  # a pod's replica count is kept with it
    back = Catalog.decode(c.encode())
    assert back.by_name == c.by_name and back.by_name["delta"][1].replicas == 2
    assert back.next_id == c.next_id == 5
    assert Catalog.decode(None).by_name == {} and Catalog.decode(b"").next_id == 1


def test_replicas_are_bounded_and_old_catalogs_read_as_one() -> None:
    import msgpack

    c = Catalog()
    for bad in (0, limits.namespace_replicas_max + 1):
        with pytest.raises(InvalidArgument):
            c.create("ns-bad", "", None, 0, replicas=bad)
    old = msgpack.packb({"next_id": 2, "namespaces": [  # written before the field existed
        {"id": 1, "name": "old", "created": 1.0, "owner": "", "layout": {}, "fingerprint": "",
         "block_bytes": 0}]}, use_bin_type=True)
    assert Catalog.decode(old).by_name["old"][1].replicas == 1


def test_namespaces_max() -> None:
    c = Catalog()
    for i in range(limits.namespaces_max):
        c.create(f"ns-{i:05d}", "", None, 0)
    with pytest.raises(LimitExceeded):
        c.create("one-more", "", None, 0)
