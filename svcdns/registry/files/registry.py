"""The embedded registry: a directory of service files (YAML or JSON), one Service per file.

:class:`FileRegistry` is what the CLI and the agent open: the state read from the files
(:mod:`.state`, with the VIPs of :mod:`.vips`), its watch (:mod:`.watch`), and the commands that
write Service and pod files (atomically, under the registry's lock). A write costs a few file
operations, not a directory scan: the allocation store knows every VIP.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Mapping

from ...errors import NotFound, SvcdnsError, UsageError
from ...ipam import VIPConflict, service_families
from ...model import Service
from ...pod import Pod, PodStatus
from ...table import Key
from ..documents import encode, encode_pod
from .pods import POD_DIR, PodEntry, is_pod_file, key_of
from .state import FileState
from .store import Allocation, AllocationStore, atomic_write
from .tree import SUFFIXES, canonical, walk
from .vips import FileEntry, holder_of
from .watch import FileWatcher


class FileRegistry(FileState):
    """Reads, watches and writes a registry directory. Not thread-safe: one owner at a time."""

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
            self._bounds().check_service(svc)
            store = self._store_now()
            held = store.services.get(svc.ref)
            if held is not None and not self._forget_stale(store, svc.ref):
                raise UsageError(f"Service {svc.ref} already exists (defined by {held.file}); remove it first")
            out = svc
            if svc.has_vip:
                allocator = store.allocator()
                try:
                    ips = allocator.assign(svc.ref, svc.cluster_ips, service_families(svc, allocator.families()))
                except VIPConflict as err:
                    if err.holder is None or not self._forget_stale(store, err.holder):
                        raise
                    allocator = store.allocator()
                    ips = allocator.assign(svc.ref, svc.cluster_ips, service_families(svc, allocator.families()))
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
            self._bounds().check_service(changed)
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
            self._write_statuses({key: None})  # its status goes with it

    # ---- pods' statuses: the prober's verdicts, in the status file (:mod:`.status`) ----------------------------

    def pod_statuses(self, namespace: str | None = None) -> dict[Key, PodStatus]:
        """The statuses of the pods (of ``namespace``) not gone, as the status file holds them now."""
        pods = self.list_pods(namespace)
        self._sync_statuses()
        return {p.key: s for p in pods if (s := self.derivation.status_of(p)) is not None}

    def set_pod_statuses(self, changes: Mapping[Key, PodStatus | None]) -> set[Key]:
        """Write the given statuses (None: delete), under the lock, and only those that differ from
        the file's; the keys written."""
        self.check_root()
        return self._write_statuses(changes)

    def prune_pod_statuses(self, keep: Collection[Key]) -> int:
        """Delete the statuses of the pods not in ``keep`` (every pod the prober probes); how many."""
        self.check_root()
        with self._locked():
            self.status.load()
            return len(self._write_statuses({k: None for k in self.status.statuses if k not in keep}))

    def _write_statuses(self, changes: Mapping[Key, PodStatus | None]) -> set[Key]:
        with self._locked():
            self.status.load()
            held = self.status.statuses
            written = {k for k, s in changes.items() if held.get(k) != s}
            if not written:
                return written
            self.status.statuses = {**held, **{k: s for k, s in changes.items() if s is not None}}
            for key in written:
                if changes[key] is None:
                    self.status.statuses.pop(key, None)
            self.status.save()
            for key in written:  # this object's view too (the CLI reads after it writes)
                self.derivation.set_status("", key, changes[key])
            return written

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
