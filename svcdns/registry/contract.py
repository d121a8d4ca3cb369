"""The registry contract: what the agent, the DNS server and the CLI may rely on, whatever the registry.

A registry gives a consistent :class:`Snapshot` (a revision, the Services with their VIPs allocated
and, for those with a selector, the endpoints derived from the pods, and the errors of entries that
are not valid), then, through ``watch()``, a new Snapshot each time
something changed. It never forgets state it had: an entry that turns bad keeps its last good
version, an outage keeps everything.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..model import Service
from ..pod import Pod, PodStatus
from ..table import ServiceTable


@dataclass(frozen=True)
class Snapshot:
    revision: int
    table: ServiceTable
    errors: Mapping[str, str] = field(default_factory=dict)  # source (file, key) -> what is wrong
    # False: the registry has never been read in full (unreachable since start). The table is then a
    # stand-in, not the registry's content: the agent must not converge the kernel or DNS to it.
    synced: bool = True
    # etcd: every node run by an agent -> whether its node lease is alive (a dead node's pods are
    # not serving); empty with the file registry
    nodes: Mapping[str, bool] = field(default_factory=dict)
    pod_ips: frozenset[str] = frozenset()  # every pod's addresses: DNS forwards for them

    @property
    def services(self) -> Mapping[tuple[str, str], Service]:
        return self.table.services

    def __len__(self) -> int:
        return len(self.table)


@runtime_checkable
class Watch(Protocol):
    """``start()`` gives the first Snapshot, ``poll(timeout)`` the next one (or None); ``problem`` says
    why the registry cannot be read right now (the last known Services stay in force meanwhile)."""

    problem: str | None

    def start(self) -> Snapshot: ...

    def poll(self, timeout: float | None) -> Snapshot | None: ...

    def close(self) -> None: ...


class WatchBase:
    """What every watch shares: health, iteration over its snapshots, use as a context manager."""

    problem: str | None = None

    def start(self) -> Snapshot:
        raise NotImplementedError

    def poll(self, timeout: float | None) -> Snapshot | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def healthy(self) -> bool:
        return self.problem is None

    def __iter__(self) -> Iterator[Snapshot]:
        yield self.start()
        while True:
            snap = self.poll(None)
            if snap is not None:
                yield snap

    def __enter__(self) -> WatchBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@runtime_checkable
class Registry(Protocol):
    """A source of truth for Services: read it whole, change one Service, or follow it."""

    kind: str  # "files" or "etcd"

    @property
    def location(self) -> str:
        """Where it is, for messages and /status: a path or a URL without credentials."""
        ...

    def snapshot(self) -> Snapshot: ...

    def get(self, namespace: str, name: str) -> Service: ...

    def create(self, svc: Service) -> Service: ...

    def update(self, namespace: str, name: str, change: Callable[[Service], Service]) -> Service: ...

    def delete(self, namespace: str, name: str) -> None: ...

    def watch(self) -> Watch: ...

    def close(self) -> None:
        """Let go of connections and threads (etcd's); its watches end with it."""
        ...

    # pods: a Service with a selector gets its endpoints from them, in every Snapshot's table

    def list_pods(self, namespace: str | None = None) -> list[Pod]:
        """The pods (of ``namespace``) not gone (a pod whose grace period ended is gone), by key."""
        ...

    def pod_errors(self) -> Mapping[str, str]:
        """The pod entries that are not valid, as last read: source -> what is wrong."""
        ...

    def get_pod(self, namespace: str, name: str) -> Pod: ...

    def put_pod(self, pod: Pod) -> bool:
        """Create or replace a pod; True if it is new."""
        ...

    def update_pod(self, namespace: str, name: str, change: Callable[[Pod], Pod]) -> Pod: ...

    def delete_pod(self, namespace: str, name: str) -> None: ...

    # pods' statuses: a probed pod's verdict, written by its node's prober apart from its record (spec),
    # only when it changes; the endpoints take it (svcdns.pod.readiness) and a watch follows it as it
    # follows pods. Files: one status file beside the VIP allocations; etcd: a key per pod under its
    # node, on the node's lease.

    def pod_statuses(self, namespace: str | None = None) -> Mapping[tuple[str, str], PodStatus]:
        """The status that counts for each pod (of ``namespace``) not gone; a pod without one has none."""
        ...

    def set_pod_statuses(self, changes: Mapping[tuple[str, str], PodStatus | None]) -> set[tuple[str, str]]:
        """Write pods' statuses (None: delete), only those that differ from what is stored; the keys
        written. etcd: this node's, on its lease (SvcdnsError while none is held)."""
        ...

    def prune_pod_statuses(self, keep: Collection[tuple[str, str]]) -> int:
        """Delete the statuses this writer keeps (files: all; etcd: its node's) of pods not in ``keep``."""
        ...


__all__ = ["Registry", "Snapshot", "Watch", "WatchBase"]
