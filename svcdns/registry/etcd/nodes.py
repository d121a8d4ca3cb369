"""The nodes as ``svcdns node list`` shows them, and ``svcdns node rm``: read from etcd now."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ...errors import NotFound, SvcdnsError, UsageError
from ...pod import Pod
from .client import Compare, EtcdClient, Op
from .keys import Keys, lease_of


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    ready: bool  # its lease key exists: its agent's lease is alive
    lease_left: int | None  # seconds its lease has left (etcd's TimeToLive); None: no lease
    pods: int  # the pods that name it

    def document(self) -> dict[str, object]:
        return {"name": self.name, "status": "Ready" if self.ready else "NotReady",
                "leaseSecondsLeft": self.lease_left, "pods": self.pods}  # fmt: skip


def node_statuses(nodes: set[str], leases: dict[str, int], lease_left: dict[int, int], pods: list[Pod]) -> list[NodeStatus]:
    """Every node with a record or a lease key, by name (pure)."""
    counts: dict[str, int] = {}
    for pod in pods:
        counts[pod.node_name] = counts.get(pod.node_name, 0) + 1
    out = []
    for name in sorted(nodes | set(leases)):
        left = lease_left.get(leases[name]) if name in leases else None
        out.append(NodeStatus(name, name in leases and left != 0, left, counts.get(name, 0)))
    return out


async def read_leases(client: EtcdClient, keys: Keys) -> tuple[set[str], dict[str, int], dict[int, int]]:
    """The node records, the lease keys (node -> lease ID), and each lease's seconds left."""
    (_, records), (_, live) = await asyncio.gather(client.range(keys.nodes, keys_only=True), client.range(keys.leases))
    nodes = {kv.key[len(keys.nodes):].decode(errors="replace") for kv in records}
    leases = {kv.key[len(keys.leases):].decode(errors="replace"): lease_of(kv.value) for kv in live}
    ids = sorted({i for i in leases.values() if i})
    limit = asyncio.Semaphore(32)

    async def left(lease_id: int) -> int:
        async with limit:
            return await client.time_to_live(lease_id)

    return nodes, leases, dict(zip(ids, await asyncio.gather(*(left(i) for i in ids)), strict=True))


async def remove_node(client: EtcdClient, keys: Keys, name: str, location: str) -> None:
    """Delete a down node's record (its pods are then no longer held not ready); refused while its
    agent holds its lease (that agent would write the record again at its next lease)."""
    record, lease_key = keys.node(name), keys.lease(name)
    for _ in range(10):
        kv = await client.get(record)
        if kv is None:
            raise NotFound(f"node {name} not found in {location}")
        if await client.txn([Compare(lease_key, absent=True), Compare(record, mod=kv.mod_revision)], [Op(record)]):
            return
        if await client.get(lease_key) is not None:
            raise UsageError(f"node {name} is Ready: its agent holds its lease; stop that agent first "
                             "(`svcdns node rm` is for a node that is gone)")  # fmt: skip
    raise SvcdnsError(f"could not remove node {name}: too much contention in {location}")


__all__ = ["NodeStatus", "node_statuses", "read_leases", "remove_node"]
