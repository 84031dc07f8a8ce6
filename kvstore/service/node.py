"""``Node``: what every front end of one kvstore process shares, built once by the server.

It replaces the HTTP side's ``AppState`` and the engine half of the bulk port's context: the
engine, the runner (its thread pool), the tenants and their policy, the metrics, the S3 region and
virtual-host domain,
``blocks``, the ``BlockService`` every handler calls, and ``membership``, the pod's view of
live nodes (``kvstore.cluster.membership``; None for a node on its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvstore.auth import Policy, Tenants
from kvstore.cluster.membership import Membership
from kvstore.engine.store import Engine
from kvstore.service.blocks import BlockService
from kvstore.service.runner import EngineRunner


@dataclass
class Node:
    engine: Engine
    runner: EngineRunner
    tenants: Tenants
    metrics: Any = None  # kvstore.api.metrics.Metrics (duck-typed: observe, error, ...)
    region: str = "us-east-1"
    # S3 virtual-host-style addressing: the DOMAIN of BUCKET.DOMAIN Host headers (None: off)
    domain: str | None = None
    etag: str = "md5"  # S3 ETags: "md5" (as S3) or "xxh3" (--etag xxh3; breaks sync tools)
    membership: Membership | None = None
    blocks: BlockService = field(init=False)

    def __post_init__(self) -> None:
        self.blocks = BlockService(self.engine, self.runner, Policy(self.tenants),
                                   lambda: self.metrics)

    @property
    def policy(self) -> Policy:
        return self.blocks.policy
