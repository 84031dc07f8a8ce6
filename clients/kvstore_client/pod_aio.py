"""``AsyncPodClient``: the pod client on asyncio (per-node parts of a batch run as tasks).

Same plans, breakers and counters as ``PodClient`` (``kvstore_client.pod``); each node's part is
bounded by ``timeout`` as a whole (``asyncio.wait_for``), and a part past it is a miss.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from kvstore_client import _pod, podlimits
from kvstore_client._pod import FAILED, MembershipSource, NodeSpec, Plan
from kvstore_client._podview import NodeArg, PodBase
from kvstore_client.aio import AsyncClient
from kvstore_client.tls import TlsArg, client_context

PartCall = Callable[[AsyncClient, list[int]], Awaitable[Any]]


async def _failed() -> Any:
    return FAILED


class AsyncPodClient(PodBase):
    """Safe to use from many tasks of one loop."""

    def __init__(self, nodes: Iterable[NodeArg] | None = None, *, namespace: str,
                 membership: MembershipSource | None = None, etcd: str | Sequence[str] = "",
                 pod: str = "", replicas: int | None = None,
                 access_key: str = "dev", secret_key: str = "", create: bool = False,
                 timeout: float = podlimits.node_timeout_seconds_default,
                 breaker_failures: int = podlimits.breaker_failures_default,
                 breaker_open_seconds: float = podlimits.breaker_open_seconds_default,
                 pool_size: int = 4,
                 tls: TlsArg = False, ca: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:
        kw = dict(access_key=access_key, secret_key=secret_key, create=create,
                  pool_size=pool_size, tls=client_context(tls, ca, cert, key) or False)
        membership = _pod.etcd_membership(etcd, pod, membership)
        super().__init__(nodes, membership, namespace, replicas, timeout, breaker_failures,
                         breaker_open_seconds, kw)

    def _new_client(self, spec: NodeSpec) -> AsyncClient:
        return AsyncClient(spec.host, spec.port, namespace=self.namespace, timeout=self.timeout,
                           retries=0, **self._client_kw)

    async def _part(self, node: str, call: PartCall, idxs: list[int]) -> Any:
        found: AsyncClient | None = self._clients.get(node)
        if found is None:
            return FAILED
        client: AsyncClient = found
        try:
            got = await asyncio.wait_for(call(client, idxs), self.timeout)
        except Exception as exc:  # TimeoutError included
            if not _pod.is_node_failure(exc):
                raise
            self._failed(node, exc)
            spec = self._specs.get(node)
            if spec is not None and self._clients.get(node) is client:
                self._clients[node] = self._new_client(spec)  # its pooled connections may be dead
                await client.close()
            return FAILED
        self.breakers[node].success()
        return got

    async def _drive(self, plan: Plan, call: PartCall) -> Any:
        try:
            parts = next(plan)
            while True:
                items = [(p.lstrip("\0"), p, idxs) for p, idxs in parts.items()]
                got = await asyncio.gather(*(self._part(n, call, ix) for n, _, ix in items))
                parts = plan.send({p: g for (_, p, _), g in zip(items, got, strict=True)})
        except StopIteration as stop:
            return stop.value

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for c in clients.values():
            await c.close()
        self.membership.close()

    async def __aenter__(self) -> AsyncPodClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- API (the calls of AsyncClient) -------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        self._refresh()
        nodes = list(self._clients)
        got = await asyncio.gather(*(self._part(n, lambda c, _: c.stats(), []) if self._allow(n)
                                     else _failed() for n in nodes))
        return {"nodes": {n: (None if v is FAILED else v) for n, v in zip(nodes, got, strict=True)},
                "client": self.client_stats()}

    async def put(self, key: str, value: Any, *, ttl_seconds: float = 0.0,
                  overwrite: bool = False) -> bool:
        return (await self.put_many([key], [value], ttl_seconds=ttl_seconds,
                                    overwrite=overwrite))[0]

    async def put_many(self, keys: Sequence[str], values: Sequence[Any], *,
                       ttl_seconds: float = 0.0, overwrite: bool = False) -> list[bool]:
        if len(keys) != len(values):
            raise _pod.InvalidArgument("keys and values differ in length")
        plan = _pod.write_plan(self._owners(keys), self._allow, self.counters)
        return await self._drive(plan, lambda c, ix: c.put_many(
            [keys[i] for i in ix], [values[i] for i in ix], ttl_seconds=ttl_seconds,
            overwrite=overwrite))

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        plan = _pod.read_plan(self._owners(keys), self._allow, lambda v: v is not None, None,
                              self.counters)
        return await self._drive(plan, lambda c, ix: c.get_many(
            [keys[i] for i in ix]))

    async def get_into(self, key: str, buf: Any) -> int | None:
        return (await self.get_many_into([key], [buf]))[0]

    async def get_many_into(self, keys: Sequence[str], bufs: Sequence[Any]) -> list[int | None]:
        plan = _pod.read_plan(self._owners(keys), self._allow, lambda v: v is not None, None,
                              self.counters)
        return await self._drive(plan, lambda c, ix: c.get_many_into(
            [keys[i] for i in ix], [bufs[i] for i in ix]))

    async def exists_many(self, keys: Sequence[str]) -> list[bool]:
        plan = _pod.read_plan(self._owners(keys), self._allow, bool, False, self.counters)
        return await self._drive(plan, lambda c, ix: c.exists_many(
            [keys[i] for i in ix]))

    async def delete_many(self, keys: Sequence[str]) -> int:
        plan = _pod.count_plan(self._delete_owners(keys), self._allow, every_replica=True)
        return await self._drive(plan, lambda c, ix: c.delete_many(
            [keys[i] for i in ix]))

    async def prefetch(self, keys: Sequence[str]) -> int:
        plan = _pod.count_plan(self._owners(keys), self._allow, every_replica=False)
        return await self._drive(plan, lambda c, ix: c.prefetch(
            [keys[i] for i in ix]))

    async def lookup(self, keys: Sequence[str], *, lease_seconds: float = 0.0) -> int:
        plan = _pod.lookup_plan(self._owners(keys), self._allow, self.counters)
        return await self._drive(plan, lambda c, ix: c.lookup(
            [keys[i] for i in ix], lease_seconds=lease_seconds))
