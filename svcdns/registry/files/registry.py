"""The embedded registry: a directory of service files (YAML or JSON), one Service per file.

Files may sit anywhere under the directory (:mod:`.tree` says which names count); the CLI writes
``<ns>/<name>.yaml``. Pods live in ``pods/<ns>/<name>.yaml`` (:mod:`.pods`); the endpoints of a
Service with a selector are derived from them when the table is built (:mod:`svcdns.endpoints`),
and only the Services a pod change touches are built again. A file is read only when complete (the watch reacts to close-after-write and
rename-in, never to partial writes).

What a bad file does: it is reported (a log line, and an error row in ``svcdns service list``) and
the **last good version** of its Service is kept, so a botched edit never takes a working Service
down (the same choice Kubernetes makes by rejecting an invalid update and keeping the stored
object). A file that was never good is simply not a Service. A deleted file deletes its Service.

Two files naming the same Service: one at the canonical path ``<ns>/<name>.*`` wins (``.yaml``
before ``.yml`` before ``.json``), else the first in path order; the other is reported.

VIPs are not written into the operator's files: they live in the allocation store beside them
(:mod:`.store`), so every reader (CLI, agent) sees the same VIP for a Service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...endpoints import Derivation
from ...errors import NotFound, SvcdnsError, UsageError
from ...ipam import Allocator, VIPConflict, parse_cidr
from ...model import Service, ValidationError, family_of
from ...pod import Pod
from ...table import Key, ServiceTable
from ..contract import Snapshot
from ..documents import DocumentError, decode, encode, encode_pod
from .pods import POD_DIR, PodEntry, PodFiles, is_pod_file, key_of
from .store import Allocation, AllocationStore, atomic_write, registry_lock
from .tree import SUFFIXES, canonical, precedence, read, walk
from .watch import FileWatcher

log = logging.getLogger(__name__)


def holder_of(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


@dataclass
class FileEntry:
    """What one file holds: its last good Service (as written: requested VIPs only) and its error."""

    key: Key | None = None
    service: Service | None = None
    error: str | None = None


class FileRegistry:
    """Reads, watches and writes a registry directory. Not thread-safe: one owner at a time."""

    kind = "files"

    def __init__(self, root: str | os.PathLike, service_cidrs: list[str] | None = None) -> None:
        self.root = Path(root)
        self._cidrs = list(service_cidrs) if service_cidrs else None
        self.entries: dict[str, FileEntry] = {}
        self.table = ServiceTable()
        self.key_errors: dict[Key, dict[str, str]] = {}  # key -> {source: message}
        self.revision = 0
        self.synced = False  # read in full at least once
        self._store: AllocationStore | None = None
        self._allocator: Allocator | None = None
        self._lock_depth = 0
        self.pods = PodFiles(self.root)
        self.derivation = Derivation()

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

    def __repr__(self) -> str:
        return f"FileRegistry({str(self.root)!r})"

    @property
    def location(self) -> str:
        """The registry directory."""
        return str(self.root)

    # ---- paths ----------------------------------------------------------------------------------------

    def check_root(self) -> None:
        if not self.root.is_dir():
            raise SvcdnsError(
                f"registry directory {self.root} does not exist; create it (mkdir -p {self.root}) "
                "or point --registry / $SVCDNS_REGISTRY at another"
            )

    def files_under(self, rel_dir: str) -> list[str]:
        """The known service files below ``rel_dir`` (a directory that went away)."""
        return [rel for rel in [*self.entries, *self.pods.entries] if rel.startswith(rel_dir + "/")]

    # ---- reading ----------------------------------------------------------------------------------------

    def _read(self, rel: str) -> None:
        """(Re-)read one file into ``entries``; a missing file removes its entry."""
        try:
            data = read(self.root, rel)
            if data is None:
                self.entries.pop(rel, None)
                return
            svc = decode(data, rel)
            self._bounds().check_endpoints(svc)
        except DocumentError as err:
            self._bad(rel, str(err))
            return
        except ValidationError as err:
            self._bad(rel, str(DocumentError(rel, err.field, err.value, err.reason)))
            return
        self.entries[rel] = FileEntry(svc.key, svc, None)

    def _bad(self, rel: str, message: str) -> None:
        old = self.entries.get(rel)
        if old is None or old.error != message:
            kept = f"; keeping the last good version of {holder_of(old.key)}" if old and old.service and old.key else ""
            log.error("registry: %s%s", message, kept)
        self.entries[rel] = FileEntry(old.key if old else None, old.service if old else None, message)

    def snapshot(self) -> Snapshot:
        """Read the whole directory and return the consistent state."""
        self.check_root()
        seen = set()
        for rel in walk(self.root):
            seen.add(rel)
            if is_pod_file(rel):
                self.pods.read(rel)
            else:
                self._read(rel)
        for rel in set(self.entries) - seen:
            del self.entries[rel]
        for rel in set(self.pods.entries) - seen:
            del self.pods.entries[rel]
        self._sync_pods({key_of(rel) for rel in self.pods.entries} | set(self.derivation.pods))
        self._resolve(None)
        self.synced = True
        return self.current()

    def refresh(self, rels: Iterable[str]) -> bool:
        """Re-read the given files (after watch events); True if the table changed."""
        affected: set[Key] = set()
        pod_keys = set()
        for rel in rels:
            if is_pod_file(rel):
                self.pods.read(rel)
                pod_keys.add(key_of(rel))
                continue
            old = self.entries.get(rel)
            if old and old.key:
                affected.add(old.key)
            self._read(rel)
            new = self.entries.get(rel)
            if new and new.key:
                affected.add(new.key)
        return self._resolve(affected | self._sync_pods(pod_keys))

    # ---- pods -------------------------------------------------------------------------------------------------

    def _sync_pods(self, keys: Iterable[Key]) -> set[Key]:
        """Bring the pods of ``keys`` from their files into the derivation; the Services to build again."""
        now, out = time.time(), set()
        for key in keys:
            pod = self.pods.pod(key)
            out |= self.derivation.put_pod(pod, now) if pod is not None else self.derivation.remove_pod(key)
        return out

    def next_deadline(self) -> float | None:
        """When the next terminating pod goes (Unix time): the watch calls ``expire`` then."""
        return self.derivation.next_deadline()

    def expire(self) -> bool:
        """Drop the pods whose grace period ended, and delete their files; True if the table changed."""
        now = time.time()
        affected = self.derivation.expire(now)
        gone = [rel for rel, e in self.pods.entries.items() if e.pod and e.pod.gone(now) and not e.error]
        if gone:
            with self._locked():
                for rel in gone:
                    self.pods.read(rel)  # under the lock: a writer may have brought it back meanwhile
                    entry = self.pods.entries.get(rel)
                    if entry and entry.pod and entry.pod.gone(now) and not entry.error:
                        with contextlib.suppress(FileNotFoundError):
                            (self.root / rel).unlink()
                        del self.pods.entries[rel]
                        log.info("registry: pod %s deleted: its grace period ended", entry.pod.ref)
        return bool(affected) and self._resolve(affected)

    def current(self) -> Snapshot:
        errors = {rel: e.error for rel, e in self.entries.items() if e.error}
        errors.update(self.pods.errors())
        for by_source in self.key_errors.values():
            for source, message in by_source.items():
                errors.setdefault(source, message)
        return Snapshot(self.revision, self.table, errors, self.synced)

    # ---- resolving: files -> Services with VIPs -------------------------------------------------------------

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

    def _resolve(self, affected: set[Key] | None) -> bool:
        """Recompute the Services of ``affected`` keys (None: all) and allocate their VIPs."""
        candidates: dict[Key, list[str]] = {}
        for rel, entry in self.entries.items():
            if entry.key is not None and entry.service is not None and (affected is None or entry.key in affected):
                candidates.setdefault(entry.key, []).append(rel)
        keys = set(candidates) | (set(self.table.services) if affected is None else affected)
        winners: dict[Key, str] = {}
        for key in keys:
            self.key_errors.pop(key, None)
            paths = candidates.get(key)
            if not paths:
                continue
            at_canonical = [p for p in paths if p.rsplit(".", 1)[0] == canonical(key, "")]
            winner = min(at_canonical, key=precedence) if at_canonical else min(paths)
            winners[key] = winner
            for other in paths:
                if other != winner:
                    self.key_errors.setdefault(key, {})[other] = (
                        f"{other}: Service {holder_of(key)} is already defined by {winner}; this file is ignored"
                    )
        store = self._store_now()
        primary = family_of(parse_cidr(store.cidrs[0]).network_address)
        needs: list[Key] = []
        for key, rel in winners.items():
            svc = self._good(rel)
            held = store.services.get(holder_of(key))
            if not svc.has_vip:
                continue
            if held is None or not self._fits(svc, held.ips, primary) or held.file != rel:
                needs.append(key)
        failed = self._allocate(needs, winners) if needs else set()
        store = self._store_now()
        puts: list[Service] = []
        deletes: list[Key] = []
        for key in keys:
            chosen = winners.get(key)
            if chosen is None:
                self.derivation.remove_service(key)
                if key in self.table:
                    deletes.append(key)
                continue
            if key in failed:
                continue  # reported; the last good version (if any) stays
            try:
                self.derivation.put_service(self._good(chosen))
                puts.append(self.derivation.apply(self._finish(self._good(chosen), store)))
            except (UsageError, ValidationError) as err:
                self._key_error(key, chosen, f"{chosen}: {err}")
        if affected is None or deletes:
            self._release_orphans(store)
        changed = [s for s in puts if self.table.get(*s.key) != s]
        if not changed and not deletes:
            return False
        self.revision += 1
        self.table = self.table.replace(changed, deletes, self.revision)
        return True

    @staticmethod
    def _fits(svc: Service, ips: tuple, primary_family: str) -> bool:
        """Whether held VIPs still answer what the Service asks for (its requested VIPs, its families)."""
        if svc.cluster_ips:
            return tuple(ips[: len(svc.cluster_ips)]) == svc.cluster_ips
        families = svc.ip_families or (primary_family,)
        return tuple(family_of(ip) for ip in ips) == tuple(families)

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
                    ips = allocator.assign(holder_of(key), svc.cluster_ips, svc.ip_families)
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

    def _release_orphans(self, store: AllocationStore) -> None:
        """Free the VIPs of Services no file declares any more (deleted). A file that exists but cannot
        be read keeps its Service's VIP: it is broken, not gone."""
        declared = {holder_of(e.key) for e in self.entries.values() if e.key}
        orphans = [
            h
            for h, a in store.services.items()
            if h not in declared and not (a.file in self.entries and self.entries[a.file].key is None)
        ]
        if not orphans:
            return
        with self._locked():
            store = self._store_now()
            self._allocator = None  # rebuilt on next use, without the released VIPs
            for holder in orphans:
                if holder in store.services and holder not in declared:
                    log.info(
                        "registry: %s deleted; VIP %s released", holder, ", ".join(map(str, store.services[holder].ips))
                    )
                    del store.services[holder]
            store.save()

    def close(self) -> None:
        """Nothing to let go of: no connection, no thread but its watch's."""

    def watch(self, rescan_interval: float = 600.0, retry_interval: float = 1.0, delete_grace: float = 1.0) -> FileWatcher:
        """The first snapshot, then one per change (:mod:`.watch`)."""
        return FileWatcher(self, rescan_interval=rescan_interval, retry_interval=retry_interval, delete_grace=delete_grace)

    # ---- writing (the CLI) ------------------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Service:
        """The Service as the agent sees it (with VIPs); NotFound if no file defines it. Reads one file
        when the Service sits at its canonical path (the whole directory otherwise)."""
        key = (namespace, name)
        self.check_root()
        rel = self._find(key)
        entry = self.entries[rel]
        if entry.error:
            raise SvcdnsError(f"Service {namespace}/{name} is not valid: {entry.error}")
        if entry.service is not None and entry.service.selector:
            self._read_pods(namespace)
        self._resolve({key})
        svc = self.table.get(*key)
        if svc is None:
            problems = "; ".join(self.key_errors.get(key, {}).values()) or "no VIP could be allocated"
            raise SvcdnsError(f"Service {namespace}/{name} is not valid: {problems}")
        return svc

    def create(self, svc: Service) -> Service:
        """Write a new Service file and allocate its VIPs; UsageError if it exists or the VIP is taken.
        Costs a few file operations, not a directory scan: the allocation store knows every VIP."""
        self.check_root()
        rel = canonical(svc.key)
        with self._locked():
            for suffix in SUFFIXES:
                other = canonical(svc.key, suffix)
                if (self.root / other).exists():
                    self._read(other)
                    entry = self.entries.get(other)
                    if entry is not None and entry.key not in (None, svc.key):
                        raise UsageError(
                            f"{self.root / other} exists but defines {holder_of(entry.key)}; move it away first"
                        )
                    raise UsageError(f"Service {svc.ref} already exists (defined by {other}); remove it first")
            self._bounds().check_endpoints(svc)
            store = self._store_now()
            held = store.services.get(svc.ref)
            if held is not None and not self._forget_stale(store, svc.ref):
                raise UsageError(f"Service {svc.ref} already exists (defined by {held.file}); remove it first")
            out = svc
            if svc.has_vip:
                allocator = store.allocator()
                try:
                    ips = allocator.assign(svc.ref, svc.cluster_ips, svc.ip_families)
                except VIPConflict as err:
                    if err.holder is None or not self._forget_stale(store, err.holder):
                        raise
                    ips = store.allocator().assign(svc.ref, svc.cluster_ips, svc.ip_families)
                out = svc.with_cluster_ips(ips)
                out.check_endpoint_families()
                store.services[svc.ref] = Allocation(ips, rel)
                store.save()
            atomic_write(self.root / rel, encode(svc, "yaml", with_vips=bool(svc.cluster_ips)).encode())
            self.entries[rel] = FileEntry(svc.key, svc, None)
        return out

    def _forget_stale(self, store: AllocationStore, holder: str) -> bool:
        """Drop ``holder``'s allocation if its file is gone (deleted while no agent was watching).
        True if dropped; False if the holder still exists (or its file is unreadable: broken, not gone)."""
        held = store.services.get(holder)
        if held is None:
            return False
        if held.file and (self.root / held.file).is_file():
            self._read(held.file)
            entry = self.entries.get(held.file)
            if entry is not None and (entry.key is None or holder_of(entry.key) == holder):
                return False
        del store.services[holder]
        return True

    def update(self, namespace: str, name: str, change: Callable[[Service], Service]) -> Service:
        """Read-modify-write one Service file under the lock (so concurrent writers never lose one)."""
        key = (namespace, name)
        self.check_root()
        with self._locked():
            rel = self._find(key)
            entry = self.entries[rel]
            if entry.error:
                raise SvcdnsError(f"{entry.error}; fix the file before changing it with the CLI")
            svc = entry.service
            assert svc is not None
            held = self._store_now().services.get(svc.ref)
            changed = change(svc)
            self._bounds().check_endpoints(changed)
            if held and changed.has_vip:
                changed.with_cluster_ips(held.ips).check_endpoint_families()
            suffix = ".json" if rel.endswith(".json") else ".yaml"
            text = encode(changed, "json" if suffix == ".json" else "yaml", with_vips=bool(changed.cluster_ips))
            atomic_write(self.root / rel, text.encode())
            self.entries[rel] = FileEntry(changed.key, changed, None)
            return changed.with_cluster_ips(held.ips) if held and changed.has_vip else changed

    def delete(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self.check_root()
        with self._locked():
            rel = self._find(key)
            (self.root / rel).unlink()
            self.entries.pop(rel, None)
            store = self._store_now()
            if store.services.pop(holder_of(key), None) is not None:
                store.save()

    # ---- pods: the CLI's reads and writes -------------------------------------------------------------------

    def _read_pods(self, namespace: str | None = None) -> None:
        """Read every pod file (of ``namespace``), forgetting those gone from disk."""
        base = self.root / POD_DIR / (namespace or "")
        scope = f"{POD_DIR}/{namespace}/" if namespace else f"{POD_DIR}/"
        seen = {scope + rel for rel in walk(base)} if base.is_dir() else set()
        for rel in sorted(seen):
            if is_pod_file(rel):
                self.pods.read(rel)
        for rel in [r for r in self.pods.entries if r.startswith(scope) and r not in seen]:
            del self.pods.entries[rel]
        self._sync_pods({key_of(rel) for rel in self.pods.entries if rel.startswith(scope)}
                        | {k for k in self.derivation.pods if not namespace or k[0] == namespace})  # fmt: skip

    def list_pods(self, namespace: str | None = None) -> list[Pod]:
        """The pods (of ``namespace``) that are not gone, by key."""
        self.check_root()
        self._read_pods(namespace)
        return [self.derivation.pods[k] for k in sorted(self.derivation.pods) if not namespace or k[0] == namespace]

    def pod_errors(self) -> dict[str, str]:
        """The pod files that are not valid (as last read), with what is wrong."""
        return self.pods.errors()

    def get_pod(self, namespace: str, name: str) -> Pod:
        key = (namespace, name)
        self.check_root()
        rel = self.pods.find(key)
        entry = self.pods.entries.get(rel) if rel else None
        if entry is not None and entry.error:
            raise SvcdnsError(f"pod {namespace}/{name} is not valid: {entry.error}")
        if entry is None or entry.pod is None or entry.pod.gone(time.time()):
            raise NotFound(f"pod {namespace}/{name} not found in {self.root}")
        return entry.pod

    def put_pod(self, pod: Pod) -> bool:
        """Write ``pod``'s file (created or replaced, atomically, under the lock); True if it is new."""
        self.check_root()
        self._bounds().check_pod(pod)
        with self._locked():
            rel = self.pods.find(pod.key)
            old = self.pods.pod(pod.key)
            rel = rel or f"{POD_DIR}/{pod.namespace}/{pod.name}.yaml"
            atomic_write(self.root / rel, encode_pod(pod, "json" if rel.endswith(".json") else "yaml").encode())
            self.pods.entries[rel] = PodEntry(pod, None)
        return old is None or old.gone(time.time())

    def update_pod(self, namespace: str, name: str, change: Callable[[Pod], Pod]) -> Pod:
        """Read-modify-write one pod file under the lock."""
        self.check_root()
        with self._locked():
            pod = self.get_pod(namespace, name)
            rel = self.pods.file_of(pod.key)
            assert rel is not None
            changed = change(pod)
            self._bounds().check_pod(changed)
            atomic_write(self.root / rel, encode_pod(changed, "json" if rel.endswith(".json") else "yaml").encode())
            self.pods.entries[rel] = PodEntry(changed, None)
            return changed

    def delete_pod(self, namespace: str, name: str) -> None:
        """Remove the pod's file now (one whose grace period ended, too); NotFound if it has none."""
        key = (namespace, name)
        self.check_root()
        with self._locked():
            if self.pods.find(key) is None:
                raise NotFound(f"pod {namespace}/{name} not found in {self.root}")
            for rel in [r for r in list(self.pods.entries) if key_of(r) == key]:
                with contextlib.suppress(FileNotFoundError):
                    (self.root / rel).unlink()
                del self.pods.entries[rel]

    def _find(self, key: Key) -> str:
        """The file that defines ``key``: the canonical path if it does, else found by a scan."""
        for suffix in SUFFIXES:
            rel = canonical(key, suffix)
            if (self.root / rel).is_file():
                self._read(rel)
                if self.entries.get(rel) and self.entries[rel].key == key:
                    return rel
        self.snapshot()
        for rel, entry in sorted(self.entries.items()):
            if entry.key == key:
                return rel
        raise NotFound(f"Service {holder_of(key)} not found in {self.root}")


__all__ = ["FileEntry", "FileRegistry", "holder_of"]
