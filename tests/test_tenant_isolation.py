"""Tenant isolation on a real ``kvstore serve`` with credentials, on 127.0.0.1: what another
tenant's namespace answers, on every interface (S3, /v1, bulk), must not depend on whether that
namespace or its keys exist: the same status, error code, message and body length for

- a namespace that exists and is another tenant's, with the key present,
- the same namespace with the key absent,
- a namespace that does not exist (a name of the same length, outside the caller's patterns).

Plus the tenant salt of a namespace fingerprint (``kvstore.auth``, "Tenant salts"): two tenants
creating namespaces with the same layout get different fingerprints, so their block keys for the
same prompt differ; two tenants that share a salt (the operator's opt-in) get the same ones; and
the bulk port's AUTH_OK names the same salt token, so a client that computes its own
fingerprints (the engine connectors) salts them alike. Timing: tests/test_tenant_timing.py.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_auth_matrix import ACME, GLOBEX, REGION, Serve, s3

BLOCK = b"secret-kv" * 1000
KEY_IN = "00" * 15 + "01"  # a block key acme stored
KEY_OUT = "00" * 15 + "02"  # one it did not
THEIRS, ABSENT = "acme-ones", "acme-none"  # same length: the answers may echo the name
INITECH = ("initech", "AKIDINITECH", "initech-secret-key")
TENANTS = {"tenants": [
    {"name": ACME[0], "access_key": ACME[1], "secret_key": ACME[2],
     "namespaces": ["acme-*", "shared-*"]},
    {"name": GLOBEX[0], "access_key": GLOBEX[1], "secret_key": GLOBEX[2],
     "namespaces": ["globex-*", "shared-*"], "key_salt": "acme-and-globex"},
    {"name": INITECH[0], "access_key": INITECH[1], "secret_key": INITECH[2],
     "namespaces": ["initech-*"], "key_salt": "acme-and-globex"},
]}
LAYOUT = {"model": "m", "dtype": "bfloat16", "num_layers": 2, "num_kv_heads": 2, "head_dim": 8,
          "tokens_per_block": 16}
_IDS = re.compile(rb"<(RequestId|HostId)>[^<]*</\1>|\"request_id\": ?\"[^\"]*\"")


def raw(srv: Serve, who: tuple[str, str, str], method: str, path: str,
        body: bytes = b"") -> tuple[int, bytes]:
    """A SigV4-signed request; the status and the body with request ids blanked."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=srv.url + path, data=body,
                     headers={"content-type": "application/json"} if body else {})
    S3SigV4Auth(Credentials(who[1], who[2]), "s3", REGION).add_auth(req)
    conn = http.client.HTTPConnection("127.0.0.1", srv.http, timeout=30)
    try:
        conn.request(method, path, body=body, headers=dict(req.headers.items()))
        resp = conn.getresponse()
        return resp.status, _IDS.sub(b"", resp.read())
    finally:
        conn.close()


def same_shape(srv: Serve, who: tuple[str, str, str], method: str, path: str, ns: str, key: str,
               body: bytes = b"") -> tuple[int, bytes]:
    """``raw``, with the names the answer may echo replaced (they are the caller's input)."""
    status, data = raw(srv, who, method, path, body)
    return status, data.replace(ns.encode(), b"NS").replace(key.encode(), b"KEY")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    from kvstore_client import Client

    tmp = tmp_path_factory.mktemp("isolation")
    creds = tmp / "tenants.json"
    creds.write_text(json.dumps(TENANTS))
    srv = Serve.start(tmp, tmp / "data", "creds", creds)
    try:
        c = s3(srv, ACME)
        c.create_bucket(Bucket=THEIRS)
        c.put_object(Bucket=THEIRS, Key=KEY_IN, Body=BLOCK)
        with Client(port=srv.bulk, namespace=THEIRS, access_key=ACME[1],
                    secret_key=ACME[2], timeout=10) as b:
            assert b.get(KEY_IN) == BLOCK
        yield srv
    finally:
        srv.kill()


