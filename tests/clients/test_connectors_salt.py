"""Tenant salts in the engine connectors' keys: the server names each tenant a salt token at
AUTH (``Client.key_salt()``), and the connectors salt their own fingerprints with it by the
server's rule (``EngineLayout.salted``) or scope engine-named keys by it (``salt_scope``).
Identical prefixes of two tenants never share a key; two tenants that share a ``key_salt``
(the operator's opt-in) do; development mode keys stay as they always were. Against a live
bulk server on 127.0.0.1 with a real tenants table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from kvstore_client import Client
from kvstore_connectors.keys import EngineLayout, Layout, opaque_key, prefix_keys, salt_scope
from kvstore_connectors.lmcache import KVStoreL2Client
from kvstore_wire.keys import salted_tenant_salt

from kvstore.auth import Tenants
from kvstore.testing import BackgroundBulkServer
from tests.integrations.lmcache.test_native_plugin import _buf, _key, _wait

ACME = ("acme", "AKIDACME", "acme-secret")
GLOBEX = ("globex", "AKIDGLOBEX", "globex-secret")
INITECH = ("initech", "AKIDINITECH", "initech-secret")
TENANTS = {"tenants": [
    {"name": ACME[0], "access_key": ACME[1], "secret_key": ACME[2], "namespaces": ["acme-*"]},
    {"name": GLOBEX[0], "access_key": GLOBEX[1], "secret_key": GLOBEX[2],
     "namespaces": ["globex-*"], "key_salt": "pooled"},
    {"name": INITECH[0], "access_key": INITECH[1], "secret_key": INITECH[2],
     "namespaces": ["initech-*"], "key_salt": "pooled"},
]}
BASE = Layout(model="tiny-llama", dtype="float32", num_layers=2, num_kv_heads=2, head_dim=64,
              tokens_per_block=32)
ENG = EngineLayout(layout=BASE, engine="vllm", kv_layout="NHD", extra={"pp_size": 1})
TOKENS = list(range(100, 200))


def test_the_salting_rule() -> None:
    assert salted_tenant_salt("", "") == "" and salted_tenant_salt("fleet", "") == "fleet"
    assert salted_tenant_salt("", "tenant:a") == "tenant:a"
    assert salted_tenant_salt("fleet", "tenant:a") == "tenant:a/fleet"
    for done in ("tenant:a", "tenant:a/fleet"):  # idempotent: salted once
        assert salted_tenant_salt(done, "tenant:a") == done
    assert BASE.salted("") == BASE and ENG.salted("") == ENG  # development mode: unchanged
    assert ENG.salted("tenant:a").layout == BASE.salted("tenant:a")
    assert ENG.salted("tenant:a").salted("tenant:a") == ENG.salted("tenant:a")
    prints = {ENG.fingerprint(), ENG.salted("tenant:a").fingerprint(),
              ENG.salted("tenant:b").fingerprint(),
              replace(ENG, layout=replace(BASE, tenant_salt="fleet")).salted("tenant:a")
              .fingerprint()}
    assert len(prints) == 4


def test_salt_scope() -> None:
    assert salt_scope("") == ""
    a, b = salt_scope("tenant:a"), salt_scope("tenant:b")
    assert a != b and a.startswith("s-") and a.endswith("/") and len(a) == 35
    assert "tenant" not in a  # the token stays out of keys and listings
    # pinned: a change here moves every stored LMCache and SGLang key of a salted tenant
    assert salt_scope("tenant:acme") == "s-58cd4ba8d2d322ac06cbba889c535ff4/"


@pytest.fixture
def world(make_bulk: Callable[..., BackgroundBulkServer]) -> BackgroundBulkServer:
    return make_bulk(Tenants.from_dict(TENANTS))


def _client(srv: BackgroundBulkServer, who: tuple[str, str, str]) -> Client:
    return Client(port=srv.port, namespace=f"{who[0]}-kv", access_key=who[1],
                  secret_key=who[2], create=True, timeout=10)


def test_identical_prefixes_of_two_tenants_never_share_keys(world: BackgroundBulkServer
                                                            ) -> None:
    keys, tier_keys = {}, {}
    for who in (ACME, GLOBEX, INITECH):
        with _client(world, who) as c:
            token = c.key_salt()
        fp = ENG.salted(token).fingerprint()
        keys[who[0]] = prefix_keys(fp, TOKENS, 32)
        keys[who[0] + "+salt"] = prefix_keys(fp, TOKENS, 32, cache_salt="user-1")
        tier_keys[who[0]] = opaque_key(fp, b"\x01" * 36)
    plain = prefix_keys(ENG.fingerprint(), TOKENS, 32)
    assert not set(keys["acme"]) & set(keys["globex"])
    assert not set(keys["acme"]) & set(plain) and not set(keys["globex"]) & set(plain)
    assert keys["globex"] == keys["initech"]  # both opted into key_salt "pooled"
    assert tier_keys["globex"] == tier_keys["initech"] != tier_keys["acme"]
    # vLLM's per-request cache_salt still separates requests inside one tenant (and pool)
    assert not set(keys["globex+salt"]) & set(keys["globex"])
    assert keys["globex+salt"] == keys["initech+salt"]


def test_development_mode_keys_are_unchanged(make_bulk: Callable[..., BackgroundBulkServer]
                                             ) -> None:
    srv = make_bulk()
    with Client(port=srv.port, namespace="dev-kv", create=True, timeout=10) as c:
        assert c.key_salt() == ""
    assert prefix_keys(ENG.salted("").fingerprint(), TOKENS, 32) == prefix_keys(
        ENG.fingerprint(), TOKENS, 32)


def test_lmcache_keys_are_scoped_by_the_tenant_salt(world: BackgroundBulkServer) -> None:
    """The same LMCache chunk key stored by three tenants' L2 clients: each lands under its
    tenant's salt scope (acme's own, globex's and initech's shared one), never bare."""
    stored = {}
    for who in (ACME, GLOBEX, INITECH):
        l2 = KVStoreL2Client(port=world.port, namespace=f"{who[0]}-lmc", access_key=who[1],
                             secret_key=who[2], num_workers=1, timeout_s=10)
        try:
            _arr, view = _buf(b"kv" * 512)
            got = _wait(l2, [l2.submit_batch_set([_key(1)], [view])])
            assert all(ok for ok, _err, _bools in got.values()), got
        finally:
            l2.close()
        with Client(port=world.port, namespace=f"{who[0]}-lmc", access_key=who[1],
                    secret_key=who[2], timeout=10) as c:
            scoped = salt_scope(c.key_salt()) + _key(1)
            assert c.exists_many([scoped, _key(1)]) == [True, False]
        stored[who[0]] = scoped
    assert stored["globex"] == stored["initech"] != stored["acme"]
