"""Watching the registry directory with inotify: a snapshot, then a new snapshot per change.

Only complete files are read: the watch reacts to ``IN_CLOSE_WRITE`` (a writer closed the file) and
``IN_MOVED_TO`` (a file renamed into place, as the CLI and most editors and orchestrators do), never to
``IN_MODIFY``. New subdirectories are watched as they appear. Deletions apply after a short grace
(``delete_grace``, 1 s), so that removing the whole directory is seen as an outage, not as every
Service being deleted. A queue overflow, or the periodic safety
rescan, re-reads everything and converges to the same state. If the registry directory itself
disappears, everything already known is kept (the agent keeps its rules and answers), the problem is
reported in ``problem``, and the watch resumes with a full rescan when the directory is back. The
watch also wakes up when a terminating pod's grace period ends, so that it goes on time, and follows
the status file in the hidden state directory (:mod:`.status`: the probed pods' verdicts), whose
changes rebuild only the Services selecting the pods whose readiness changed.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from inotify_simple import INotify
from inotify_simple import flags as F

from ..contract import Snapshot, WatchBase
from .status import STATUS_FILE
from .store import STATE_DIR
from .tree import is_service_file

log = logging.getLogger(__name__)

_STATE_MASK = F.CLOSE_WRITE | F.MOVED_TO | F.DELETE | F.DELETE_SELF | F.MOVE_SELF | F.ONLYDIR
_DIR_MASK = F.CLOSE_WRITE | F.MOVED_TO | F.MOVED_FROM | F.DELETE | F.CREATE | F.DELETE_SELF | F.MOVE_SELF | F.ONLYDIR


class Watched(Protocol):
    """What the watch needs of its registry (:class:`~.registry.FileRegistry`)."""

    root: Path
    revision: int

    def current(self) -> Snapshot: ...

    def snapshot(self) -> Snapshot: ...

    def refresh(self, rels: Iterable[str]) -> bool: ...

    def refresh_status(self) -> bool: ...

    def files_under(self, rel_dir: str) -> list[str]: ...

    def next_deadline(self) -> float | None: ...

    def expire(self) -> bool: ...


class FileWatcher(WatchBase):
    """``for snap in FileWatcher(registry): ...`` yields the first snapshot, then one per change.

    ``poll(timeout)`` is the non-blocking form: a new Snapshot if something changed within
    ``timeout`` seconds, else None. ``close()`` releases the inotify descriptor."""

    def __init__(
        self,
        registry: Watched,
        rescan_interval: float = 600.0,
        retry_interval: float = 1.0,
        delete_grace: float = 1.0,
    ) -> None:
        self.registry = registry
        self.rescan_interval = rescan_interval
        self.retry_interval = retry_interval
        self.problem: str | None = None
        self._inotify: INotify | None = None
        self._dirs: dict[int, str] = {}  # watch descriptor -> relative directory ("" for the root)
        self._state_wd: int | None = None  # the hidden state directory's, where the status file is
        self._last_rescan = 0.0
        self._started = False
        self._last_errors: dict[str, str] = {}
        self._last_pod_ips: frozenset[str] = frozenset()
        self.delete_grace = delete_grace
        self._deleted: dict[str, float] = {}  # file -> when its deletion was seen

    # ---- lifecycle --------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._dirs.clear()
        self._state_wd = None

    def start(self) -> Snapshot:
        """Set up the watches, then read everything (in that order, so no change falls in between)."""
        self._started = True
        snap = self._rescan(force_snapshot=True) if self._setup() else None
        return snap if snap is not None else self.registry.current()

    # ---- the loop -----------------------------------------------------------------------------------------

    def poll(self, timeout: float | None) -> Snapshot | None:
        """Wait up to ``timeout`` seconds (None: until a change) and return a new Snapshot, or None."""
        if not self._started:
            return self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._inotify is None:
                # the directory is gone (or was never there): keep what we know, retry
                if self._setup():
                    log.info("registry: %s is back; rescanning", self.registry.root)
                    snap = self._rescan(force_snapshot=False)
                    if snap is not None:
                        return snap
                    continue
                wait = self.retry_interval
            else:
                wait = max(0.0, self._last_rescan + self.rescan_interval - time.monotonic())
                if self._deleted:
                    wait = min(wait, max(0.0, min(self._deleted.values()) + self.delete_grace - time.monotonic()))
                due = self.registry.next_deadline()
                if due is not None:
                    wait = min(wait, max(0.0, due - time.time()))
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            if self._inotify is not None:
                ready, _, _ = select.select([self._inotify.fileno()], [], [], wait)
                if ready:
                    snap = self._handle(self._inotify.read(timeout=0))
                    if snap is not None:
                        return snap
                if self._inotify is not None and self._deleted:
                    snap = self._apply_deletes()
                    if snap is not None:
                        return snap
                due = self.registry.next_deadline()
                if self._inotify is not None and due is not None and time.time() >= due:
                    snap = self._news(self.registry.expire())
                    if snap is not None:
                        return snap
                if not ready and time.monotonic() >= self._last_rescan + self.rescan_interval:
                    snap = self._rescan(force_snapshot=False)
                    if snap is not None:
                        return snap
            else:
                time.sleep(wait)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _setup(self) -> bool:
        self.close()
        self._deleted.clear()  # a full rescan follows: it sees what is really gone
        root = self.registry.root
        if not root.is_dir():
            self._lost(f"registry directory {root} does not exist; keeping the last known Services")
            return False
        self._inotify = INotify()
        try:
            self._watch_tree("")
            self._watch_state()
        except OSError as err:
            self.close()
            self._lost(f"cannot watch {root}: {err.strerror}; keeping the last known Services")
            return False
        self.problem = None
        return True

    def _lost(self, message: str) -> None:
        if self.problem != message:
            log.error("registry: %s", message)
        self.problem = message

    def _watch_state(self) -> bool:
        """Watch the hidden state directory if it exists (else its creation in the root is seen)."""
        assert self._inotify is not None
        try:
            self._state_wd = self._inotify.add_watch(self.registry.root / STATE_DIR, _STATE_MASK)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def _watch_tree(self, rel_dir: str) -> list[str]:
        """Watch ``rel_dir`` and its subdirectories; return the service files found in them. Each
        directory is watched before it is listed: a file renamed into a new directory between the
        listing and the watch was neither listed nor reported (a writer that makes ``default/`` and
        puts ``db.yaml`` in it at once had its Service missed until the next rescan)."""
        assert self._inotify is not None
        found: list[str] = []
        pending = [self.registry.root / rel_dir if rel_dir else self.registry.root]
        while pending:
            dirpath = pending.pop()
            rel = os.path.relpath(dirpath, self.registry.root)
            rel = "" if rel == "." else rel
            try:
                wd = self._inotify.add_watch(dirpath, _DIR_MASK)
                entries = list(os.scandir(dirpath))
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while we walked
            self._dirs[wd] = rel
            for entry in entries:
                if entry.is_dir():  # a link to a directory is not followed, as os.walk does not
                    if not entry.name.startswith(".") and not entry.is_symlink():
                        pending.append(Path(entry.path))
                elif is_service_file(entry.name):
                    found.append(f"{rel}/{entry.name}" if rel else entry.name)
        return found

    def _apply_deletes(self) -> Snapshot | None:
        """Apply deletions seen ``delete_grace`` seconds ago, if the registry directory is still there:
        when the whole directory is being removed (rm -rf deletes its files first), the watch loses the
        directory within the grace and keeps every Service instead of deleting them one by one."""
        due = [rel for rel, seen in self._deleted.items() if time.monotonic() - seen >= self.delete_grace]
        if not due:
            return None
        for rel in due:
            del self._deleted[rel]
        if not self.registry.root.is_dir():
            return None
        return self._news(self.registry.refresh(due))

    def _rescan(self, force_snapshot: bool) -> Snapshot | None:
        self._last_rescan = time.monotonic()
        before = self.registry.revision
        try:
            self.registry.snapshot()
        except OSError as err:
            self._lost(f"cannot read {self.registry.root}: {err}; keeping the last known Services")
        return self._news(force_snapshot or self.registry.revision != before)

    def _news(self, changed: bool) -> Snapshot | None:
        """The current snapshot if the table or the set of errors changed since the last one given."""
        snap = self.registry.current()
        # pod_ips is one object while no pod's address changes: identity, not a 100k-element compare
        if changed or snap.errors != self._last_errors or snap.pod_ips is not self._last_pod_ips:
            self._last_errors = dict(snap.errors)
            self._last_pod_ips = snap.pod_ips
            return snap
        return None

    def _handle(self, events: Iterable[Any]) -> Snapshot | None:
        changed: list[str] = []
        rescan = status = False
        for ev in events:
            if ev.mask & F.Q_OVERFLOW:
                log.warning("registry: inotify queue overflowed; rescanning %s", self.registry.root)
                rescan = True
                continue
            if self._state_wd is not None and ev.wd == self._state_wd:
                if ev.mask & (F.IGNORED | F.DELETE_SELF | F.MOVE_SELF):
                    self._state_wd, status = None, True
                elif ev.name == STATUS_FILE:
                    status = True
                continue
            if ev.mask & F.ISDIR and ev.name == STATE_DIR and self._dirs.get(ev.wd) == "" and ev.mask & (F.CREATE | F.MOVED_TO):
                status = self._watch_state() or status
                continue
            rel_dir = self._dirs.get(ev.wd)
            if ev.mask & F.IGNORED:
                self._dirs.pop(ev.wd, None)
                continue
            if rel_dir is None:
                continue
            if ev.mask & (F.DELETE_SELF | F.MOVE_SELF):
                if rel_dir == "":
                    self.close()
                    self._lost(f"registry directory {self.registry.root} was removed; keeping the last known Services")
                    return None
                continue
            rel = f"{rel_dir}/{ev.name}" if rel_dir else ev.name
            now = time.monotonic()
            if ev.mask & F.ISDIR:
                if ev.name.startswith("."):
                    continue
                if ev.mask & (F.CREATE | F.MOVED_TO):
                    changed.extend(self._watch_tree(rel))
                else:  # a directory deleted or moved away: everything under it is going
                    self._deleted.update((p, now) for p in self.registry.files_under(rel))
                continue
            if not is_service_file(ev.name):
                continue
            if ev.mask & (F.DELETE | F.MOVED_FROM):
                self._deleted[rel] = now
                continue
            if ev.mask & F.CREATE and not os.path.islink(self.registry.root / rel):
                continue  # wait for the writer to close it
            self._deleted.pop(rel, None)
            changed.append(rel)
        if self._inotify is None:
            return None
        if rescan:
            return self._rescan(force_snapshot=False)
        files = bool(changed) and self.registry.refresh(dict.fromkeys(changed))
        return self._news((status and self.registry.refresh_status()) or files)


__all__ = ["FileWatcher", "Watched"]
