"""Request and response bodies of the /v1 control plane (pydantic, so /docs is useful).

Counts (keys per request) are checked by the handlers against ``kvstore.limits`` so the answer is
a typed ``LimitExceeded``; pydantic only checks shapes and types.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from kvstore import limits


class LayoutModel(BaseModel):
    """What makes KV bytes of one model incompatible with another's (``kvstore.keys.Layout``)."""

    model: str = Field(..., min_length=1, max_length=256, examples=["meta-llama/Llama-3.1-8B"])
    dtype: str = Field(..., min_length=1, max_length=32, examples=["bfloat16"])
    num_layers: int = Field(..., gt=0, examples=[32])
    num_kv_heads: int = Field(..., gt=0, examples=[8])
    head_dim: int = Field(..., gt=0, examples=[128])
    tokens_per_block: int = Field(..., gt=0, examples=[16])
    tp_rank: int = Field(0, ge=0)
    tp_size: int = Field(1, gt=0)
    revision: str = Field("", max_length=256)
    tenant_salt: str = Field("", max_length=256)


class NamespaceCreate(BaseModel):
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


class NamespaceOut(BaseModel):
    name: str
    created: float
    owner: str
    layout: dict[str, object]
    fingerprint: str = Field(description="hex blake2b-128 layout fingerprint ('' without layout)")
    block_bytes: int
    replicas: int = 1
    blocks: int | None = Field(None, description="live blocks (single-namespace GET only)")


class NamespaceList(BaseModel):
    namespaces: list[NamespaceOut]


class KeysRequest(BaseModel):
    keys: list[str] = Field(..., description=f"at most {limits.batch_keys_max} keys")


class LookupRequest(BaseModel):
    keys: list[str] = Field(..., description=f"a key chain, at most {limits.chain_keys_max} keys")
    lease_seconds: float = Field(
        0.0, ge=0.0,
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


class StatsResponse(BaseModel):
    device: str
    ready: bool
    stats: dict[str, float | int]


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
