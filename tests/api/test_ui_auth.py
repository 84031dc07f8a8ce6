"""``/ui`` with credentials on (production mode), in a real headless Chromium driven over the
DevTools protocol: the page is served without authentication but its data is not; signed in
through its form, it signs its GETs with SigV4 in the browser and shows what ``/v1/stats`` serves
that tenant; wrong credentials show the server's error and no data; the secret stays in
sessionStorage and is in no request; without a secure context it says why it cannot sign; over
https (a real ``kvstore serve --tls-cert``) it signs from any host name."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kvstore.auth import Tenants
from tests.api.browser import Browser, Dom, need_chromium
from tests.api.conftest import boto_client

ACME = ("AKIDUIACME", "acme-ui-secret-0123")
BETA = ("AKIDUIBETA", "beta-ui-secret-4567")
TENANTS = {"tenants": [
    {"name": "acme", "access_key": ACME[0], "secret_key": ACME[1], "namespaces": ["acme-*"]},
    {"name": "beta", "access_key": BETA[0], "secret_key": BETA[1], "namespaces": ["beta-*"]},
]}
LOADED = "document.body.dataset.loaded === '1'"


def _get(srv: Any, path: str, creds: tuple[str, str] | None = None) -> tuple[int, Any]:
    headers: dict[str, str] = {}
    if creds is not None:
        req = AWSRequest(method="GET", url=srv.url + path, data=b"")
        S3SigV4Auth(Credentials(*creds), "s3", "us-east-1").add_auth(req)
        headers = dict(req.headers.items())
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if r.getheader("content-type", "").startswith(
            "application/json") else raw
    finally:
        conn.close()


@pytest.fixture
def srv(live_server: Callable[..., Any]) -> Any:
    srv = live_server(tenants=Tenants.from_dict(TENANTS))
    for creds, ns, n, size in ((ACME, "acme-alpha", 9, 3000), (ACME, "acme-beta", 4, 50_000),
                               (BETA, "beta-other", 3, 1000)):
        s3 = boto_client(srv.url, *creds)
        s3.create_bucket(Bucket=ns)
        for i in range(n):
            s3.put_object(Bucket=ns, Key=f"k{i}", Body=bytes([i]) * size)
            s3.get_object(Bucket=ns, Key=f"k{i}")["Body"].read()
    return srv


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    need_chromium()
    b = Browser(tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def _sign_in(b: Browser, creds: tuple[str, str]) -> None:
    b.wait_for("['required', 'failed'].includes(document.body.dataset.auth)")
    b.evaluate("document.getElementById('access-key').value = ''")
    b.type_into("access-key", creds[0])
    b.type_into("secret-key", creds[1])
    b.click("signin-submit")


def test_the_page_is_open_but_its_data_is_not(srv: Any) -> None:
    for path in ("/ui", "/ui/app.js", "/ui/sigv4.js", "/ui/app.css"):
        assert _get(srv, path)[0] == 200, path
    page = _get(srv, "/ui")[1]
    assert b'<meta name="kvstore-region" content="us-east-1">' in page
    for path in ("/v1/stats", "/v1/pod/stats"):
        status, body = _get(srv, path)
        assert (status, body["error"]["name"]) == (403, "AccessDenied"), path
        assert _get(srv, path, ACME)[0] == 200


def test_signed_in_the_page_shows_what_v1_stats_serves(srv: Any, browser: Browser,
                                                       tmp_path: Path) -> None:
    browser.navigate(f"{srv.url}/ui")
    browser.wait_for("document.body.dataset.auth === 'required'")
    before = Dom(browser.html())
    assert "AccessDenied" in before.by_id["error"]
    assert before.attrs_by_id["data"].get("hidden") is not None  # no data without credentials
    _sign_in(browser, ACME)
    browser.wait_for(LOADED)
    status, st = _get(srv, "/v1/stats", ACME)  # no traffic since: the same numbers
    assert status == 200
    d = Dom(browser.html())
    assert d.body.get("data-auth") == "signed"
    assert d.by_id["auth-status"] == f"signed in as {ACME[0]}"
    assert int(d.attrs_by_id["blocks"]["data-value"]) == st["stats"]["blocks"] == 16
    assert d.ns == {name: {"blocks": u["blocks"], "bytes": u["bytes"]}
                    for name, u in st["namespaces"].items()}
    assert set(d.ns) == {"acme-alpha", "acme-beta"}  # beta's namespace is not acme's to see
    assert d.ns["acme-beta"] == {"blocks": 4, "bytes": 4 * 50_000}
    s = st["stats"]
    hits = s["hits_dram"] + s["hits_flash"]
    assert d.by_id["hit-rate-total"] == f"{100 * hits / (hits + s['misses']):.1f}%"
    assert d.attrs_by_id["error"].get("hidden") is not None
    assert d.attrs_by_id["signin"].get("hidden") is not None
    # the secret stays in this tab: sessionStorage, not localStorage, and in no request
    stored = json.loads(browser.evaluate("sessionStorage.getItem('kvstore-ui-credentials')"))
    assert stored == {"accessKey": ACME[0], "secret": ACME[1]}
    assert browser.evaluate("localStorage.length") == 0
    sent = browser.requests()
    assert ACME[1] not in json.dumps(sent)
    signed = [r for r in sent if "/v1/stats" in json.dumps(r) and
              f"Credential={ACME[0]}/" in json.dumps(r)]
    assert signed, "no signed /v1/stats request seen"
    browser.screenshot(tmp_path / "ui-signed-in.png")
    assert (tmp_path / "ui-signed-in.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # signing out drops the secret and the data
    browser.click("signout")
    browser.wait_for("document.body.dataset.auth === 'required'")
    assert browser.evaluate("sessionStorage.getItem('kvstore-ui-credentials')") is None
    assert browser.evaluate("document.getElementById('data').hidden") is True


@pytest.mark.parametrize(("creds", "error"), [
    ((ACME[0], "not-the-secret"), "SignatureDoesNotMatch"),
    (("AKIDNOBODY", ACME[1]), "InvalidAccessKeyId"),
])
def test_wrong_credentials_show_an_error_not_data(srv: Any, browser: Browser,
                                                  creds: tuple[str, str], error: str) -> None:
    browser.navigate(f"{srv.url}/ui")
    _sign_in(browser, creds)
    browser.wait_for("document.body.dataset.auth === 'failed'")
    d = Dom(browser.html())
    assert "Sign-in refused" in d.by_id["error"] and error in d.by_id["error"]
    assert d.attrs_by_id["error"].get("hidden") is None
    assert "data-loaded" not in d.body
    assert d.attrs_by_id["data"].get("hidden") is not None
    assert d.ns == {} and d.by_id["blocks"] == "-"
    assert browser.evaluate("sessionStorage.getItem('kvstore-ui-credentials')") is None
    assert browser.evaluate("document.getElementById('access-key').value") == creds[0]
    # the right ones then work in the same tab
    _sign_in(browser, ACME)
    browser.wait_for(LOADED)
    assert set(Dom(browser.html()).ns) == {"acme-alpha", "acme-beta"}


# An hour slow, for the page only: Date and Date.now as a skewed client clock would give them
SKEWED_CLOCK = """(() => {
  const Real = Date, skew = -3600e3;
  class Skewed extends Real {
    constructor(...a) { if (a.length) super(...a); else super(Real.now() + skew); }
    static now() { return Real.now() + skew; }
  }
  globalThis.Date = Skewed;
})();"""


def test_a_skewed_clock_signs_again_on_the_servers(srv: Any, browser: Browser) -> None:
    """RequestTimeTooSkewed once, then the page signs on the clock of the answer's Date."""
    browser.call("Page.enable")
    browser.call("Page.addScriptToEvaluateOnNewDocument", source=SKEWED_CLOCK)
    browser.navigate(f"{srv.url}/ui")
    assert browser.evaluate("Math.round((Date.now() - performance.timeOrigin) / 60e3)") == -60
    _sign_in(browser, ACME)
    browser.wait_for(LOADED)
    assert set(Dom(browser.html()).ns) == {"acme-alpha", "acme-beta"}
    statuses = [e["params"]["response"]["status"] for e in browser.events
                if e["method"] == "Network.responseReceived"
                and e["params"]["response"]["url"].endswith("/v1/stats")]
    assert 403 in statuses and statuses[-1] == 200


