"""Files -> the consistent state: reading service and pod files, and building the table from them.

Files may sit anywhere under the directory (:mod:`.tree` says which names count); the CLI writes
``<ns>/<name>.yaml``. Pods live in ``pods/<ns>/<name>.yaml`` (:mod:`.pods`); the endpoints of a
Service with a selector are derived from them when the table is built (:mod:`svcdns.endpoints`),
and only the Services a pod change touches are built again. A probed pod's readiness also takes its
status, from the status file beside the VIP allocations (:mod:`.status`): a status change rebuilds
only the Services selecting its pod. A file is read only when complete (the
watch reacts to close-after-write and rename-in, never to partial writes).

What a bad file does: it is reported (a log line, and an error row in ``svcdns service list``) and
the **last good version** of its Service is kept, so a botched edit never takes a working Service
down (the same choice Kubernetes makes by rejecting an invalid update and keeping the stored
object). A file that was never good is simply not a Service. A deleted file deletes its Service.

Two files naming the same Service: one at the canonical path ``<ns>/<name>.*`` wins (``.yaml``
before ``.yml`` before ``.json``), else the first in path order; the other is reported.

This is what the watch drives (:class:`~.watch.Watched`); the CLI's commands are in :mod:`.registry`
and the VIPs in :mod:`.vips`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable

from ...endpoints import Derivation
from ...errors import SvcdnsError, UsageError
from ...ipam import cidr_families
from ...model import Service, ValidationError
from ...table import Key
from ..contract import Snapshot
from ..documents import DocumentError, decode
from .pods import PodFiles, is_pod_file, key_of
from .status import StatusFile
from .tree import canonical, precedence, read, walk
from .vips import FileEntry, VipKeeper, holder_of

log = logging.getLogger(__name__)


class FileState(VipKeeper):
    """The registry directory as last read: files, pods, the derivation and the table built from them."""

    kind = "files"

    def __init__(self, root: str | os.PathLike, service_cidrs: list[str] | None = None) -> None:
        super().__init__(root, service_cidrs)
        self.revision = 0
        self.synced = False  # read in full at least once
        self.pods = PodFiles(self.root)
        self.derivation = Derivation()
        self.status = StatusFile(self.root)

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
        self._sync_statuses()
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

    def _sync_statuses(self) -> set[Key]:
        """Bring the status file (if it changed) into the derivation; the Services to build again."""
        if not self.status.load():
            return set()
        now, out = self.status.statuses, set()
        held = {(ns, name): s for (_, ns, name), s in self.derivation.statuses.items()}
        for key in set(held) | set(now):
            if held.get(key) != now.get(key):
                out |= self.derivation.set_status("", key, now.get(key))
        return out

    def refresh_status(self) -> bool:
        """Re-read the status file (after a watch event); True if the table changed."""
        affected = self._sync_statuses()
        return bool(affected) and self._resolve(affected)

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
        errors = dict(self.entries.errors)  # kept as entries change: O(errors), not O(files)
        errors.update(self.pods.errors())
        for by_source in self.key_errors.values():
            for source, message in by_source.items():
                errors.setdefault(source, message)
        return Snapshot(self.revision, self.table, errors, self.synced, pod_ips=self.derivation.pod_ips())

    def _resolve(self, affected: set[Key] | None) -> bool:
        """Recompute the Services of ``affected`` keys (None: all) and allocate their VIPs."""
        # the files declaring each key come from the index: a change costs its keys, not the directory
        keys = set(self.entries.by_key) | set(self.table.services) if affected is None else affected
        candidates = {k: sorted(files) for k in keys if (files := self.entries.files_of(k))}
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
        configured = cidr_families(store.cidrs)
        self.derivation.families = tuple(configured)
        needs: list[Key] = []
        for key, rel in winners.items():
            svc = self._good(rel)
            held = store.services.get(holder_of(key))
            if not svc.has_vip:
                continue
            if held is None or not self._fits(svc, held.ips, configured) or held.file != rel:
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
        if affected is None:
            self._release_orphans(store)
        elif deletes or len(winners) < len(keys):
            self._release_orphans(store, [k for k in keys if k not in winners])
        changed = [s for s in puts if self.table.get(*s.key) != s]
        if not changed and not deletes:
            return False
        self.revision += 1
        self.table = self.table.replace(changed, deletes, self.revision)
        return True

    def close(self) -> None:
        """Nothing to let go of: no connection, no thread but its watch's."""


__all__ = ["FileState"]
