"""Request and response bodies of the /v1 control plane (pydantic, so /docs is useful).

Counts (keys per request) are checked by the handlers against ``kvstore.limits`` so the answer is
a typed ``LimitExceeded``; pydantic only checks shapes and types.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict

from kvstore import limits

_INT_MAX = limits.layout_int_max
_STR_MAX = limits.layout_str_chars_max


class LayoutModel(BaseModel):
    """What makes KV bytes of one model incompatible with another's (``kvstore.keys.Layout``)."""

    # strict: a JSON true is not a tp_rank of 1, 168.0 is not a head count (schemathesis)
    model_config = ConfigDict(strict=True)

    model: str = Field(..., min_length=1, max_length=_STR_MAX,
                       examples=["meta-llama/Llama-3.1-8B"])
    dtype: str = Field(..., min_length=1, max_length=32, examples=["bfloat16"])
    num_layers: int = Field(..., gt=0, le=_INT_MAX, examples=[32])
    num_kv_heads: int = Field(..., gt=0, le=_INT_MAX, examples=[8])
    head_dim: int = Field(..., gt=0, le=_INT_MAX, examples=[128])
    tokens_per_block: int = Field(..., gt=0, le=_INT_MAX, examples=[16])
    tp_rank: int = Field(0, ge=0, le=_INT_MAX, description="in [0, tp_size)")
    tp_size: int = Field(1, gt=0, le=_INT_MAX)
    revision: str = Field("", max_length=_STR_MAX)
    tenant_salt: str = Field("", max_length=_STR_MAX)


class NamespaceCreate(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str = Field(..., examples=["llama3-8b-bf16"], description="S3 bucket-name rules")
    layout: LayoutModel | None = None
    block_bytes: int = Field(
        0, ge=0, le=limits.block_bytes_max,
        description="exact payload size every PUT must have; 0 = derived from the layout's "
                    "dtype when known, else any size")
    replicas: int = Field(
        1, ge=1, le=limits.namespace_replicas_max,
        description="copies of each block in a pod, on distinct nodes (recorded pod-wide): "
                    "writes go to every live replica, reads to any live one")
    quota_bytes: int = Field(
        0, ge=0, le=_INT_MAX,
        description="most live payload bytes the namespace may hold (recorded with it, "
                    "pod-wide: each node enforces it on the blocks it holds); 0 = no quota")
    quota_mode: Literal["evict", "strict"] = Field(
        "evict", description="past the quota: `evict` the namespace's oldest blocks to make "
                             "room, or `strict`: refuse the write with QuotaExceeded (403)")


class NamespaceOut(BaseModel):
    name: str
    created: float
    owner: str
    layout: dict[str, object]
    fingerprint: str = Field(description="hex blake2b-128 layout fingerprint ('' without layout)")
    block_bytes: int
    replicas: int = 1
    quota_bytes: int = 0
    quota_mode: str = "evict"
    blocks: int | None = Field(None, description="live blocks (single-namespace GET only)")


class NamespaceList(BaseModel):
    namespaces: list[NamespaceOut]


# An object key as the server accepts it: 1..key_bytes_max UTF-8 bytes, no NUL. JSON Schema counts
# characters, not bytes: maxLength is the byte bound, so a schema-valid key of multi-byte
# characters may still be refused as too long (LimitExceeded/InvalidKey); the description says so.
_KEY_SCHEMA: JsonDict = {"items": {"type": "string", "minLength": 1, "maxLength": limits.key_bytes_max,
                         "pattern": "^[^\u0000]+$",
                         "description": f"1..{limits.key_bytes_max} UTF-8 bytes, no NUL"}}


class KeysRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    keys: list[str] = Field(..., description=f"at most {limits.batch_keys_max} keys",
                            json_schema_extra={**_KEY_SCHEMA, "maxItems": limits.batch_keys_max})


class LookupRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    keys: list[str] = Field(..., description=f"a key chain, at most {limits.chain_keys_max} keys",
                            json_schema_extra={**_KEY_SCHEMA, "maxItems": limits.chain_keys_max})
    lease_seconds: float = Field(
        0.0, ge=0.0, json_schema_extra={"maximum": limits.lease_seconds_max},
        description=f"pin the found prefix this long (at most {limits.lease_seconds_max:g} s): "
                    "eviction cannot take a pinned block before the lease expires (reads do not "
                    "end it; a delete or an overwrite does). The server's leased-bytes budget "
                    "bounds what is pinned at once: past it fewer blocks are pinned and "
                    "`lease_limited` says so. 0 = no lease")


class LookupResponse(BaseModel):
    prefix_len: int = Field(description="length of the longest present prefix of the chain")
    keys: int = Field(description="keys in the request")
    leased: int = Field(description="blocks of the found prefix pinned by this call, from its "
                                    "start (0 without a lease)")
    lease_seconds: float
    lease_limited: bool = Field(
        description="true when a lease was asked for and the leased-bytes budget pinned fewer "
                    "blocks than were found (`leased < prefix_len`): the rest may be evicted")


class PrefetchResponse(BaseModel):
    requested: int
    staged: int = Field(description="blocks now in the DRAM tier")


class ExistsResponse(BaseModel):
    exists: list[bool]


class DeleteResponse(BaseModel):
    requested: int
    deleted: int


class NamespaceUsage(BaseModel):
    blocks: int
    bytes: int
    quota_bytes: int = Field(0, description="the namespace's byte quota, 0 = none")
    quota_mode: str = "evict"
    tenant_quota_bytes: int = Field(0, description="its owner's quota over all its namespaces")
    tenant_quota_mode: str = "evict"


class OpStats(BaseModel):
    count: float
    bytes: float
    # cumulative latency histogram: [upper bound in seconds, operations at or under it]
    buckets: list[tuple[float, float]]


class StatsResponse(BaseModel):
    device: str
    ready: bool
    stats: dict[str, float | int]
    # the namespaces the caller may see: live blocks and payload bytes of each
    namespaces: dict[str, NamespaceUsage] = {}
    # operations served by this node since it started (S3, /v1 and bulk), by operation
    ops: dict[str, OpStats] = {}
    uptime_seconds: float = 0.0


class CheckResponse(BaseModel):
    ok: bool
    problems: list[str]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    reason: str


class ErrorDetail(BaseModel):
    code: int
    name: str
    message: str
    retryable: bool


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str = ""
