"""Watching etcd: a snapshot at a revision, then the changes after it, resumed after any break.

The watch starts at the snapshot's revision + 1. When the stream breaks (etcd restarted, a member
died, the network went away) it resumes from the last revision it applied, trying every endpoint,
with backoff; meanwhile nothing changes on the host (the last known Services stay in force) and
``problem`` says what is wrong. If the revision was compacted away, it takes a fresh snapshot and
converges: Services that vanished meanwhile go, the others stay untouched.

The interface is the file watch's: ``start()`` gives the first Snapshot, ``poll(timeout)`` the next
one or None, iteration yields them all, ``healthy`` / ``problem`` tell the agent's health endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from typing import Any

import aetcd.exceptions

from .contract import Snapshot, WatchBase
from .etcd import EtcdRegistry, RegistryUnavailable

log = logging.getLogger(__name__)


class EtcdWatcher(WatchBase):
    def __init__(self, registry: EtcdRegistry, retry_interval: float = 0.2, max_backoff: float = 5.0,
                 batch_window: float = 0.005) -> None:  # fmt: skip
        self.registry = registry
        self.retry_interval = retry_interval
        self.max_backoff = max_backoff
        self.batch_window = batch_window
        self.problem: str | None = None
        self._queue: queue.Queue[Snapshot] = queue.Queue()
        self._task: Any = None
        self._pending: Any = None  # a scheduled rebuild
        self._last_errors: dict[str, str] = {}
        self._needs_snapshot = True
        self._watch: Any = None

    def start(self) -> Snapshot:
        """The first snapshot (the empty one, with ``problem`` set, if etcd cannot be reached yet:
        the background loop keeps trying), then the watch runs in the background."""
        try:
            snap = self.registry.snapshot()
            self._needs_snapshot = False
            self._last_errors = dict(snap.errors)
        except RegistryUnavailable as err:
            self._trouble(f"{err}; keeping the last known Services")
            snap = self.registry.current()
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self.registry._loop)
        return snap

    def resume(self) -> None:
        """(Re)start the background watch from the last applied revision: what happens after the
        stream breaks. A compacted revision leads to a fresh snapshot."""
        self.close()
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self.registry._loop)

    def poll(self, timeout: float | None) -> Snapshot | None:
        if self._task is None:
            return self.start()
        try:
            snap = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        while True:  # only the newest matters
            try:
                snap = self._queue.get_nowait()
            except queue.Empty:
                return snap

    def close(self) -> None:
        if self._task is not None:
            self.registry._loop.call_soon_threadsafe(self._cancel, self._task)
            self._task = None

    def _cancel(self, task) -> None:
        if self._pending is not None:  # a rebuild scheduled but not started: it would outlive the watch
            self._pending.cancel()
            self._pending = None
        task.cancel()

    # ---- the loop (runs on the registry's event loop) ----------------------------------------------------

    def _trouble(self, message: str) -> None:
        if self.problem != message:
            log.error("registry: %s", message)
            self.problem = message
            self._queue.put(self.registry.current())

    def _recovered(self) -> None:
        if self.problem is not None:
            log.warning("registry: etcd is reachable again; resuming from revision %d", self.registry.revision)
            self.problem = None
            self._queue.put(self.registry.current())

    async def _run(self) -> None:
        reg = self.registry
        backoff = self.retry_interval
        while True:
            try:
                if self._needs_snapshot:
                    revision = await reg.read_all()
                    await reg.reconcile()
                    self._needs_snapshot = False
                    self._emit(reg.rebuild(revision))
                start = reg.revision + 1
                prefix = reg.prefix + b"/"
                self._watch = await reg.call(lambda c, p=prefix, r=start: c.watch_prefix(p, start_revision=r))
                self._recovered()
                backoff = self.retry_interval
                async for event in self._watch:
                    if event.kind == "PUT":
                        reg.apply_put(event.kv.key, event.kv.value, event.kv.mod_revision)
                    else:
                        reg.apply_delete(event.kv.key)
                    reg.revision = max(reg.revision, event.kv.mod_revision)
                    self._schedule()
                raise RegistryUnavailable("the etcd watch stream ended")
            except asyncio.CancelledError:
                if self._watch is not None:
                    await _quietly(self._watch.cancel())
                raise
            except aetcd.exceptions.RevisionCompactedError as err:
                log.warning("registry: revision %d was compacted (%s); taking a fresh snapshot", reg.revision + 1, err)
                self._needs_snapshot = True
            except (RegistryUnavailable, aetcd.exceptions.ClientError, OSError) as err:
                # RegistryUnavailable says what and where; a broken stream is the current member's
                what = str(err) if isinstance(err, RegistryUnavailable) else f"etcd at {reg.endpoint} unreachable ({err})"
                self._trouble(f"{what}; keeping the last known Services, retrying")
                await reg.next_member()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _schedule(self) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(
                self.batch_window, lambda: asyncio.ensure_future(self._flush())
            )

    async def _flush(self) -> None:
        self._pending = None
        reg = self.registry
        changed = reg.rebuild(reg.revision)
        try:
            await reg.reconcile(reg.rebuilt)  # adopt new documents without VIPs; the watch brings the result
        except RegistryUnavailable as err:
            log.warning("registry: could not allocate VIPs now: %s", err)
        self._emit(changed)

    def _emit(self, changed: bool) -> None:
        snap = self.registry.current()
        if changed or snap.errors != self._last_errors:
            self._last_errors = dict(snap.errors)
            self._queue.put(snap)


async def _quietly(coro: Any) -> None:
    try:
        await asyncio.wait_for(coro, 1)
    except Exception as err:  # the stream may already be dead; nothing to do about it
        log.debug("etcd: cancelling a watch: %r", err)
