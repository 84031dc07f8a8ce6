"""/v1 authentication (SigV4, signed by botocore) and tenant ownership, on a live server."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kvstore.auth import Tenants

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
REGION = "us-east-1"

ACME = ("AKIDACME", "acme-secret")
BETA = ("AKIDBETA", "beta-secret")
TENANTS = {"tenants": [
    {"name": "acme", "access_key": ACME[0], "secret_key": ACME[1],
     "namespaces": ["acme-*", "shared-*"]},
    {"name": "beta", "access_key": BETA[0], "secret_key": BETA[1],
     "namespaces": ["beta-*", "shared-*"]},
]}


def call(srv: Any, method: str, path: str, obj: Any = None, creds: tuple[str, str] | None = None,
         *, send_body: bytes | None = None) -> tuple[int, Any]:
    body = b"" if obj is None else json.dumps(obj).encode()
    headers = {"content-type": "application/json"}
    if creds is not None:
        req = AWSRequest(method=method, url=srv.url + path, data=body, headers=headers)
        S3SigV4Auth(Credentials(*creds), "s3", REGION).add_auth(req)
        headers = dict(req.headers.items())
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, body=body if send_body is None else send_body,
                     headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


@pytest.fixture
def srv(live_server: Callable[..., Any]) -> Any:
    return live_server(tenants=Tenants.from_dict(TENANTS))


def err(resp: tuple[int, Any]) -> tuple[int, str]:
    return resp[0], resp[1]["error"]["name"]


def test_unsigned_requests_are_denied_but_health_is_open(srv: Any) -> None:
    assert err(call(srv, "GET", "/v1/namespaces")) == (403, "AccessDenied")
    assert err(call(srv, "POST", "/v1/acme-a/lookup", {"keys": ["k"]})) == (403, "AccessDenied")
    assert call(srv, "GET", "/healthz")[0] == 200
    assert call(srv, "GET", "/readyz")[0] == 200


def test_signed_tenant_uses_its_own_namespace(srv: Any) -> None:
    status, ns = call(srv, "POST", "/v1/namespaces", {"name": "acme-kv"}, ACME)
    assert status == 201 and ns["owner"] == "acme"
    srv.state.engine.put("acme-kv", "k1", b"v" * 100)
    assert call(srv, "POST", "/v1/acme-kv/lookup", {"keys": ["k1", "k2"]}, ACME)[1][
        "prefix_len"] == 1
    assert call(srv, "POST", "/v1/acme-kv/exists", {"keys": ["k1"]}, ACME)[1] == {
        "exists": [True]}
    assert call(srv, "GET", "/v1/stats", None, ACME)[0] == 200
    names = [n["name"] for n in call(srv, "GET", "/v1/namespaces", None, ACME)[1]["namespaces"]]
    assert names == ["acme-kv"]


def test_other_tenant_gets_uniform_access_denied(srv: Any) -> None:
    assert call(srv, "POST", "/v1/namespaces", {"name": "acme-kv"}, ACME)[0] == 201
    assert call(srv, "POST", "/v1/namespaces", {"name": "shared-kv"}, ACME)[0] == 201
    srv.state.engine.put("acme-kv", "k1", b"v" * 100)
    present = call(srv, "POST", "/v1/acme-kv/lookup", {"keys": ["k1"]}, BETA)
    absent = call(srv, "POST", "/v1/acme-none/lookup", {"keys": ["k1"]}, BETA)
    assert err(present) == err(absent) == (403, "AccessDenied")
    assert present[1]["error"]["message"] == absent[1]["error"]["message"]
    # a name both tenants' patterns allow, but acme owns it
    assert err(call(srv, "POST", "/v1/shared-kv/exists", {"keys": ["k1"]}, BETA)) == (
        403, "AccessDenied")
    assert err(call(srv, "DELETE", "/v1/namespaces/acme-kv", None, BETA)) == (403, "AccessDenied")
    assert err(call(srv, "POST", "/v1/namespaces", {"name": "acme-new"}, BETA)) == (
        403, "AccessDenied")
    # creating it again is idempotent for its owner only
    assert call(srv, "POST", "/v1/namespaces", {"name": "shared-kv"}, ACME)[0] == 200
    assert err(call(srv, "POST", "/v1/namespaces", {"name": "shared-kv"}, BETA)) == (
        403, "AccessDenied")
    assert call(srv, "GET", "/v1/namespaces", None, BETA)[1] == {"namespaces": []}
    # beta's own (absent) namespace is simply not there
    assert err(call(srv, "POST", "/v1/beta-none/lookup", {"keys": ["k1"]}, BETA)) == (
        404, "NoSuchBucket")


def test_bad_signatures_and_tampered_bodies(srv: Any) -> None:
    wrong = (ACME[0], "not-the-secret")
    assert err(call(srv, "GET", "/v1/namespaces", None, wrong)) == (403, "SignatureDoesNotMatch")
    unknown = ("AKIDNOBODY", "x")
    assert call(srv, "GET", "/v1/namespaces", None, unknown)[0] == 403
    signed_for = {"name": "acme-one"}
    status, body = call(srv, "POST", "/v1/namespaces", signed_for, ACME,
                        send_body=json.dumps({"name": "acme-two"}).encode())
    assert status in (400, 403)
    assert call(srv, "GET", "/v1/namespaces", None, ACME)[1] == {"namespaces": []}


def test_stats_show_usage_of_the_callers_namespaces_only(srv: Any) -> None:
    assert call(srv, "POST", "/v1/namespaces", {"name": "acme-u"}, ACME)[0] == 201
    assert call(srv, "POST", "/v1/namespaces", {"name": "beta-u"}, BETA)[0] == 201
    srv.state.engine.put("acme-u", "k1", b"v" * 100)
    srv.state.engine.put("acme-u", "k2", b"v" * 50)
    srv.state.engine.put("beta-u", "k1", b"v" * 7)
    status, st = call(srv, "GET", "/v1/stats", None, ACME)
    assert status == 200
    def usage(doc: dict) -> dict:  # blocks and bytes (each entry also shows its quotas)
        return {ns: {"blocks": u["blocks"], "bytes": u["bytes"]} for ns, u in doc.items()}

    assert usage(st["namespaces"]) == {"acme-u": {"blocks": 2, "bytes": 150}}
    assert usage(call(srv, "GET", "/v1/stats", None, BETA)[1]["namespaces"]) == {
        "beta-u": {"blocks": 1, "bytes": 7}}
