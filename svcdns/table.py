"""ServiceTable: what the agent believes, an immutable snapshot of Services with their VIPs allocated.

The dataplane and DNS planners read a table; the agent swaps in a new one per sync. ``changed_keys``
tells which Services differ between two tables, so a sync touches only those (kube-proxy's change
tracker, reduced to its result).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .model import Service

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class ServiceTable:
    services: Mapping[Key, Service] = field(default_factory=lambda: MappingProxyType({}))
    revision: int = 0

    @classmethod
    def of(cls, services: Iterable[Service], revision: int = 0) -> ServiceTable:
        table: dict[Key, Service] = {}
        for svc in services:
            if svc.key in table:
                raise ValueError(f"Service {svc.ref} appears twice")
            table[svc.key] = svc
        return cls(MappingProxyType(table), revision)

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services.values())

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
        table = dict(self.services)
        for key in deletes:
            table.pop(key, None)
        for svc in puts:
            table[svc.key] = svc
        return ServiceTable(MappingProxyType(table), self.revision if revision is None else revision)

    def endpoint_count(self) -> int:
        return sum(len(s.endpoints) for s in self.services.values())


def changed_keys(old: ServiceTable, new: ServiceTable) -> set[Key]:
    """Keys of the Services added, removed or changed between ``old`` and ``new``."""
    if old.services is new.services:
        return set()
    keys = set(old.services.keys()) ^ set(new.services.keys())
    for key, svc in new.services.items():
        prev = old.services.get(key)
        if prev is not None and prev is not svc and prev != svc:
            keys.add(key)
    return keys
