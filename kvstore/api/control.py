"""The /v1 control plane (FastAPI; OpenAPI at /docs), plus /healthz, /readyz and /metrics.

Thin: each route parses, calls ``kvstore.service.BlockService`` (which authorizes with the one
policy of ``kvstore.auth`` and decides what runs inline and what hops to the engine's threads),
and encodes. Every count is
checked against ``kvstore.limits`` and every error is answered by the one mapper in
``kvstore.api.errors`` as JSON. Authentication is SigV4 in the header (or presigned) form, as on
the S3 surface; development mode accepts anyone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kvstore import errors as E
from kvstore import keys, limits
from kvstore.api.conn_tenant import bind_connection
from kvstore.api.control_models import (
    CheckResponse,
    DeleteResponse,
    ErrorResponse,
    ExistsResponse,
    Health,
    KeysRequest,
    LookupRequest,
    LookupResponse,
    NamespaceCreate,
    NamespaceList,
    NamespaceOut,
    NamespaceUsage,
    OpStats,
    PrefetchResponse,
    Readiness,
    StatsResponse,
)
from kvstore.api.docs import install_docs
from kvstore.api.errors import S3Error, json_error, request_ids
from kvstore.api.metrics import CONTENT_TYPE, Metrics
from kvstore.api.ui import install_ui
from kvstore.auth import Op, Tenant
from kvstore.engine.types import NamespaceInfo
from kvstore.service import Node


class ServerHealth:
    """Liveness and readiness, flipped by the server: ready after recovery and startup, not
    ready while draining."""

    def __init__(self) -> None:
        self.ready = False
        self.reason = "starting"

    def set_ready(self) -> None:
        self.ready, self.reason = True, "ready"

    def set_draining(self) -> None:
        self.ready, self.reason = False, "draining"


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 403, 404, 409, 413, 503)}


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """Lowercase header names; repeated headers joined with commas (SigV4's canonical form)."""
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        name, value = k.decode("latin-1").lower(), v.decode("latin-1")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def _check_count(n: int, bound: int, what: str) -> None:
    if n > bound:
        raise E.LimitExceeded(f"{n} {what} exceed the bound of {bound} (kvstore.limits)")


def _ns_out(info: NamespaceInfo, blocks: int | None = None) -> NamespaceOut:
    return NamespaceOut(name=info.name, created=info.created, owner=info.owner,
                        layout=dict(info.layout), fingerprint=info.fingerprint,
                        block_bytes=info.block_bytes, replicas=info.replicas,
                        quota_bytes=info.quota_bytes, quota_mode=info.quota_mode, blocks=blocks)


def _check_same_namespace(info: NamespaceInfo, layout: keys.Layout | None,
                          layout_d: dict[str, object], block_bytes: int) -> None:
    """AlreadyExists (409) unless ``info`` is what this create request would have made."""
    derived = (layout.block_bytes() or 0) if layout is not None else 0
    want_bytes = block_bytes or derived  # as the catalog derives it on create
    if dict(info.layout) == layout_d and info.block_bytes == want_bytes:
        return
    want_fp = layout.fingerprint_hex() if layout is not None else ""
    raise E.AlreadyExists(
        f"namespace {info.name} exists with another layout or block size (fingerprint "
        f"{info.fingerprint or 'none'}, block_bytes {info.block_bytes}; this request: "
        f"fingerprint {want_fp or 'none'}, block_bytes {want_bytes})")


def _document_namespace_names(app: FastAPI) -> None:
    """Give every ``ns`` path parameter and ``NamespaceCreate.name`` the exact naming rules
    (``keys.namespace_pattern``) in the OpenAPI document, so a schema-valid name is one the
    server accepts. The check stays in ``keys.validate_namespace`` (S3's InvalidBucketName);
    this only documents it (schemathesis found names the schema allowed and the server
    refused)."""
    base = app.openapi
    rule = {"pattern": keys.namespace_pattern(), "minLength": limits.namespace_bytes_min,
            "maxLength": limits.namespace_bytes_max}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = base()
        for item in schema.get("paths", {}).values():
            for op in item.values():
                for param in op.get("parameters", []) if isinstance(op, dict) else []:
                    if param.get("name") == "ns" and param.get("in") == "path":
                        param.setdefault("schema", {}).update(rule)
        model = schema.get("components", {}).get("schemas", {}).get("NamespaceCreate", {})
        if "name" in model.get("properties", {}):
            model["properties"]["name"].update(rule)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route of ``app`` serves at the request's path (Starlette's own 405
    names only the first route that matched the path, and each method is its own route)."""
    from starlette.routing import Match, Route

    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods or ())
    return sorted(methods)


def create_control_app(state: Node, health: ServerHealth) -> FastAPI:
    """The FastAPI app for /healthz, /readyz, /metrics, /docs and /v1/*."""
    engine, tenants, blocks = state.engine, state.tenants, state.blocks
    metrics: Metrics = state.metrics
    started = time.monotonic()
    app = FastAPI(title="kvstore control plane", version="1",
                  description="Health, metrics, namespaces with layout fingerprints, and the "
                              "KV-specific calls S3 lacks (longest-prefix lookup with leases, "
                              "prefetch, batch exists/delete). S3 routes are served beside it.",
                  swagger_ui_oauth2_redirect_url=None, docs_url=None, redoc_url=None)

    async def caller(request: Request) -> Tenant:
        """The authenticated tenant (SigV4 header or presigned form). Development mode skips
        only the signature comparison (``sigv4.authenticate``); SigV2, malformed auth and body
        hashes get the same answers as in production."""
        from kvstore.api.s3 import sigv4  # the S3 surface's verifier, shared

        scope = request.scope
        headers = _headers(scope)
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        tenant, _ = sigv4.authenticate(tenants, request.method, raw_path.split("?", 1)[0],
                                       query, headers, time.time())
        bind_connection(scope, tenant)  # Busy past --max-connections-per-tenant
        payload_hash = headers.get("x-amz-content-sha256", sigv4.UNSIGNED_PAYLOAD)
        if payload_hash in sigv4.STREAMING_MODES:
            raise S3Error("InvalidRequest", "streaming (aws-chunked) bodies are not used on /v1")
        if payload_hash != sigv4.UNSIGNED_PAYLOAD:
            if hashlib.sha256(await request.body()).hexdigest() != payload_hash:
                raise S3Error("XAmzContentChecksumMismatch",
                              "the body does not match x-amz-content-sha256")
        return tenant

    def error_response(exc: BaseException, op: str) -> JSONResponse:
        rid = request_ids.next()
        status, body = json_error(exc, rid)
        err = body["error"]
        blocks.failed(op, str(err["name"]) if isinstance(err, dict) else "InternalError")
        headers = {"x-amz-request-id": rid}
        if status == 503:
            headers["retry-after"] = "1"
        return JSONResponse(body, status_code=status, headers=headers)

    def op_of(request: Request) -> str:
        route = request.scope.get("route")
        return f"v1_{route.name}" if route is not None else "v1"

    @app.exception_handler(E.KVStoreError)
    async def _kv_error(request: Request, exc: E.KVStoreError) -> JSONResponse:
        return error_response(exc, op_of(request))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return error_response(E.InvalidArgument(msg), op_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:  # with an Allow header (RFC 9110 requires it)
            resp = error_response(S3Error("MethodNotAllowed", "method not allowed here"), "v1")
            resp.headers["allow"] = ", ".join(_allowed_methods(app, request))
            return resp
        if exc.status_code == 404:
            return error_response(E.NotFound(f"no such route: {request.url.path}"), "v1")
        return error_response(E.InvalidArgument(str(exc.detail)), "v1")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, op_of(request))  # classify() logs it; 500, generic message

    # --- health, readiness, metrics -----------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, tags=["health"],
             responses={503: {"model": Readiness}})
    async def readyz() -> Response:
        """Readiness: recovery finished and the server is not draining."""
        body = Readiness(ready=health.ready, reason=health.reason)
        return JSONResponse(body.model_dump(), status_code=200 if health.ready else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # --- stats and check ----------------------------------------------------------------------

    @app.get("/v1/stats", response_model=StatsResponse, tags=["admin"], responses=_ERRORS)
    async def stats(tenant: Tenant = Depends(caller)) -> StatsResponse:
        """Engine counters and gauges (the same numbers /metrics exports), and the live blocks
        and bytes of each namespace the caller may see."""
        usage = engine.namespace_usage()
        mine = {i.name: NamespaceUsage(blocks=usage.get(i.name, (0, 0))[0],
                                       bytes=usage.get(i.name, (0, 0))[1],
                                       **blocks.quotas.describe(i))  # type: ignore[arg-type]
                for i in blocks.namespaces(tenant)}
        return StatsResponse(device=engine.device_name, ready=health.ready,
                             stats=dict(engine.stats()), namespaces=mine,
                             ops={op: OpStats(**v) for op, v in metrics.op_summary().items()},
                             uptime_seconds=time.monotonic() - started)

    @app.get("/v1/pod", tags=["admin"], responses=_ERRORS)
    async def pod(tenant: Tenant = Depends(caller)) -> dict[str, object]:
        """This node's view of its pod: the membership source, whether it is current (etcd
        reachable), this node's id and the live nodes with their endpoints and capacity."""
        m = state.membership
        return {"kind": "none", "self": "", "connected": True, "nodes": {}} if m is None \
            else m.describe()

    @app.get("/v1/pod/stats", tags=["admin"], responses=_ERRORS)
    async def pod_stats(tenant: Tenant = Depends(caller)) -> dict[str, object]:
        """Every live node of the pod with its blocks, flash use, hits, misses and forwarded
        requests, read from each node's /metrics (what `kvstore pod status` shows); a node
        that does not answer within 2 s is listed as unreachable."""
        from kvstore.service.pod_view import pod_stats as collect

        return await collect(state.membership, getattr(blocks.forward, "tls", None))

    @app.post("/v1/check", response_model=CheckResponse, tags=["admin"], responses=_ERRORS)
    async def check(tenant: Tenant = Depends(caller)) -> CheckResponse:
        """Cross-check index, segments and byte accounting."""
        problems = await blocks.run(engine.check)
        return CheckResponse(ok=not problems, problems=list(problems))

    # --- namespaces ---------------------------------------------------------------------------

    @app.post("/v1/namespaces", response_model=NamespaceOut, status_code=201,
              tags=["namespaces"], responses={**_ERRORS, 200: {
                  "model": NamespaceOut,
                  "description": "The caller's namespace already exists with this layout"}})
    async def create_namespace(body: NamespaceCreate, response: Response,
                               tenant: Tenant = Depends(caller)) -> NamespaceOut:
        """Create a namespace (an S3 bucket) with an optional layout; the answer carries the
        layout fingerprint and the block size every PUT must then have. Idempotent: asking
        again for a namespace the caller owns with the same layout and block size answers 200
        with it; with a different one, 409."""
        keys.validate_namespace(body.name)
        layout_d = None if body.layout is None else body.layout.model_dump()
        if layout_d is not None:
            try:
                keys.Layout(**layout_d)  # a clear 400 before the namespace exists
            except ValueError as exc:
                raise E.InvalidArgument(f"layout: {exc}") from None
        info, created = await blocks.create_namespace(tenant, body.name, layout=layout_d,
                                                      block_bytes=body.block_bytes,
                                                      replicas=body.replicas,
                                                      quota_bytes=body.quota_bytes,
                                                      quota_mode=body.quota_mode)
        if not created and "replicas" in body.model_fields_set and \
                info.replicas != body.replicas:  # asked for another count (unsaid: any)
            raise E.AlreadyExists(f"namespace {info.name} exists with {info.replicas} "
                                  f"replica(s), not {body.replicas}")
        if not created:  # compare with what the create recorded: the tenant-salted layout
            salted = blocks.policy.salted_layout(tenant, layout_d)
            _check_same_namespace(info, None if salted is None else keys.Layout(**salted),
                                  salted or {}, body.block_bytes)
            response.status_code = 200
        return _ns_out(info)

    @app.get("/v1/namespaces", response_model=NamespaceList, tags=["namespaces"],
             responses=_ERRORS)
    async def list_namespaces(tenant: Tenant = Depends(caller)) -> NamespaceList:
        """Namespaces the caller may use."""
        return NamespaceList(namespaces=[_ns_out(i) for i in blocks.namespaces(tenant)])

    @app.get("/v1/namespaces/{ns}", response_model=NamespaceOut, tags=["namespaces"],
             responses=_ERRORS)
    async def get_namespace(ns: str, tenant: Tenant = Depends(caller)) -> NamespaceOut:
        return _ns_out(blocks.namespace(tenant, ns), engine.count(ns))

    @app.delete("/v1/namespaces/{ns}", status_code=204, tags=["namespaces"], responses=_ERRORS,
                response_class=Response)
    async def delete_namespace(ns: str, tenant: Tenant = Depends(caller)) -> Response:
        """Delete an empty namespace (BucketNotEmpty otherwise)."""
        await blocks.delete_namespace(tenant, ns)
        return Response(status_code=204)

    # --- KV calls S3 lacks --------------------------------------------------------------------

    def checked_keys(ns: str, tenant: Tenant, key_list: Sequence[str], bound: int) -> None:
        _check_count(len(key_list), bound, "keys")

    @app.post("/v1/{ns}/lookup", response_model=LookupResponse, tags=["blocks"],
              responses=_ERRORS)
    async def lookup(ns: str, body: LookupRequest,
                     tenant: Tenant = Depends(caller)) -> LookupResponse:
        """Length of the longest present prefix of a key chain, in one round trip. With
        ``lease_seconds`` the found blocks are pinned until the lease expires, as many as the
        leased-bytes budget allows (``leased``; ``lease_limited`` when fewer than found)."""
        t0 = time.perf_counter()
        checked_keys(ns, tenant, body.keys, limits.chain_keys_max)
        if body.lease_seconds > limits.lease_seconds_max:
            raise E.LimitExceeded(
                f"lease_seconds {body.lease_seconds:g} exceeds {limits.lease_seconds_max:g}")
        res = await blocks.lookup_pod(tenant, ns, body.keys, lease_seconds=body.lease_seconds)
        blocks.observe("lookup", "-", 0, time.perf_counter() - t0)
        return LookupResponse(prefix_len=res.found, keys=len(body.keys), leased=res.leased,
                              lease_seconds=body.lease_seconds,
                              lease_limited=res.lease_limited(body.lease_seconds))

    @app.get("/v1/{ns}/blocks", tags=["blocks"], responses=_ERRORS,
             summary="This node's own blocks, sorted (a page of a whole-pod S3 listing)")
    async def local_blocks(ns: str, prefix: str = "", start_after: str = "",
                           limit: int = limits.list_keys_max,
                           tenant: Tenant = Depends(caller)) -> dict[str, object]:
        from kvstore.api.s3.pod_listing import meta_doc

        blocks.authorize(tenant, ns, Op.READ)
        _check_count(limit, limits.list_keys_max, "limit")
        items, more = await blocks.run(lambda: blocks.list_blocks(
            ns, prefix=prefix, start_after=start_after, limit=max(1, limit), with_meta=True))
        return {"blocks": [meta_doc(b) for b in items], "truncated": more}

    @app.post("/v1/{ns}/prefetch", response_model=PrefetchResponse, tags=["blocks"],
              responses=_ERRORS)
    async def prefetch(ns: str, body: KeysRequest,
                       tenant: Tenant = Depends(caller)) -> PrefetchResponse:
        """Stage blocks into the DRAM tier ahead of reads."""
        t0 = time.perf_counter()
        checked_keys(ns, tenant, body.keys, limits.batch_keys_max)
        staged = await blocks.prefetch(tenant, ns, body.keys, pod=True)
        blocks.observe("prefetch", "dram", 0, time.perf_counter() - t0)
        return PrefetchResponse(requested=len(body.keys), staged=staged)

    @app.post("/v1/{ns}/exists", response_model=ExistsResponse, tags=["blocks"],
              responses=_ERRORS)
    async def exists(ns: str, body: KeysRequest,
                     tenant: Tenant = Depends(caller)) -> ExistsResponse:
        """One boolean per key."""
        t0 = time.perf_counter()
        checked_keys(ns, tenant, body.keys, limits.batch_keys_max)
        found = await blocks.exists_pod(tenant, ns, body.keys)
        blocks.observe("exists", "-", 0, time.perf_counter() - t0)
        return ExistsResponse(exists=list(found))

    @app.post("/v1/{ns}/delete", response_model=DeleteResponse, tags=["blocks"],
              responses=_ERRORS)
    async def delete(ns: str, body: KeysRequest,
                     tenant: Tenant = Depends(caller)) -> DeleteResponse:
        """Delete a batch of blocks; absent keys are not an error."""
        t0 = time.perf_counter()
        checked_keys(ns, tenant, body.keys, limits.batch_keys_max)
        n = await blocks.delete_many(tenant, ns, body.keys, pod=True)
        blocks.observe("delete", "-", 0, time.perf_counter() - t0)
        return DeleteResponse(requested=len(body.keys), deleted=n)

    _document_namespace_names(app)
    install_docs(app)  # /docs and /redoc with their assets served from here (no CDN)
    install_ui(app, state.region)  # /ui: the live status page (static files; its data comes from /v1/stats)
    return app
