"""``/ui``: a live status page, four static files served from the installed package.

The page (``ui_assets/``: HTML, CSS and plain JavaScript, no build step, no library, nothing
fetched from elsewhere) polls ``/v1/stats`` and ``/v1/pod/stats`` every two seconds and draws
the last minutes it has seen as SVG polylines: capacity and use, hit rate, throughput and
latency (from the per-operation latency histograms ``/v1/stats`` returns), per namespace, and
the pod's nodes. It shows only what ``/v1/stats`` shows the caller; the files themselves hold no
data, so they are served without authentication, while the data endpoints keep theirs.

With credentials on, the page asks for an access key id and secret (a form; kept in the tab's
``sessionStorage``) and signs its GETs with SigV4 in the browser (``sigv4.js``, WebCrypto), for
the node's ``--region``, written into the page here. WebCrypto exists only in secure contexts
(https, or http on localhost/127.0.0.1); elsewhere the page says so instead of signing.
"""

from __future__ import annotations

import html
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "sigv4.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
ASSETS = ("app.js", "sigv4.js", "app.css")  # served at /ui/NAME
_REGION_META = b'<meta name="kvstore-region" content="">'
# the page is small and changes only with the package: no caching surprises after an upgrade
_HEADERS = {"cache-control": "no-cache", "x-content-type-options": "nosniff",
            "content-security-policy": "default-src 'self'; img-src 'self' data:"}


def _load(region: str) -> dict[str, bytes]:
    root = resources.files("kvstore.api") / "ui_assets"
    files = {name: (root / name).read_bytes() for name in _TYPES}
    page = files["index.html"]
    if page.count(_REGION_META) != 1:
        raise RuntimeError("ui_assets/index.html lost its kvstore-region meta tag")
    meta = f'<meta name="kvstore-region" content="{html.escape(region, quote=True)}">'
    files["index.html"] = page.replace(_REGION_META, meta.encode())
    return files


def install_ui(app: FastAPI, region: str) -> None:
    """Add ``GET /ui`` and its assets (read once, at app build); the page signs for ``region``."""
    files = _load(region)

    def handler(name: str) -> Response:
        return Response(files[name], media_type=_TYPES[name], headers=_HEADERS)

    app.add_api_route("/ui", lambda: handler("index.html"), methods=["GET"],
                      include_in_schema=False)
    for name in ASSETS:
        app.add_api_route(f"/ui/{name}", lambda name=name: handler(name), methods=["GET"],
                          include_in_schema=False)
