"""ServiceTable: what the agent believes, an immutable snapshot of Services with their VIPs allocated.

The dataplane and DNS planners read a table; the agent swaps in a new one per sync. ``changed_keys``
tells which Services differ between two tables, so a sync touches only those (kube-proxy's change
tracker, reduced to its result).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from immutables import Map

from .model import Service

Key = tuple[str, str]  # (namespace, name)
LINEAGE = 32  # how many ancestors a table remembers its differences from
# the most keys remembered as changed since one ancestor: past that, comparing two tables whole costs
# about as much, and carrying (and uniting) such a set at every change would make each one O(table)
LINEAGE_KEYS = 2048
_serials = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ServiceTable:
    # a persistent map (HAMT): a new table shares every Service it did not change with the old one,
    # so that one change costs O(log N) and not a copy of the table (both stay in use: the agent
    # holds what the kernel has and what it wants). Iteration is in key order (see __iter__).
    services: Mapping[Key, Service] = field(default_factory=Map)
    revision: int = 0
    # bookkeeping, so that a sync costs what changed and not what the table holds: a serial number,
    # the keys touched since each of the last LINEAGE ancestors (by serial), the endpoint count
    serial: int = field(default_factory=lambda: next(_serials), compare=False, repr=False)
    lineage: tuple[tuple[int, frozenset[Key]], ...] = field(default=(), compare=False, repr=False)
    endpoints: int = field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.endpoints < 0:
            object.__setattr__(self, "endpoints", sum(len(s.endpoints) for s in self.services.values()))

    @classmethod
    def of(cls, services: Iterable[Service], revision: int = 0) -> ServiceTable:
        table: dict[Key, Service] = {}
        for svc in services:
            if svc.key in table:
                raise ValueError(f"Service {svc.ref} appears twice")
            table[svc.key] = svc
        return cls(Map(table), revision)

    def __iter__(self) -> Iterator[Service]:
        """The Services in key order: the same from run to run (a HAMT's own order follows the
        keys' hashes, which change with each process)."""
        services = self.services
        return (services[k] for k in sorted(services))

    def __len__(self) -> int:
        return len(self.services)

    def __contains__(self, key: object) -> bool:
        return key in self.services

    def get(self, namespace: str, name: str) -> Service | None:
        return self.services.get((namespace, name))

    def replace(
        self, puts: Iterable[Service] = (), deletes: Iterable[Key] = (), revision: int | None = None
    ) -> ServiceTable:
        """A new table with ``puts`` added or replaced and ``deletes`` removed."""
        services = self.services
        endpoints = self.endpoints
        touched = set()
        with _as_map(services).mutate() as table:
            for key in deletes:
                gone = table.pop(key, None)
                if gone is not None:
                    endpoints -= len(gone.endpoints)
                    touched.add(key)
            for svc in puts:
                prev = table.get(svc.key)
                endpoints += len(svc.endpoints) - (len(prev.endpoints) if prev is not None else 0)
                table[svc.key] = svc
                touched.add(svc.key)
            new = table.finish()
        delta = frozenset(touched)
        lineage = ((self.serial, delta), *((s, d | delta) for s, d in self.lineage[: LINEAGE - 1]
                                           if len(d) + len(delta) <= LINEAGE_KEYS))  # fmt: skip
        return ServiceTable(new, self.revision if revision is None else revision, lineage=lineage,
                            endpoints=endpoints)  # fmt: skip

    def endpoint_count(self) -> int:
        return self.endpoints


def _as_map(services: Mapping[Key, Service]) -> Map[Key, Service]:
    return services if isinstance(services, Map) else Map(services)


def changed_keys(old: ServiceTable, new: ServiceTable) -> set[Key]:
    """Keys of the Services added, removed or changed between ``old`` and ``new``: from ``new``'s
    lineage when ``old`` is one of its recent ancestors (a cost in the changes), else by comparing
    the two tables whole."""
    if old.services is new.services:
        return set()
    candidates = next((d for s, d in new.lineage if s == old.serial), None)
    if candidates is not None:
        return {k for k in candidates if old.services.get(k) != new.services.get(k)}
    keys = set(old.services.keys()) ^ set(new.services.keys())
    for key, svc in new.services.items():
        prev = old.services.get(key)
        if prev is not None and prev is not svc and prev != svc:
            keys.add(key)
    return keys