CASES = [(THEIRS, KEY_IN), (THEIRS, KEY_OUT), (ABSENT, KEY_IN)]
S3_CALLS = [("GET", "/{ns}/{key}"), ("HEAD", "/{ns}/{key}"), ("PUT", "/{ns}/{key}"),
            ("DELETE", "/{ns}/{key}"), ("HEAD", "/{ns}"), ("GET", "/{ns}?list-type=2"),
            ("GET", "/{ns}?uploads"), ("PUT", "/{ns}"), ("DELETE", "/{ns}")]
V1_CALLS = [("GET", "/v1/namespaces/{ns}", None), ("DELETE", "/v1/namespaces/{ns}", None),
            ("POST", "/v1/{ns}/exists", {"keys": ["{key}"]}),
            ("POST", "/v1/{ns}/lookup", {"keys": ["{key}"]}),
            ("POST", "/v1/{ns}/prefetch", {"keys": ["{key}"]}),
            ("POST", "/v1/{ns}/delete", {"keys": ["{key}"]}),
            ("POST", "/v1/namespaces", {"name": "{ns}"})]


@pytest.mark.parametrize("method,path", S3_CALLS, ids=[f"{m} {p}" for m, p in S3_CALLS])
def test_s3_answers_do_not_depend_on_existence(world: Serve, method: str, path: str) -> None:
    got = {(ns, key): same_shape(world, GLOBEX, method, path.format(ns=ns, key=key), ns, key,
                                 BLOCK if method == "PUT" and "{key}" in path else b"")
           for ns, key in CASES}
    first = got[CASES[0]]
    assert first[0] in (403, 409), got  # AccessDenied (BucketAlreadyExists for a PUT bucket)
    assert all(v == first for v in got.values()), got


@pytest.mark.parametrize("method,path,body", V1_CALLS, ids=[f"{m} {p}" for m, p, _ in V1_CALLS])
def test_v1_answers_do_not_depend_on_existence(world: Serve, method: str, path: str,
                                               body: Any) -> None:
    got = {}
    for ns, key in CASES:
        data = b"" if body is None else json.dumps(body).replace("{ns}", ns).replace(
            "{key}", key).encode()
        got[(ns, key)] = same_shape(world, GLOBEX, method, path.format(ns=ns), ns, key, data)
    first = got[CASES[0]]
    assert first[0] == 403 and b"AccessDenied" in first[1], got
    assert all(v == first for v in got.values()), got


def test_bulk_answers_do_not_depend_on_existence(world: Serve) -> None:
    from kvstore_client import Client, KVStoreError

    def outcome(ns: str, key: str, create: bool, op: str) -> tuple[str, str]:
        try:
            with Client(port=world.bulk, namespace=ns, access_key=GLOBEX[1],
                        secret_key=GLOBEX[2], create=create, retries=0, timeout=10) as c:
                if op == "get":
                    c.get(key)
                elif op == "put":
                    c.put(key, BLOCK)
                elif op == "exists":
                    c.exists_many([key])
                else:
                    c.lookup([key])
        except KVStoreError as exc:
            return type(exc).__name__, str(exc)
        return "ok", ""

    for create in (False, True):
        for op in ("get", "put", "exists", "lookup"):
            got = {(ns, key): outcome(ns, key, create, op) for ns, key in CASES}
            first = got[CASES[0]]
            assert first[0] == "AccessDenied", got
            assert all(v == first for v in got.values()), (create, op, got)


# -- tenant salts ----------------------------------------------------------------------------

def _create(srv: Serve, who: tuple[str, str, str], ns: str,
            layout: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"name": ns, "layout": layout or LAYOUT}
    status, data = raw(srv, who, "POST", "/v1/namespaces", json.dumps(body).encode())
    assert status in (200, 201), data
    out: dict[str, Any] = json.loads(data)
    return out


