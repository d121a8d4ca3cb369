"""The sources of truth for Services: one contract, several registries.

A registry gives a consistent :class:`Snapshot` (a revision, the Services with their VIPs allocated,
and the errors of entries that are not valid), then, through ``watch()``, a new Snapshot each time
something changed. It never forgets state it had: an entry that turns bad keeps its last good
version, an outage keeps everything. The embedded registry is a directory of service files
(:mod:`.files`); ``open_registry`` picks the registry from a path or URL.
"""

from __future__ import annotations

from ..errors import UsageError
from ..table import Key, ServiceTable
from .contract import Registry, Snapshot, Watch, WatchBase
from .files import FileRegistry


def open_registry(location: str, service_cidrs: list[str] | None = None, password: str | None = None) -> Registry:
    """The registry at ``location``: a directory path (or ``file://`` URL) for the embedded registry,
    ``etcd://host:port[,host:port]/prefix`` for etcd (``password``: etcd's, from a password file).

    ``service_cidrs`` None: the CIDRs the registry recorded when it first allocated (else the default
    10.96.0.0/12), so the CLI and the agent always agree."""
    if location.startswith("etcd://"):
        from .etcd import EtcdRegistry  # here, not at the top: aetcd and gRPC take ~0.3 s to import

        return EtcdRegistry(location, service_cidrs, password=password)
    if password is not None:
        raise UsageError(f"registry {location!r}: a password is only for an etcd registry")
    if "://" in location and not location.startswith("file://"):
        raise UsageError(f"registry {location!r}: expected a directory path or etcd://host:port/prefix")
    return FileRegistry(location.removeprefix("file://"), service_cidrs)


def load_table(location: str, service_cidrs: list[str] | None = None) -> ServiceTable:
    """Read the registry once and return its ServiceTable (for one-shot commands)."""
    return open_registry(location, service_cidrs).snapshot().table


__all__ = ["Key", "Registry", "Snapshot", "Watch", "WatchBase", "load_table", "open_registry"]
