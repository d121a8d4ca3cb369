"""The agent loop: registry watch -> ServiceTable -> dataplane sync -> DNS update.

Ordering, so a client never resolves a VIP that does not work: a Service's name is published in DNS
only after its rules are in the kernel (dataplane first, then DNS), and a deleted Service leaves DNS
before its rules go (DNS first, then the dataplane).

Debouncing, by what is pending: a change that arrives while the agent is idle (the last sync
finished and nothing came in meanwhile) is applied at once. Changes that arrived while a sync ran
mean a burst: they are gathered until no change came for ``min_interval`` seconds, or the oldest
has waited ``max_gather``, so a burst of a thousand file writes is two or three syncs. A failed
sync keeps the previous rules and answers, is logged and counted, forces a full convergence next,
and is retried with backoff. Every
``full_sync_period`` the agent asks the dataplane whether the kernel changed behind its back (for
nftables, one netlink round trip: has anyone committed since?) and converges fully only then, so
drift is repaired (someone flushed the table) without rewriting a 10k-Service table every time.
Every second it also asks whether svcdns's tables are gone altogether (``nft flush ruleset``, as
Debian's nftables.service runs at every start and reload), and puts them back at once.

The watch, the dataplane and the DNS server are injected, typed by their contracts (unit tests use
fakes). A sync treats every failure the same way, whatever raised it (kube-proxy's ``success :=
false; defer ...``): logged, counted in ``svcdns_sync_errors_total``, retried with backoff as a full
sync. A failure outside a sync (the watch, a bug) ends ``run`` with the exception, so the process
exits non-zero and systemd restarts it; the kernel keeps the rules meanwhile.

The explicit endpoints of selector-less Services with a ``readinessProbe`` are probed by this agent
itself (``endpoint_probes``, the prober): the agent offers it those Services and lays its verdicts
over the registry's table (:func:`svcdns.probe.endpoints.overlay`) before syncing, a verdict change
rebuilding only its Service. While there are such Services it looks at the verdicts every 50 ms.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from .dataplane.contract import Dataplane
from .dns.contract import DNS
from .errors import SvcdnsError
from .model import Service
from .notify import Notifier
from .probe.endpoints import overlay, probed
from .registry.contract import Snapshot, Watch
from .status import Metrics, State
from .table import Key, ServiceTable, changed_keys

log = logging.getLogger(__name__)
PROBE_LOOK = 0.05  # while Services have probed endpoints: how often the loop looks at their verdicts


class EndpointProbes(Protocol):
    """What probes the explicit endpoints (:class:`svcdns.probe.Prober`)."""

    @property
    def endpoint_passing(self) -> Mapping[Key, frozenset[str]]:
        """Each probed Service's endpoints that pass; replaced, never changed in place."""
        ...

    def offer_services(self, services: list[Service]) -> None: ...


