"""``/docs`` (Swagger UI) and ``/redoc`` with every asset served by this server, none from a CDN.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank on a machine
without internet, which is where a storage node usually is. This is FastAPI's documented
self-hosting recipe: the pages come from ``fastapi.openapi.docs`` and point at JavaScript, CSS and
the favicon shipped inside the ``fastapi-offline`` package (Swagger UI 5, which renders the
OpenAPI 3.1 that FastAPI emits, and the ReDoc standalone bundle), served from ``ASSETS_PATH``.

``ASSETS_PATH`` lies under ``/v1/`` so the dispatcher in ``kvstore.api.app`` already sends it to
the control plane, and ``_`` cannot start a namespace name, so it shadows no bucket or namespace.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/v1/_docs"
# (package, folder inside it) holding swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
# and favicon.png
ASSETS_PACKAGE = ("fastapi_offline", "static")
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")

# Swagger UI's defaults would send the spec to validator.swagger.io for a badge: not offline.
SWAGGER_UI_PARAMETERS: dict[str, object] = {"validatorUrl": None}


def install_docs(app: FastAPI) -> None:
    """Add the two pages and the asset route to ``app`` (built with ``docs_url=None`` and
    ``redoc_url=None``)."""
    assert app.docs_url is None and app.redoc_url is None, "FastAPI's CDN pages are still on"
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(ASSETS_PATH, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    def _root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS)

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png", with_google_fonts=False)
