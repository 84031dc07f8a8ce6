"""What every HTTP handler needs, built once by the server and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvstore.engine.store import Engine
from kvstore.tenants import Tenants
from kvstore.transport.runner import EngineRunner


@dataclass
class AppState:
    engine: Engine
    runner: EngineRunner
    tenants: Tenants
    metrics: Any = None  # kvstore.api.metrics.Metrics once wired
    region: str = "us-east-1"
    extras: dict[str, Any] = field(default_factory=dict)