class Agent:
    def __init__(
        self,
        watch: Watch,
        dataplane: Dataplane,
        dns: DNS,
        *,
        state: State | None = None,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        full_sync_period: float = 60.0,
        loss_check_period: float = 1.0,
        min_interval: float = 0.01,
        max_gather: float = 0.5,
        retry: tuple[float, float] = (0.5, 30.0),
        node_check: Callable[[], list[str]] | None = None,
        node_check_period: float = 5.0,
    ) -> None:
        self.watch, self.dataplane, self.dns = watch, dataplane, dns
        self.state = state or State()
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier(env={})
        self.full_sync_period = full_sync_period
        self.loss_check_period = loss_check_period
        self.min_interval = min_interval  # in a burst: the quiet that ends it
        self.max_gather = max_gather  # in a burst: the longest a change is held back
        self.retry_min, self.retry_max = retry
        self.applied: ServiceTable | None = None  # what the kernel and DNS hold
        self.registry_read = False  # the registry has been read in full once
        self.told_systemd = False  # READY=1 sent
        self.desired = ServiceTable()
        self.pending_since = 0.0
        self.last_change = 0.0  # when the newest unapplied change arrived
        self.burst = False  # changes arrived while a sync ran: gather them
        self.drained = True  # the watch was polled since the last sync
        self.need_full = True
        self.backoff = self.retry_min
        self.next_attempt = 0.0
        self.last_full = 0.0
        self.last_loss_check = 0.0
        self.syncs = 0
        self.watch_started = False
        self.registry_problem: str | None = None  # the last problem logged, to log changes once
        self.node_check = node_check  # what stops VIPs from working on this node (dataplane/health.py)
        self.node_check_period = node_check_period
        self.last_node_check = -node_check_period
        self.pod_ips: frozenset[str] = frozenset()  # the registry's pods' addresses ...
        self.dns_pod_ips: frozenset[str] | None = None  # ... and those the DNS server forwards for
        self.next_pods_attempt = 0.0
        self.endpoint_probes: EndpointProbes | None = None
        self.source = ServiceTable()  # the registry's table; desired is it with the probes' verdicts laid over
        self.probed: dict[Key, Service] = {}  # its selector-less Services with a readinessProbe
        self.passing: Mapping[Key, frozenset[str]] = {}  # the verdicts laid over desired

    # ---- the loop ---------------------------------------------------------------------------------------

    def replace_watch(self, watch: Watch) -> None:
        """Follow another registry (a reload changed it); the next ``run`` starts its watch."""
        self.watch.close()
        self.watch, self.watch_started = watch, False

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set; it can be called again (after a reload) and goes on where it was."""
        if not self.watch_started:
            self.take(self.watch.start())
            self.watch_started = True
        last_watchdog = 0.0
        while not stop.is_set():
            now = self.state.loop_turned = time.monotonic()  # /livez
            if self.notifier.watchdog_interval and now - last_watchdog >= self.notifier.watchdog_interval:
                self.notifier.watchdog()
                last_watchdog = now
            if now - self.last_full >= self.full_sync_period and self.applied is not None and not self.need_full:
                self.check_drift(now)
            if now - self.last_loss_check >= self.loss_check_period and self.applied is not None and not self.need_full:
                self.check_lost(now)
            if self.node_check is not None and now - self.last_node_check >= self.node_check_period:
                self.last_node_check = now
                self.state.vip_problems = self.node_check()
            if self.pod_ips is not self.dns_pod_ips and now >= self.next_pods_attempt:
                self.allow_pods(now)
            if self.endpoint_probes is not None and self.endpoint_probes.endpoint_passing is not self.passing:
                self.take_verdicts()
            if self.due(now):
                self.sync()
                continue
            timeout = 0.5 if not self.probed else PROBE_LOOK
            if not self.drained:
                timeout = 0.0  # what a poll returns at once arrived while the sync ran
            elif self.pending() or self.need_full:
                timeout = max(0.0, min(timeout, max(self.next_attempt, self.gathered_until()) - now))
            snap = self.watch.poll(timeout)
            self.state.dns_problem = self.dns.problem
            self.note_registry(self.watch.problem)
            if snap is not None:
                self.take(snap)
            self.drained = True

    def note_registry(self, problem: str | None) -> None:
        """The registry's health for /healthz and /metrics; a change is logged once."""
        self.state.registry_problem = problem
        self.metrics.registry_up.set(0 if problem else 1)
        if problem != self.registry_problem:
            if problem:
                log.warning("agent: the registry cannot be read (%s); the last known Services stay in force", problem)
            else:
                log.info("agent: the registry can be read again")
            self.registry_problem = problem

    def take(self, snap: Snapshot) -> None:
        """A new registry snapshot: remember it; the loop applies it when due. Until the registry has
        been read once (``snap.synced``), nothing is applied: an agent that starts while etcd is down
        keeps the rules its last run left in the kernel (and DNS answers SERVFAIL in the zone), where
        converging to the empty stand-in table would remove every Service on the host (kube-proxy
        likewise waits for its first full list)."""
        if not snap.synced:
            gc.enable()  # no quick start to protect (see sync): a long wait must not leak cycles
            log.warning("agent: the registry has not been read yet; leaving the kernel's rules as they are")
            # systemd: started (DNS listens, the kernel keeps the last run's rules), not synced; else a
            # start during an etcd outage would time out and restart in a loop. /readyz stays 503.
            self.tell_systemd(f"waiting for the registry ({self.watch.problem}); the rules stay as the last run left them")
            return
        self.registry_read = True
        self.pod_ips = snap.pod_ips
        self.want(*self.with_verdicts(snap.table))
        self.state.revision = snap.revision
        self.state.bad_entries = dict(snap.errors)
        self.metrics.bad_entries.set(len(snap.errors))
        if snap.nodes != self.state.nodes:
            self.state.nodes = dict(snap.nodes)
            self.metrics.set_nodes(self.state.nodes)

    def want(self, table: ServiceTable, changed: set[Key] | None = None) -> None:
        """``table`` is what the kernel and DNS should hold now (``changed``: its keys that differ
        from ``desired``, when known)."""
        if table is not self.desired and (self.applied is None or (changed_keys(self.desired, table) if changed is None else changed)):
            if not self.pending_since:
                self.pending_since = time.monotonic()
                self.state.pending_since = time.time()
            self.last_change = time.monotonic()
            self.burst = self.burst or not self.drained
        self.desired = table

    def with_verdicts(self, table: ServiceTable) -> tuple[ServiceTable, set[Key] | None]:
        """The registry's ``table`` with this agent's probe verdicts on its probed endpoints (itself
        when it has none), and its keys that differ from ``desired`` when they are known; the prober
        is offered the probed Services when they change."""
        if self.endpoint_probes is None:
            return table, None
        old, self.source = self.source, table
        changed = changed_keys(old, table)
        had = bool(self.probed)
        offer = False
        for key in changed:
            svc = table.services.get(key)
            if svc is not None and probed(svc):
                self.probed[key] = svc
                offer = True
            elif self.probed.pop(key, None) is not None:
                offer = True
        if offer:
            self.endpoint_probes.offer_services(list(self.probed.values()))
        if not had and not self.probed:  # desired is the last source: changed says what differs
            return table, changed if old is self.desired else None
        return overlay(table, self.passing, changed, onto=self.desired), None

    def take_verdicts(self) -> None:
        """The prober's verdicts changed: rebuild the Services whose did."""
        assert self.endpoint_probes is not None
        passing, seen = self.endpoint_probes.endpoint_passing, self.passing
        self.passing = passing
        keys = {k for k in self.probed if passing.get(k) != seen.get(k)}
        if keys and self.registry_read:
            self.want(overlay(self.source, passing, keys, onto=self.desired))

    def use_probes(self, probes: EndpointProbes) -> None:
        """Have ``probes`` probe the explicit endpoints (a reload's new prober is offered them again;
        its verdicts replace the old one's at the next look)."""
        self.endpoint_probes = probes
        if self.probed:
            probes.offer_services(list(self.probed.values()))

    def pending_changes(self) -> int:
        """Services changed in the registry and not applied yet (read by /metrics' thread: both
        tables are immutable)."""
        applied, desired = self.applied, self.desired
        if not self.registry_read:
            return 0
        return len(desired) if applied is None else len(changed_keys(applied, desired))

    def allow_pods(self, now: float) -> None:
        """Tell DNS which addresses are pods (their names outside the zone are forwarded); a failure
        is retried a second later."""
        try:
            self.dns.allow_clients(self.pod_ips)
        except Exception as err:  # noqa: BLE001 - DNS keeps the previous set meanwhile
            log.warning("agent: DNS did not take the pods' addresses (%s); retrying in 1 s", _describe(err))
            self.next_pods_attempt = now + 1.0
            return
        self.dns_pod_ips = self.pod_ips

    def pending(self) -> bool:
        return (
            self.applied is None or self.applied is not self.desired and bool(changed_keys(self.applied, self.desired))
        )

    def due(self, now: float) -> bool:
        if not self.registry_read or now < self.next_attempt:
            return False
        if self.need_full:
            return True
        return self.pending() and now >= self.gathered_until()

    def gathered_until(self) -> float:
        """When the pending changes are due: at once, unless they are a burst (see the module doc)."""
        if not self.burst:
            return 0.0
        return min(self.last_change + self.min_interval, self.pending_since + self.max_gather)

    def check_lost(self, now: float) -> None:
        self.last_loss_check = now
        try:
            lost = self.dataplane.lost()
        except Exception as err:  # noqa: BLE001 - any failure here only defers the check
            log.warning("agent: could not check that svcdns's tables are still there (%s)", _describe(err))
            return  # the drift check will tell
        if lost:
            log.warning("agent: svcdns's tables were removed behind its back (nft flush ruleset?); putting them back")
            self.need_full = True

    def check_drift(self, now: float) -> None:
        try:
            drifted = self.dataplane.drifted()
        except Exception as err:  # noqa: BLE001 - whatever failed, converging fully repairs it
            log.warning("agent: could not check the kernel's rules for drift (%s); converging fully", _describe(err))
            drifted = True
        if drifted:
            log.warning("agent: the kernel's rules may have changed behind svcdns's back; converging fully")
            self.need_full = True
        else:
            self.last_full = now

    # ---- one sync -----------------------------------------------------------------------------------------

    def sync(self) -> bool:
        desired, applied, full = self.desired, self.applied, self.need_full
        start = time.monotonic()
        try:
            gone = [k for k in changed_keys(applied, desired) if k not in desired.services] if applied is not None else []
            if applied is not None and gone:  # names leave DNS before their rules leave the kernel
                self.dns.update(applied.replace(deletes=gone))
            result = self.dataplane.sync(desired, full=full)
            self.dns.update(desired)  # names arrive after their rules
        except Exception as err:  # noqa: BLE001 - every failure of a sync is handled alike (see the module doc)
            self.fail(err)
            return False
        now = time.monotonic()
        self.metrics.sync_duration.labels("full" if full else "partial").observe(now - start)
        if self.pending_since:
            self.metrics.programming.observe(now - self.pending_since)
        self.applied = desired
        self.need_full = False
        self.backoff = self.retry_min
        self.next_attempt = 0.0
        if full:
            self.last_full = now
            # The table, the zone and the dataplane's caches are long-lived and hold no cycles: out
            # of the cyclic collector's generations, a gen-2 pass no longer walks them all (50-400 ms
            # at 10k Services, in the middle of a change); reference counting still frees them. The
            # collection first, so that no garbage cycle is frozen; the agent's start disabled the
            # collector (building 10k Services makes no cycles: collecting then was 10% of it).
            gc.collect()
            gc.freeze()
            gc.enable()
        self.pending_since = 0.0
        self.burst, self.drained = False, False
        self.syncs += 1
        st = self.state
        st.last_sync, st.last_error, st.pending_since = time.time(), "", 0.0
        st.services, st.endpoints = len(desired), desired.endpoint_count()
        self.metrics.services.set(st.services)
        self.metrics.endpoints.set(st.endpoints)
        self.metrics.rules.set(result.rules if result is not None else 0)
        status = f"{st.services} Services, {st.endpoints} endpoints, revision {st.revision}"
        if not st.ready:
            st.ready = True
            log.info("agent: ready: %s", status)
        self.tell_systemd(status)
        log.info("agent: synced %s (%s, %.1f ms)", status, "full" if full else "partial", (now - start) * 1000)
        return True

    def tell_systemd(self, status: str) -> None:
        """READY=1 with the first status (the agent is up), STATUS= after it."""
        if self.told_systemd:
            self.notifier.status(status)
        else:
            self.notifier.ready(status)
            self.told_systemd = True

    def fail(self, err: Exception) -> None:
        gc.enable()  # the start's collector pause (see sync) ends with its first attempt
        self.metrics.sync_errors.inc()
        self.state.last_error = _describe(err)
        self.need_full = True
        self.next_attempt = time.monotonic() + self.backoff
        # an error svcdns did not convert at a shell's edge is a bug: keep its traceback
        log.error("agent: sync failed, retrying in %.1fs as a full sync: %s", self.backoff, self.state.last_error,
                  exc_info=not isinstance(err, SvcdnsError))  # fmt: skip
        self.backoff = min(self.backoff * 2, self.retry_max)


def _describe(err: BaseException) -> str:
    """A failure in one line: svcdns's own errors by their message, anything else with its type."""
    return str(err) if isinstance(err, SvcdnsError) else f"{type(err).__name__}: {err}"
