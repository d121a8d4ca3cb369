"""The VIPs of the Services that files declare: the allocation store as last read, the writer lock,
and allocating, re-claiming and releasing VIPs as files come and go.

Kept apart from reading files (:mod:`.state`) and from the CLI's commands (:mod:`.registry`): this
is the one place that writes ``allocations.json`` on behalf of files, under the lock, so that every
reader sees the same VIP for a Service. VIPs are never written into the operator's files.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import SvcdnsError
from ...ipam import Allocator, service_families
from ...model import Service, family_of
from ...table import Key, ServiceTable
from .entries import Entries
from .store import Allocation, AllocationStore, registry_lock

log = logging.getLogger(__name__)


def holder_of(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """What one file holds: its last good Service (as written: requested VIPs only) and its error."""

    key: Key | None = None
    service: Service | None = None
    error: str | None = None

    def index_key(self) -> Key | None:
        """The Service this file declares (its last good version's), for :class:`.entries.Entries`."""
        return self.key if self.service is not None else None


class VipKeeper:
    """What the files declare (``entries``, by file), the table built from them, and their VIPs."""

    def __init__(self, root: str | os.PathLike, service_cidrs: list[str] | None = None) -> None:
        self.root = Path(root)
        self._cidrs = list(service_cidrs) if service_cidrs else None
        self.entries: Entries[FileEntry] = Entries()
        self.table = ServiceTable()
        self.key_errors: dict[Key, dict[str, str]] = {}  # key -> {source: message}
        self._store: AllocationStore | None = None
        self._allocator: Allocator | None = None
        self._lock_depth = 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The writer lock, re-entrant within this object (flock is not, across two opens)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with registry_lock(self.root):
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    def _store_now(self) -> AllocationStore:
        if self._store is None or self._store.changed_on_disk():
            self._store = AllocationStore.load(self.root, self._cidrs)
            self._allocator = None
        return self._store

    def _bounds(self) -> Allocator:
        """What endpoints and pod addresses are checked against: the store's service CIDRs."""
        return self._allocator_now(self._store_now())

    def _allocator_now(self, store: AllocationStore) -> Allocator:
        """The allocator over ``store``, kept between watch events (rebuilding it from a 10k-entry
        store per new file cost tens of milliseconds) and dropped whenever the store is re-read."""
        if self._allocator is None:
            self._allocator = store.allocator()
        return self._allocator

    @staticmethod
    def _fits(svc: Service, ips: tuple, configured: list[str]) -> bool:
        """Whether held VIPs still answer what the Service asks for (its requested VIPs, its families
        as ``configured``, the service CIDRs' families, resolve them)."""
        if svc.cluster_ips:
            return tuple(ips[: len(svc.cluster_ips)]) == svc.cluster_ips
        try:
            families = service_families(svc, configured)
        except SvcdnsError:
            return False  # allocating reports it
        return tuple(family_of(ip) for ip in ips) == families

    def _good(self, rel: str) -> Service:
        svc = self.entries[rel].service
        assert svc is not None, rel  # winners are chosen among files with a good version
        return svc

    def _finish(self, svc: Service, store: AllocationStore) -> Service:
        if not svc.has_vip:
            return svc
        held = store.services.get(holder_of(svc.key))
        if held is None:
            raise SvcdnsError(f"no VIP could be allocated for {svc.ref}")
        out = svc.with_cluster_ips(held.ips)
        out.check_endpoint_families()
        return out

    def _key_error(self, key: Key, rel: str, message: str) -> None:
        kept = "; keeping its last good version" if key in self.table else ""
        log.error("registry: %s%s", message, kept)
        self.key_errors.setdefault(key, {})[rel] = message

    def _allocate(self, keys: list[Key], winners: dict[Key, str]) -> set[Key]:
        """Allocate or re-claim VIPs for ``keys`` under the writer lock, and persist them; return the
        keys that could not be given their VIPs (reported)."""
        failed: set[Key] = set()
        with self._locked():
            store = self._store_now()
            allocator = self._allocator_now(store)
            dirty = False
            for key in sorted(keys):
                rel = winners[key]
                svc = self._good(rel)
                try:
                    ips = allocator.assign(holder_of(key), svc.cluster_ips, service_families(svc, allocator.families()))
                except SvcdnsError as err:
                    self._key_error(key, rel, f"{rel}: {err}")
                    failed.add(key)
                    continue
                held = store.services.get(holder_of(key))
                if held is None or held.ips != ips or held.file != rel:
                    store.services[holder_of(key)] = Allocation(ips, rel)
                    dirty = True
                    log.info("registry: %s: VIP %s", holder_of(key), ", ".join(map(str, ips)))
            if dirty:
                store.save()
        return failed

    def _release_orphans(self, store: AllocationStore, keys: Iterable[Key] | None = None) -> None:
        """Free the VIPs of Services no file declares any more (deleted), among ``keys`` (None: all).
        A file that exists but cannot be read keeps its Service's VIP: it is broken, not gone."""
        declared = self.entries.by_key
        held = store.services.items() if keys is None else [
            (h, store.services[h]) for h in map(holder_of, keys) if h in store.services]  # fmt: skip
        orphans = [
            h
            for h, a in held
            if _key_of(h) not in declared and not (a.file in self.entries and self.entries[a.file].key is None)
        ]
        if not orphans:
            return
        with self._locked():
            store = self._store_now()
            self._allocator = None  # rebuilt on next use, without the released VIPs
            for holder in orphans:
                if holder in store.services and _key_of(holder) not in declared:
                    log.info(
                        "registry: %s deleted; VIP %s released", holder, ", ".join(map(str, store.services[holder].ips))
                    )
                    del store.services[holder]
            store.save()


def _key_of(holder: str) -> Key:
    ns, _, name = holder.partition("/")
    return (ns, name)


__all__ = ["FileEntry", "VipKeeper", "holder_of"]
