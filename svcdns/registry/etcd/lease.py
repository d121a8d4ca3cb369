"""A node's lease: the agent's sign of life to every other host (Kubernetes' node lease).

The agent holds one etcd lease for its node and refreshes it every TTL/3 from its own loop (aetcd
has no background keep-alive). Attached to it is the node's liveness key; beside it, not attached,
the node record, so other agents know the node is run by an agent even once the lease is gone (see
:mod:`.state`). A refresh that finds the lease gone (it expired during a partition, or etcd was
wiped) grants a new one and writes both keys again; so does a start. An agent that cannot reach etcd
retries every second: its lease may expire meanwhile, as it should, since other hosts cannot tell a
cut-off host from a dead one.

Nothing here assumes when a lease expires: a leader change in etcd gives every lease its full TTL
again (etcd #9395), so a lease may outlive its TTL, never expire early. ``remaining()`` is this
agent's estimate, counted from the start of its last successful refresh (so never too long).

Keys removed behind the agent's back (``etcdctl del``) while its lease lives are written again at the
next refresh, as the registry's watch sees them (``seen``); a liveness key holding another lease is
another agent running with the same node name: reported, not fought over.

The node's pod statuses (its prober's verdicts, :mod:`.keys`) are attached to the lease too, so a dead
node's statuses vanish with it. The lease keeps the book of them (``book``: what the prober last
wrote, whichever client wrote it) and writes them all again, before the liveness key, with a new
lease: other hosts never see the node back with its statuses missing.

A stopped agent does not revoke its lease: a restart within the TTL causes no blip; a stop longer
than the TTL makes its pods not ready everywhere, until the next start grants a new lease.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from ...errors import SvcdnsError
from ...table import Key
from .client import Compare, Op
from .keys import Keys, node_record

log = logging.getLogger(__name__)

RETRY = 1.0  # seconds between tries while etcd cannot be reached (or the TTL/3 if shorter)
TXN_OPS = 100  # keys per transaction when writing the statuses again (etcd allows 128 by default)


class LeaseClient(Protocol):
    """What a node lease needs of etcd (:class:`~.client.EtcdClient`)."""

    async def grant(self, ttl: int) -> int: ...

    async def keep_alive(self, lease_id: int) -> int: ...

    async def txn(self, compares: list[Compare], ops: list[Op]) -> bool: ...


class NodeLease:
    def __init__(self, client: LeaseClient, keys: Keys, node: str, ttl: int,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 seen: Callable[[], tuple[bool, int] | None] | None = None) -> None:  # fmt: skip
        """``seen()``: whether the watch has the node's record, and the lease its liveness key holds (0:
        none); None while the watch has not read the registry."""
        self.client, self.keys, self.node, self.ttl = client, keys, node, ttl
        self._clock, self._sleep, self._seen = clock, sleep, seen
        self._rival = 0  # another lease found in our liveness key, as reported
        self.lease_id = 0  # 0: none held
        self.written = False  # the node's keys were written for this lease
        self.expires = 0.0  # by our clock: when the lease ends at the earliest
        self.problem: str | None = None
        self.task: concurrent.futures.Future[Any] | None = None  # run() on the registry's loop
        # the node's pod statuses (status key values) as last booked; those not yet in etcd for this
        # lease; written from the prober's thread, read from this loop's
        self._statuses: dict[Key, bytes] = {}
        self._unsynced: set[Key] = set()
        self._book_lock = threading.Lock()

    def book(self, values: Mapping[Key, bytes | None]) -> set[Key]:
        """Take the pods' status values (None: deleted); the keys to write now (changed, or not yet
        written under this lease). The writer calls :meth:`synced` once they are written."""
        with self._book_lock:
            out = {k for k, v in values.items() if self._statuses.get(k) != v or k in self._unsynced}
            for key in out:
                value = values[key]
                if value is None:
                    self._statuses.pop(key, None)
                else:
                    self._statuses[key] = value
            self._unsynced |= out
            return out

    def synced(self, keys: Iterable[Key], lease_id: int) -> None:
        """``keys`` were written under ``lease_id`` (if it is still the lease, they are in etcd)."""
        with self._book_lock:
            if lease_id == self.lease_id:
                self._unsynced.difference_update(keys)

    def booked(self) -> dict[Key, bytes]:
        with self._book_lock:
            return dict(self._statuses)

    def release(self) -> None:
        """Stop refreshing, without revoking: a restart within the TTL keeps the node's pods ready."""
        if self.task is not None:
            self.task.cancel()
            self.task = None

    @property
    def interval(self) -> float:
        return self.ttl / 3

    def remaining(self) -> float:
        """Seconds the lease has left at least (0: none held, or it may have expired)."""
        return max(0.0, self.expires - self._clock()) if self.lease_id else 0.0

    async def run(self) -> None:
        """Refresh for ever (until cancelled)."""
        log.info("lease: holding node %s's lease (TTL %d s, refreshed every %.1f s)", self.node, self.ttl, self.interval)
        while True:
            await self._sleep(await self.refresh())

    async def refresh(self) -> float:
        """Refresh the lease (or take one, and write the node's keys); the seconds until the next call."""
        started = self._clock()
        try:
            if self.lease_id:
                ttl = await self.client.keep_alive(self.lease_id)
                if ttl > 0:
                    self.expires = started + ttl
                    self._check_keys()
                else:
                    log.warning("lease: node %s's lease %x is gone (expired or etcd was wiped); taking a new one",
                                self.node, self.lease_id)  # fmt: skip
                    self.lease_id, self.written = 0, False
            if not self.lease_id:
                self.lease_id = await self.client.grant(self.ttl)
                self.expires, self.written = started + self.ttl, False
            if not self.written:
                await self._write()
        except SvcdnsError as err:
            message = f"cannot refresh node {self.node}'s lease: {err}"
            if message != self.problem:
                log.warning("lease: %s; retrying", message)
            self.problem = message
            return min(RETRY, self.interval)
        if self.problem is not None:
            log.info("lease: node %s's lease %x is held again", self.node, self.lease_id)
            self.problem = None
        return self.interval

    def _check_keys(self) -> None:
        view = self._seen() if self._seen is not None and self.written else None
        if view is None:
            return
        record, holder = view
        if holder and holder != self.lease_id:
            if holder != self._rival:
                log.error("lease: node %s's liveness key holds lease %x, not this agent's %x: another agent runs with "
                          "node name %s; give each host its own --node-name", self.node, holder, self.lease_id, self.node)  # fmt: skip
            self._rival = holder
        elif not record or not holder:
            log.warning("lease: node %s's %s removed while its lease lives; writing it again", self.node,
                        "record was" if not record else "liveness key was")  # fmt: skip
            self.written = False

    async def _write(self) -> None:
        """The node's statuses on the lease, then the node record and the liveness key in one
        transaction (one revision: no agent ever sees the one without the other from this write)."""
        statuses = self.booked()
        items = [Op(self.keys.status(self.node, k), v, lease=self.lease_id) for k, v in sorted(statuses.items())]
        for i in range(0, len(items), TXN_OPS):
            await self.client.txn([], items[i : i + TXN_OPS])
        if statuses:
            with self._book_lock:
                self._unsynced.difference_update(k for k, v in statuses.items() if self._statuses.get(k) == v)
            log.info("lease: node %s's %d pod statuses written on lease %x", self.node, len(statuses), self.lease_id)
        await self.client.txn([], [
            Op(self.keys.node(self.node), node_record(self.node, self.ttl)),
            Op(self.keys.lease(self.node), str(self.lease_id).encode(), lease=self.lease_id),
        ])  # fmt: skip
        self.written = True
        log.info("lease: node %s registered on lease %x", self.node, self.lease_id)


__all__ = ["LeaseClient", "NodeLease"]
