"""What an etcd registry holds, as a pure state machine: no I/O, unit-tested without etcd.

The key schema is :mod:`.keys`.

:class:`EtcdState` takes the keys as they are read or watched (``apply_put`` / ``apply_delete``,
``begin_full_read`` / ``end_full_read`` around a full read), and ``rebuild`` turns them into a new
ServiceTable, recomputing only the Services whose keys were touched. An entry that turns invalid
keeps its last good version, as with files; a Service whose VIP is held by another is not changed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from ...endpoints import Derivation
from ...errors import MAX_VALUE
from ...ipam import DEFAULT_SERVICE_CIDRS, Allocator, VIPConflict
from ...model import IPAddress, Service, ValidationError
from ...pod import Pod
from ...table import Key, ServiceTable
from ..contract import Snapshot
from ..documents import DocumentError, decode, decode_pod
from .keys import Keys, lease_of, status_of

T = TypeVar("T", Service, Pod)  # what an etcd value decodes to

log = logging.getLogger(__name__)


@dataclass
class Entry:
    mod: int  # the document's mod_revision
    service: Service | None  # last good version
    error: str | None = None


@dataclass
class PodEntry:
    mod: int
    pod: Pod | None  # last good version
    error: str | None = None


def _located(source: str, check: Callable[[], None]) -> None:
    """Run ``check``; a ValidationError becomes the DocumentError of ``source``."""
    try:
        check()
    except ValidationError as err:
        raise DocumentError(source, err.field, err.value, err.reason) from None


def holder_key(holder: str) -> Key:
    ns, _, name = holder.partition("/")
    return (ns, name)


class EtcdState:
    """The registry's keys as last read, and the ServiceTable they make."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.cidrs: list[str] | None = None  # from the config key, once read
        self.entries: dict[Key, Entry] = {}
        self._bad: set[Key] = set()  # the entries with an error: current() reads these, not every entry
        self.vips: dict[IPAddress, str] = {}
        self.table = ServiceTable()
        self.revision = 0
        self.cluster_id: int | None = None  # the etcd cluster the keys were last read in full from
        self.synced = False  # read in full at least once
        self.dirty: set[Key] | None = None  # keys to recompute; None: all of them
        self.rebuilt: set[Key] = set()  # the keys the last rebuild recomputed
        self._seen: set[Key] | None = None  # during a full read: the Services read so far
        self.pods: dict[Key, PodEntry] = {}
        self._bad_pods: set[Key] = set()  # the pods whose value was refused: current() reads these, not 100k entries
        self.derivation = Derivation(per_node=True)
        self._seen_pods: set[Key] = set()
        self._seen_statuses: set[tuple[str, str, str]] = set()
        self._bounds: Allocator | None = None
        self.nodes: set[str] = set()  # the node records
        self.live: dict[str, int] = {}  # node -> the lease ID its liveness key holds
        self._seen_nodes: set[str] | None = None  # during a full read: the node and lease keys read so far
        self._seen_live: set[str] = set()

    # ---- taking keys in ---------------------------------------------------------------------------

    def begin_full_read(self, revision: int = 0, cluster_id: int | None = None) -> None:
        """A full read follows (every key at ``revision`` of the cluster ``cluster_id``): what it does
        not bring is gone. The revision may be lower than the one held: etcd was wiped or restored."""
        self.revision = revision
        self.cluster_id = cluster_id if cluster_id is not None else self.cluster_id
        self.dirty = None
        self._seen = set()
        self._seen_pods = set()
        self._seen_statuses = set()
        self._seen_nodes, self._seen_live = set(), set()
        self.vips.clear()

    def end_full_read(self) -> None:
        seen, self._seen = self._seen or set(), None
        self._bad &= seen
        for key in set(self.entries) - seen:
            del self.entries[key]
            self.derivation.remove_service(key)
        self._bad_pods &= self._seen_pods
        for key in set(self.pods) - self._seen_pods:
            del self.pods[key]
            self.derivation.remove_pod(key)
        for node, ns, name in set(self.derivation.statuses) - self._seen_statuses:
            self.derivation.set_status(node, (ns, name), None)
        seen_nodes, self._seen_nodes = self._seen_nodes or set(), None
        self.nodes &= seen_nodes
        for name in set(self.live) - self._seen_live:
            del self.live[name]
        self._liveness_changed()

    def apply_put(self, raw_key: bytes, value: bytes, mod: int) -> None:
        self.revision = max(self.revision, mod)
        parsed = self.keys.parse(raw_key)
        if parsed is None:
            return
        kind, what = parsed
        if kind == "config":
            self._apply_config(raw_key, value)
        elif kind == "vip":
            assert isinstance(what, (ipaddress.IPv4Address, ipaddress.IPv6Address))
            old_holder = self.vips.get(what)
            self.vips[what] = value.decode(errors="replace")
            self._touch_holder(old_holder)
            self._touch_holder(self.vips[what])
        elif kind == "pod":
            assert isinstance(what, tuple) and len(what) == 2
            self._apply_pod(what, raw_key, value, mod)
        elif kind == "status":
            assert isinstance(what, tuple) and len(what) == 3
            self._seen_statuses.add(what)
            status = status_of(value)
            if status is None:
                log.warning("etcd: %s is not {\"ready\": true|false, \"reason\": ...}; ignored", raw_key.decode(errors="replace"))
            self._touch_all(self.derivation.set_status(what[0], (what[1], what[2]), status))
        elif kind == "node":
            assert isinstance(what, str)
            self.nodes.add(what)
            if self._seen_nodes is not None:
                self._seen_nodes.add(what)
            self._liveness_changed()
        elif kind == "lease":
            assert isinstance(what, str)
            self.live[what] = lease_of(value)
            self._seen_live.add(what)
            self._liveness_changed()
        else:
            assert isinstance(what, tuple) and len(what) == 2
            self._apply_service(what, raw_key, value, mod)

    def _apply_pod(self, key: Key, raw_key: bytes, value: bytes, mod: int) -> None:
        self._seen_pods.add(key)
        old = self.pods.get(key)
        try:
            pod = _decoded(decode_pod, raw_key, value, key, lambda p: self.bounds().check_pod(p))
        except DocumentError as err:
            _report(err, old.error if old else None, bool(old and old.pod))
            self.pods[key] = PodEntry(mod, old.pod if old else None, str(err))
            self._bad_pods.add(key)
            return
        self.pods[key] = PodEntry(mod, pod)
        self._bad_pods.discard(key)
        self._touch_all(self.derivation.put_pod(pod, time.time()))

    def replaced(self, cluster_id: int, revision: int) -> str | None:
        """Why the etcd that answers now (its cluster ID, its revision) cannot be the one the keys
        came from, or None. A watch on it would start in another history: a wiped etcd waits for
        revisions it will reach only later, missing every write until then."""
        if self.cluster_id is not None and cluster_id != self.cluster_id:
            return f"etcd's cluster ID changed from {self.cluster_id:x} to {cluster_id:x}"
        if revision < self.revision:
            return f"etcd's revision went back from {self.revision} to {revision}"
        return None

    def expire(self, now: float) -> None:
        """Drop the pods whose grace period ended (their Services are rebuilt next)."""
        self._touch_all(self.derivation.expire(now))

    def _touch_all(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self._touch(key)

    def _apply_config(self, raw_key: bytes, value: bytes) -> None:
        try:
            cidrs = json.loads(value)["serviceCIDRs"]
            if not isinstance(cidrs, list):
                raise TypeError
            self.cidrs = [str(c) for c in cidrs]
        except (ValueError, KeyError, TypeError, RecursionError):
            log.error('etcd: %s is not {"serviceCIDRs": [...]}; ignored', raw_key.decode(errors="replace"))

    def _apply_service(self, key: Key, raw_key: bytes, value: bytes, mod: int) -> None:
        if self._seen is not None:
            self._seen.add(key)
        self._touch(key)
        old = self.entries.get(key)
        try:
            svc = _decoded(decode, raw_key, value, key, lambda s: self.bounds().check_endpoints(s))
        except DocumentError as err:
            _report(err, old.error if old else None, bool(old and old.service))
            self.entries[key] = Entry(mod, old.service if old else None, str(err))
            self._bad.add(key)
            return
        self.entries[key] = Entry(mod, svc)
        self._bad.discard(key)
        self.derivation.put_service(svc)

    def apply_delete(self, raw_key: bytes, mod: int = 0) -> None:
        self.revision = max(self.revision, mod)
        parsed = self.keys.parse(raw_key)
        if parsed is None:
            return
        kind, what = parsed
        if kind == "vip":
            assert isinstance(what, (ipaddress.IPv4Address, ipaddress.IPv6Address))
            self._touch_holder(self.vips.pop(what, None))
        elif kind == "service":
            assert isinstance(what, tuple) and len(what) == 2
            self.entries.pop(what, None)
            self._bad.discard(what)
            self.derivation.remove_service(what)
            self._touch(what)
        elif kind == "pod":
            assert isinstance(what, tuple) and len(what) == 2
            self.pods.pop(what, None)
            self._bad_pods.discard(what)
            self._touch_all(self.derivation.remove_pod(what))
        elif kind == "status":
            assert isinstance(what, tuple) and len(what) == 3
            self._touch_all(self.derivation.set_status(what[0], (what[1], what[2]), None))
        elif kind == "node":
            assert isinstance(what, str)
            self.nodes.discard(what)
            self._liveness_changed()
        elif kind == "lease":
            assert isinstance(what, str)
            self.live.pop(what, None)
            self._liveness_changed()

    # ---- nodes ------------------------------------------------------------------------------------------

    def down_nodes(self) -> set[str]:
        """The nodes with a record whose lease key is gone: their agent's lease expired."""
        return self.nodes - set(self.live)

    def node_states(self) -> dict[str, bool]:
        """Every node with a record or a lease key -> whether its lease is alive."""
        return {name: name in self.live for name in sorted(self.nodes | set(self.live))}

    def _liveness_changed(self) -> None:
        if self._seen_nodes is not None:
            return  # in a full read: end_full_read decides, once every key is in
        down, was = self.down_nodes(), self.derivation.down
        for name in sorted(down - was):
            log.warning("etcd: node %s's lease is gone (its agent stopped or its host is cut off): its %d pods are "
                        "not ready", name, self.derivation.pods_on(name))  # fmt: skip
        for name in sorted(was - down):
            log.info("etcd: node %s is %s: its pods are as their records say", name,
                     "back" if name in self.live else "no longer run by an agent")  # fmt: skip
        self._touch_all(self.derivation.set_down(down))

    def _touch(self, key: Key) -> None:
        if self.dirty is not None:
            self.dirty.add(key)

    def _touch_holder(self, holder: str | None) -> None:
        if holder:
            self._touch(holder_key(holder))

    # ---- the table ------------------------------------------------------------------------------------

    def rebuild(self, revision: int = 0) -> bool:
        """Recompute the Services of the keys touched since the last rebuild; True if the table changed."""
        keys = set(self.entries) | set(self.table.services) if self.dirty is None else self.dirty
        self.synced = self.synced or self.dirty is None  # None: after a full read
        self.dirty = set()
        self.rebuilt = keys
        self.revision = max(self.revision, revision)
        puts, deletes = [], []
        # the families a headless selector Service takes of its pods come from the config (written once)
        self.derivation.families = tuple(self.bounds().families())
        for key in keys:
            svc = self._effective(key)
            if svc is None:
                if key in self.table:
                    deletes.append(key)
                continue
            svc = self.derivation.apply(svc)
            if self.table.get(*key) != svc:
                puts.append(svc)
        if not puts and not deletes:
            return False
        self.table = self.table.replace(puts, deletes, self.revision)
        return True

    def _effective(self, key: Key) -> Service | None:
        """What the table holds for ``key``: the entry's last good version once it has its VIPs, or
        (when its VIPs are held by another Service) what the table had before."""
        entry = self.entries.get(key)
        svc = entry.service if entry else None
        if entry is None or svc is None or (svc.has_vip and not svc.cluster_ips):
            return None  # gone, never good, or waiting to be adopted
        conflict = next((ip for ip in svc.cluster_ips if self.vips.get(ip, svc.ref) != svc.ref), None)
        if conflict is not None:
            self.refuse(key, f"{self.keys.source(key)}: clusterIP {conflict} is held by Service {self.vips[conflict][:MAX_VALUE]}")
            return self.table.get(*key)
        return svc

    def refuse(self, key: Key, message: str) -> None:
        """Record why the entry of ``key`` is not in force; reported until its next value."""
        entry = self.entries.get(key)
        if entry is not None:
            entry.error = message
            self._bad.add(key)

    def current(self) -> Snapshot:
        errors = {}
        for k in sorted(self._bad):
            if (entry := self.entries.get(k)) is not None and entry.error:
                errors[self.keys.source(k)] = entry.error
        for k in sorted(self._bad_pods):
            if (pod_entry := self.pods.get(k)) is not None and pod_entry.error:
                errors[self.keys.pod(k).decode(errors="replace")] = pod_entry.error
        return Snapshot(self.revision, self.table, errors, self.synced, nodes=self.node_states(),
                        pod_ips=self.derivation.pod_ips())

    # ---- VIPs -------------------------------------------------------------------------------------------

    def bounds(self) -> Allocator:
        """An allocator over the service CIDRs holding nothing: what endpoints are checked against."""
        cidrs = self.cidrs or list(DEFAULT_SERVICE_CIDRS)
        if self._bounds is None or self._bounds.cidrs != cidrs:
            self._bounds = Allocator(cidrs)
        return self._bounds

    def allocator(self) -> Allocator:
        """An allocator holding every VIP key's address for its holder."""
        alloc = Allocator(self.cidrs or list(DEFAULT_SERVICE_CIDRS))
        held: dict[str, list[IPAddress]] = {}
        for ip, holder in self.vips.items():
            held.setdefault(holder, []).append(ip)
        for holder, ips in held.items():
            try:
                alloc.restore(holder, tuple(sorted(ips, key=lambda a: a.version)))
            except VIPConflict as err:
                log.error("etcd: %s", err)
        return alloc

    def pending(self, only: Iterable[Key] | None = None) -> list[tuple[Key, Entry]]:
        """The valid documents without VIPs (among ``only``, or all): to adopt."""
        keys = sorted(self.entries) if only is None else sorted(k for k in only if k in self.entries)
        return [
            (k, self.entries[k])
            for k in keys
            if (svc := self.entries[k].service) and svc.has_vip and not svc.cluster_ips and not self.entries[k].error
        ]

    def orphans(self, only: Iterable[Key] | None = None) -> list[IPAddress]:
        """The VIP keys whose Service is gone (among ``only``, or all): to collect."""
        scope = None if only is None else set(only)
        return [
            ip
            for ip, holder in self.vips.items()
            if holder_key(holder) not in self.entries and (scope is None or holder_key(holder) in scope)
        ]


def _decoded(decoder: Callable[..., T], raw_key: bytes, value: bytes, key: Key, check: Callable[[T], None]) -> T:
    """A Service or Pod from an etcd value: decoded, named as its key says, and ``check``-ed;
    every failure a DocumentError naming the key."""
    source = raw_key.decode(errors="replace")
    obj = decoder(value, source, fmt="json")
    if obj.key != key:
        raise DocumentError(source, "name", obj.ref, f"does not match its key ({key[0]}/{key[1]})")
    _located(source, lambda: check(obj))
    return obj


def _report(err: DocumentError, last_error: str | None, had_good: bool) -> None:
    """Log a bad entry once per new error (a watch sees the same value again after a reconnect)."""
    if str(err) != last_error:
        log.error("registry: %s%s", err, "; keeping its last good version" if had_good else "")


__all__ = ["Entry", "EtcdState", "Keys", "PodEntry", "holder_key"]