def test_tenant_salt_separates_fingerprints(world: Serve) -> None:
    from kvstore_client import Layout, block_keys

    a = _create(world, ACME, "acme-salted")
    g = _create(world, GLOBEX, "globex-salted")
    i = _create(world, INITECH, "initech-salted")
    plain = Layout(**LAYOUT).fingerprint_hex()
    # acme has no shared salt: its own; globex and initech opted into the same one
    assert a["fingerprint"] != plain and a["fingerprint"] != g["fingerprint"]
    assert g["fingerprint"] == i["fingerprint"] != plain
    # the answer's layout is what the fingerprint covers: a client rebuilds the same keys
    for ns in (a, g):
        assert Layout(**ns["layout"]).fingerprint_hex() == ns["fingerprint"]
    tokens = list(range(64))
    ka = block_keys(bytes.fromhex(a["fingerprint"]), tokens, 16)
    kg = block_keys(bytes.fromhex(g["fingerprint"]), tokens, 16)
    assert not set(ka) & set(kg)
    # a salt of the client's own is kept, beside the tenant's (vLLM's cache_salt, a fleet salt)
    s = _create(world, ACME, "acme-salted2", {**LAYOUT, "tenant_salt": "fleet-7"})
    assert s["fingerprint"] not in (a["fingerprint"], plain)
    assert "fleet-7" in s["layout"]["tenant_salt"]
    # asking again with the layout as first sent is the same namespace (idempotent create)
    assert _create(world, ACME, "acme-salted")["fingerprint"] == a["fingerprint"]


def test_auth_ok_names_the_salt_the_server_applies(world: Serve) -> None:
    """``Client.key_salt()`` is the token the server salts this tenant's layouts with:
    ``Layout.salted(token)`` has exactly the fingerprint ``POST /v1/namespaces`` answers, for
    a layout with and without a salt of the client's own; tenants sharing a ``key_salt`` get
    one token, the others their own."""
    from kvstore_client import Client, Layout

    def token(who: tuple[str, str, str], ns: str) -> str:
        with Client(port=world.bulk, namespace=ns, access_key=who[1], secret_key=who[2],
                    create=True, timeout=10) as c:
            return c.key_salt()

    tokens = {who[0]: token(who, f"{who[0]}-token") for who in (ACME, GLOBEX, INITECH)}
    assert tokens == {"acme": "tenant:acme", "globex": "shared:acme-and-globex",
                      "initech": "shared:acme-and-globex"}
    for who in (ACME, GLOBEX):
        for own in ("", "fleet-9"):
            lay = {**LAYOUT, "tenant_salt": own}
            got = _create(world, who, f"{who[0]}-tok{len(own)}", lay)
            assert Layout(**lay).salted(tokens[who[0]]).fingerprint_hex() == got["fingerprint"]


def test_salt_is_not_forced_in_development_mode(tmp_path: Path) -> None:
    from kvstore_client import Client, Layout

    srv = Serve.start(tmp_path, tmp_path / "data", "dev", None)
    try:
        got = _create(srv, ("", "AKIADEV", "dev-secret"), "dev-salted")
        assert got["fingerprint"] == Layout(**LAYOUT).fingerprint_hex()
        with Client(port=srv.bulk, namespace="dev-salted", timeout=10) as c:
            assert c.key_salt() == ""  # so the connectors' keys are as they always were
        conn = http.client.HTTPConnection("127.0.0.1", srv.http, timeout=30)
        conn.request("GET", "/metrics")  # one tenant: the per-namespace series stay
        assert 'kvstore_namespace_blocks{namespace="dev-salted"}' in conn.getresponse().read(
            ).decode()
        conn.close()
    finally:
        srv.kill()


def test_unsigned_metrics_do_not_name_tenants_namespaces(world: Serve, tmp_path: Path) -> None:
    """/metrics answers unsigned: with credentials it carries no per-namespace series (they
    name every tenant's namespaces and count their blocks) unless --metrics-namespaces."""
    conn = http.client.HTTPConnection("127.0.0.1", world.http, timeout=30)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200 and "kvstore_engine_" in text
    assert THEIRS not in text and "kvstore_namespace_blocks" not in text