def test_without_a_secure_context_the_page_says_why(srv: Any, tmp_path: Path) -> None:
    """Plain http on a name other than localhost: no crypto.subtle, so no signing."""
    need_chromium()
    b = Browser(tmp_path / "profile-insecure",
                flags=["--host-resolver-rules=MAP ui.kvstore.test 127.0.0.1"])
    try:
        b.navigate(f"http://ui.kvstore.test:{srv.port}/ui")
        b.wait_for("document.body.dataset.auth === 'insecure'")
        assert b.evaluate("window.isSecureContext") is False
        d = Dom(b.html())
        assert "secure context" in d.by_id["error"] and "https" in d.by_id["error"]
        assert d.attrs_by_id["data"].get("hidden") is not None
        assert b.evaluate("document.getElementById('secret-key').disabled") is True
    finally:
        b.close()


def test_over_https_the_page_signs_from_any_name(tmp_path: Path) -> None:
    """https is a secure context whatever the name: a real ``kvstore serve --tls-cert`` with
    credentials, reached as https://ui.kvstore.test (mapped to 127.0.0.1 inside Chromium)."""
    need_chromium()
    from tests.serve_proc import ServeProc
    from tests.tlscerts import CA

    ca = CA(tmp_path, "ui-ca")
    cert = ca.issue("server", server=True)
    creds_file = tmp_path / "tenants.json"
    creds_file.write_text(json.dumps(TENANTS))
    srv = ServeProc(tmp_path / "data", tmp_path, "--credentials", str(creds_file),
                    "--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
                    "--capacity", "64MiB", "--dram", "16MiB", "--segment-size", "8MiB",
                    name="ui-tls").wait_ready()
    try:
        url = f"https://127.0.0.1:{srv.http}"
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id=ACME[0],
                          aws_secret_access_key=ACME[1], region_name="us-east-1",
                          verify=str(ca.pem), config=Config(s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket="acme-tls")
        s3.put_object(Bucket="acme-tls", Key="k", Body=b"x" * 5000)
        b = Browser(tmp_path / "profile-tls",
                    flags=["--host-resolver-rules=MAP ui.kvstore.test 127.0.0.1",
                           "--ignore-certificate-errors"])
        try:
            b.navigate(f"https://ui.kvstore.test:{srv.http}/ui")
            assert b.evaluate("window.isSecureContext") is True
            _sign_in(b, ACME)
            b.wait_for(LOADED)
            d = Dom(b.html())
            assert d.ns == {"acme-tls": {"blocks": 1, "bytes": 5000}}
            assert d.by_id["auth-status"] == f"signed in as {ACME[0]}"
        finally:
            b.close()
    finally:
        srv.stop()
