"""The sources of truth for Services: one contract, several registries.

A registry gives a consistent :class:`Snapshot` (a revision, the Services with their VIPs allocated,
and the errors of entries that are not valid), then, through ``watch()``, a new Snapshot each time
something changed. It never forgets state it had: an entry that turns bad keeps its last good
version, an outage keeps everything. The embedded registry is a directory of service files
(:mod:`.files`); ``open_registry`` picks the registry from a path or URL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from ..table import Key, ServiceTable


@dataclass(frozen=True)
class Snapshot:
    revision: int
    table: ServiceTable
    errors: Mapping[str, str] = field(default_factory=dict)  # source (file, key) -> what is wrong
    # False: the registry has never been read in full (unreachable since start). The table is then a
    # stand-in, not the registry's content: the agent must not converge the kernel or DNS to it.
    synced: bool = True

    @property
    def services(self):
        return self.table.services

    def __len__(self) -> int:
        return len(self.table)


class Watch:
    """What every registry's ``watch()`` returns: ``start()`` gives the first Snapshot, ``poll(timeout)``
    the next one (or None), iteration yields them all; ``problem`` says why the registry cannot be
    read right now (the last known Services stay in force meanwhile)."""

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

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_registry(location: str, service_cidrs: list[str] | None = None):
    """The registry at ``location``: a directory path (or ``file://`` URL) for the embedded registry,
    ``etcd://host:port[,host:port]/prefix`` for etcd.

    ``service_cidrs`` None: the CIDRs the registry recorded when it first allocated (else the default
    10.96.0.0/12), so the CLI and the agent always agree."""
    from ..errors import UsageError

    if location.startswith("etcd://"):
        from .etcd import EtcdRegistry

        return EtcdRegistry(location, service_cidrs)
    if "://" in location and not location.startswith("file://"):
        raise UsageError(f"registry {location!r}: expected a directory path or etcd://host:port/prefix")
    from .files import FileRegistry

    return FileRegistry(location.removeprefix("file://"), service_cidrs)


def load_table(location: str, service_cidrs: list[str] | None = None) -> ServiceTable:
    """Read the registry once and return its ServiceTable (for one-shot commands)."""
    return open_registry(location, service_cidrs).snapshot().table


__all__ = ["Key", "Snapshot", "Watch", "open_registry", "load_table"]
