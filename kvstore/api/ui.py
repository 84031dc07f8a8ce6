"""``/ui``: a live status page, three static files served from the installed package.

The page (``ui_assets/``: HTML, CSS and plain JavaScript, no build step, no library, nothing
fetched from elsewhere) polls ``/v1/stats`` and ``/v1/pod/stats`` every two seconds and draws
the last minutes it has seen as SVG polylines: capacity and use, hit rate, throughput and latency (from
the per-operation latency histograms ``/v1/stats`` returns), per namespace, and the pod's nodes.
It shows only what ``/v1/stats`` shows the caller; the files themselves hold no data, so they
are served without authentication.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8"}
# the page is small and changes only with the package: no caching surprises after an upgrade
_HEADERS = {"cache-control": "no-cache", "x-content-type-options": "nosniff",
            "content-security-policy": "default-src 'self'; img-src 'self' data:"}


def _load() -> dict[str, bytes]:
    root = resources.files("kvstore.api") / "ui_assets"
    return {name: (root / name).read_bytes() for name in _TYPES}


def install_ui(app: FastAPI) -> None:
    """Add ``GET /ui`` and its two assets (read once, at app build)."""
    files = _load()

    def handler(name: str) -> Response:
        return Response(files[name], media_type=_TYPES[name], headers=_HEADERS)

    app.add_api_route("/ui", lambda: handler("index.html"), methods=["GET"],
                      include_in_schema=False)
    app.add_api_route("/ui/app.js", lambda: handler("app.js"), methods=["GET"],
                      include_in_schema=False)
    app.add_api_route("/ui/app.css", lambda: handler("app.css"), methods=["GET"],
                      include_in_schema=False)
