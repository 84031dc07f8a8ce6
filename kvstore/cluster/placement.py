"""Placement, defined once in the client distribution (``clients/kvstore_wire/placement.py``):
servers and the SDK must agree on every block's owners. This module re-exports it."""

from __future__ import annotations

from kvstore_wire.placement import Member, draw, owners, rank, score

__all__ = ["Member", "draw", "owners", "rank", "score"]
