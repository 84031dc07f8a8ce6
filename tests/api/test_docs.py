"""/docs and /redoc load every asset from this server: nothing from a CDN or any other host."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable
from html.parser import HTMLParser

import pytest

from kvstore.api import docs
from tests.api.conftest import LiveServer


class _Refs(HTMLParser):
    """Every src/href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs.extend(v for k, v in attrs if k in ("src", "href") and v)


def get(srv: LiveServer, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type", ""), resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server()


@pytest.mark.parametrize(("page", "script"), [("/docs", "swagger-ui-bundle.js"),
                                              ("/redoc", "redoc.standalone.js")])
def test_docs_pages_load_only_local_assets(srv: LiveServer, page: str, script: str) -> None:
    status, ctype, body = get(srv, page)
    assert status == 200 and ctype.startswith("text/html")
    html = body.decode()
    # no absolute or scheme-relative URL anywhere in the page: no CDN, no fonts, no validator
    assert not re.search(r"(https?:)?//[a-z0-9]", html, re.I), html
    parser = _Refs()
    parser.feed(html)
    scripts = [r for r in parser.refs if r.endswith(".js")]
    assert scripts == [f"{docs.ASSETS_PATH}/{script}"], parser.refs
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    for ref in parser.refs:
        status, ctype, asset = get(srv, ref)
        assert status == 200 and len(asset) > 0, ref
        if ref.endswith(".js"):
            assert "javascript" in ctype and len(asset) > 100_000, (ref, ctype, len(asset))
        elif ref.endswith(".css"):
            assert ctype.startswith("text/css"), ctype


def test_swagger_ui_is_one_that_renders_openapi_3_1(srv: LiveServer) -> None:
    """FastAPI emits OpenAPI 3.1; Swagger UI before 5.0 refuses to render it."""
    status, _, spec = get(srv, "/openapi.json")
    assert status == 200 and json.loads(spec)["openapi"].startswith("3.1")
    status, _, bundle = get(srv, f"{docs.ASSETS_PATH}/swagger-ui-bundle.js")
    assert status == 200 and b"SwaggerUIBundle" in bundle
    assert b"isOAS31" in bundle  # Swagger UI 5's OpenAPI 3.1 support (absent from 4.x)


def test_asset_route_answers_only_the_shipped_files(srv: LiveServer) -> None:
    for name in docs.ASSET_FILES:
        assert get(srv, f"{docs.ASSETS_PATH}/{name}")[0] == 200, name
    status, ctype, body = get(srv, f"{docs.ASSETS_PATH}/../docs.py")
    assert status == 404 and ctype.startswith("application/json"), (status, body)
    assert get(srv, f"{docs.ASSETS_PATH}/nope.js")[0] == 404
