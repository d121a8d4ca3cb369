"""The pods' statuses in etcd: read every node's, and write one node's on its lease (:mod:`.keys`
gives the schema, :mod:`.lease` keeps the book of what the node wrote)."""

from __future__ import annotations

from collections.abc import Mapping

from ...pod import PodStatus
from ...table import Key
from .client import EtcdClient, Op
from .keys import Keys, status_of, status_value
from .lease import TXN_OPS, NodeLease


async def read_statuses(client: EtcdClient, keys: Keys) -> dict[tuple[str, str, str], PodStatus]:
    """Every status key: (node, ns, name) -> status (values written by hand are left out)."""
    _, kvs = await client.range(keys.statuses)
    found: dict[tuple[str, str, str], PodStatus] = {}
    for kv in kvs:
        parsed = keys.parse(kv.key)
        if parsed is not None and parsed[0] == "status" and (status := status_of(kv.value)) is not None:
            assert isinstance(parsed[1], tuple) and len(parsed[1]) == 3
            found[parsed[1]] = status
    return found


async def write_statuses(client: EtcdClient, keys: Keys, lease: NodeLease, changes: Mapping[Key, PodStatus | None]) -> set[Key]:
    """Write ``lease``'s node's statuses that differ from its book (None: delete) on the lease; the
    keys written. Before the lease is first written they are only booked: its write takes them."""
    values = {k: status_value(s) if s is not None else None for k, s in changes.items()}
    written = lease.book(values)
    lease_id = lease.lease_id if lease.written else 0
    if not written or not lease_id:  # booked (and unsynced): the lease's next write takes them, or the next call
        return set()
    ops = [Op(keys.status(lease.node, k), v, lease=lease_id) if (v := values[k]) is not None
           else Op(keys.status(lease.node, k)) for k in sorted(written)]  # fmt: skip
    for i in range(0, len(ops), TXN_OPS):
        await client.txn([], ops[i : i + TXN_OPS])
    lease.synced(written, lease_id)
    return written


__all__ = ["read_statuses", "write_statuses"]
