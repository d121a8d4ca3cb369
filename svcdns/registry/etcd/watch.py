"""Watching etcd: a snapshot at a revision, then the changes after it, resumed after any break.

The watch starts at the snapshot's revision + 1. When the stream breaks (etcd restarted, a member
died, the network went away) it resumes from the last revision it applied, trying every member,
with backoff; meanwhile nothing changes on the host (the last known Services stay in force) and
``problem`` says what is wrong. If the revision was compacted away, or the etcd that answers is
not the one the keys came from (its cluster ID changed, or its revision went back: wiped and
started again, restored from a backup), it takes a fresh snapshot and converges: Services that
vanished meanwhile go, the others stay untouched.

Events are applied to the registry's state as they come and the table is rebuilt after a short
batch window, so a burst of writes costs one new Snapshot. A rebuild is also scheduled for when the
next terminating pod's grace period ends: the pod then goes, and its key is deleted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import time
from collections.abc import Iterable
from typing import Any, Protocol

from ...errors import RegistryUnavailable, SvcdnsError
from ...table import Key
from ..contract import Snapshot, WatchBase
from .client import EtcdClient, EventStream, RevisionCompacted
from .state import EtcdState

log = logging.getLogger(__name__)


class Watched(Protocol):
    """What the watch needs of its registry (:class:`~.registry.EtcdRegistry`)."""

    client: EtcdClient
    state: EtcdState

    def snapshot(self) -> Snapshot: ...

    async def resync(self) -> bool: ...

    async def adopt(self, only: Iterable[Key] | None = None) -> bool: ...

    async def collect_gone(self) -> None: ...


class EtcdWatch(WatchBase):
    def __init__(self, registry: Watched, retry_interval: float = 0.2, max_backoff: float = 5.0,
                 batch_window: float = 0.005) -> None:  # fmt: skip
        self.registry = registry
        self.retry_interval = retry_interval
        self.max_backoff = max_backoff
        self.batch_window = batch_window
        self.problem: str | None = None
        self._queue: queue.Queue[Snapshot] = queue.Queue()
        self._task: concurrent.futures.Future[Any] | None = None
        self._pending: asyncio.TimerHandle | None = None  # a scheduled rebuild
        self._expiry: asyncio.TimerHandle | None = None  # the rebuild at the next pod's deadline
        self._last_errors: dict[str, str] = {}
        self._last_nodes: dict[str, bool] = {}
        self._last_pod_ips: frozenset[str] = frozenset()
        self._needs_snapshot = True
        self._stream: EventStream | None = None

    @property
    def _client(self) -> EtcdClient:
        return self.registry.client

    @property
    def _state(self) -> EtcdState:
        return self.registry.state

    def start(self) -> Snapshot:
        """The first snapshot (the empty one, with ``problem`` set, if etcd cannot be reached yet:
        the background loop keeps trying), then the watch runs in the background."""
        try:
            snap = self.registry.snapshot()
            self._needs_snapshot = False
            self._last_errors, self._last_nodes = dict(snap.errors), dict(snap.nodes)
            self._last_pod_ips = snap.pod_ips
        except RegistryUnavailable as err:
            self._trouble(f"{err}; keeping the last known Services")
            snap = self._state.current()
        self._task = self._client.submit(self._run())
        return snap

    def resume(self) -> None:
        """(Re)start the background watch from the last applied revision: what happens after the
        stream breaks. A compacted revision leads to a fresh snapshot."""
        self.close()
        self._task = self._client.submit(self._run())

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
            self._client.call_soon(self._cancel, self._task)
            self._task = None

    def _cancel(self, task: concurrent.futures.Future[Any]) -> None:
        if self._pending is not None:  # a rebuild scheduled but not started: it would outlive the watch
            self._pending.cancel()
            self._pending = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        task.cancel()

    # ---- the loop (runs on the client's event loop) ------------------------------------------------------

    def _trouble(self, message: str) -> None:
        if self.problem != message:
            log.error("registry: %s", message)
            self.problem = message
            self._queue.put(self._state.current())

    def _recovered(self) -> None:
        if self.problem is not None:
            log.info("registry: etcd is reachable again; resuming from revision %d", self._state.revision)
            self.problem = None
            self._queue.put(self._state.current())

    async def _run(self) -> None:
        state = self._state
        backoff = self.retry_interval
        while True:
            try:
                if self._needs_snapshot:
                    changed = await self.registry.resync()
                    self._needs_snapshot = False
                    self._emit(changed)
                self._stream = await self._client.watch(state.keys.root, state.revision + 1)
                header = self._stream.header
                if (why := state.replaced(header.cluster_id, header.revision)) is not None:
                    log.warning("registry: %s: etcd was wiped, restored or replaced; reading everything again", why)
                    await self._stream.cancel()
                    self._needs_snapshot = True
                    continue
                self._recovered()
                self._schedule_expiry()
                backoff = self.retry_interval
                async for event in self._stream:
                    if event.kind == "put":
                        state.apply_put(event.kv.key, event.kv.value, event.kv.mod_revision)
                    else:
                        state.apply_delete(event.kv.key, event.kv.mod_revision)
                    self._schedule()
            except asyncio.CancelledError:
                if self._stream is not None:
                    await self._stream.cancel()
                raise
            except RevisionCompacted as err:
                log.warning("registry: revision %d was compacted (%s); taking a fresh snapshot", state.revision + 1, err)
                self._needs_snapshot = True
            except SvcdnsError as err:  # unreachable, refused, or a config key no host can use
                self._trouble(f"{err}; keeping the last known Services, retrying")
                await self._client.next_member()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _schedule(self) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(
                self.batch_window, lambda: asyncio.ensure_future(self._flush())
            )

    async def _flush(self) -> None:
        self._pending = None
        state = self._state
        state.expire(time.time())
        changed = state.rebuild()
        try:
            await self.registry.adopt(state.rebuilt)  # adopt new documents without VIPs; the watch brings the result
        except SvcdnsError as err:
            log.warning("registry: could not allocate VIPs now: %s", err)
        self._emit(changed)
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        due = self._state.derivation.next_deadline()
        if due is not None:
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, due - time.time()), lambda: asyncio.ensure_future(self._expire())
            )

    async def _expire(self) -> None:
        self._expiry = None
        try:
            await self.registry.collect_gone()  # the watch brings the deletions
        except SvcdnsError as err:
            log.warning("registry: could not delete the pods whose grace ended: %s", err)
        await self._flush()

    def _emit(self, changed: bool) -> None:
        snap = self._state.current()
        # pod_ips is one object while no pod's address changes: identity, not a 100k-element compare
        if (changed or snap.errors != self._last_errors or snap.nodes != self._last_nodes
                or snap.pod_ips is not self._last_pod_ips):
            self._last_errors, self._last_nodes = dict(snap.errors), dict(snap.nodes)
            self._last_pod_ips = snap.pod_ips
            self._queue.put(snap)


__all__ = ["EtcdWatch", "Watched"]
