"""The one door every front end (S3, /v1, bulk, shm, NIXL) goes through: ``Node`` holds the
engine, its thread pool, the auth policy and the metrics; ``BlockService`` authorizes every call
with ``kvstore.auth``, decides what runs inline and what hops to the engine's threads, and counts
errors."""

from kvstore.engine.reader import BlockLease
from kvstore.service.blocks import BlockService
from kvstore.service.node import Node

__all__ = ["BlockLease", "BlockService", "Node"]
