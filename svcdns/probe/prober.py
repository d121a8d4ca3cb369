"""The prober: one thread with an asyncio loop that runs the due readiness probes of this node's pods
and writes a pod's status (:class:`~svcdns.pod.PodStatus`: ``ready`` when every one of its probes
passes, and ``reason``) through the registry only when its verdict changes: never per probe, and
never into the pod's record (spec, which users and ``svcdns apply`` write).

It lists the pods every ``refresh`` seconds, or less often when a listing costs more than
:data:`LIST_SHARE` of a core (a new pod is not ready until its first success anyway, so it loses
nothing but time by waiting for the next listing); probes go on while it lists. Each listing also
hands the registry every verdict (it writes only those that differ from what it stores: a status
removed behind the prober's back, or lost with a node lease, comes back) and drops the statuses of
the pods it no longer probes. The first listing reads the statuses already stored, so a restarted
agent resumes them instead of taking every pod out of its Services. At most ``max_concurrent``
probes run at once; a probe holds its slot for at most its ``timeoutSeconds``. Registry reads and
writes run one at a time, in order, on one worker thread, so a listing never undoes a write it
raced with and a slow registry never delays a probe; the verdicts that change while a write is under
way go in the next one, together (a thousand pods failing at once cost a few writes, not a thousand).

It also probes the explicit endpoints of the selector-less Services with a ``readinessProbe``
(:mod:`.endpoints`), on every host: the agent offers those Services (:meth:`Prober.offer_services`)
and reads the verdicts back (``endpoint_passing``, replaced on each change), never through the
registry. They share the concurrency cap, the state machine and the
metrics with the pods' probes.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from ..errors import SvcdnsError
from ..model import Service
from ..pod import NOT_PROBED, Pod, PodStatus, Probe
from ..registry.contract import Registry
from .checks import check, probe_at
from .endpoints import EndpointKey, Target, reconcile_targets, targets_of
from .metrics import ProbeMetrics
from .result import Result
from .state import Key, ProbeKey, ProbeState, observe, reconcile, verdict

log = logging.getLogger(__name__)

TICK = 0.01  # probes due within this are started together
EXEC_DISABLED = "exec probes are disabled on this node (probe_exec = false)"
UNPROBED = PodStatus(False)
LIST_SHARE = 0.05  # listings take at most this share of a core: at 10k pods they come less often than `refresh`

class Prober:
    def __init__(self, registry: Registry, node_name: str, *, every_node: bool = False, max_concurrent: int = 200,
                 refresh: float = 5.0, run_check: Callable[[Pod, Probe], Awaitable[Result]] = check,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 metrics: ProbeMetrics | None = None, exec_probes: bool = True,
                 run_endpoint_check: Callable[[Probe, str, int], Awaitable[Result]] = probe_at) -> None:  # fmt: skip
        """Probe the pods whose ``nodeName`` is ``node_name`` (every probed pod when ``every_node``:
        the file registry serves one host). Without ``exec_probes`` an exec probe fails, never runs
        (the configuration's ``probe_exec = false``)."""
        self.exec_probes = exec_probes
        self.registry, self.node_name, self.every_node = registry, node_name, every_node
        self.max_concurrent, self.refresh = max_concurrent, refresh
        self._check, self._clock, self._rng = run_check, clock, rng or random.Random()
        self.metrics = metrics
        self.states: dict[ProbeKey, ProbeState] = {}
        self._pods: dict[Key, Pod] = {}
        self._verdicts: dict[Key, PodStatus] = {}  # each probed pod's, once probed (or resumed at start)
        self._written: dict[Key, PodStatus] = {}  # the verdicts the registry has taken
        self._pending: dict[Key, PodStatus] = {}  # verdicts to write, in the next batch
        self._writer: asyncio.Task | None = None
        self._resumed = False  # the stored statuses were read (first listing)
        self._due: list[tuple[float, ProbeKey]] = []  # a heap; an entry whose state moved on is skipped
        # for /status, read by other threads: replaced, never changed in place
        self.failing: dict[Key, str] = {}  # the probed pods not ready, with the reason
        self.counts = (0, 0)  # probed pods ready, not ready (as their verdicts say)
        self._list_cost = 0.0  # CPU seconds the last listing took
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        # explicit endpoints (every host probes them; nothing goes to the registry)
        self._endpoint_check = run_endpoint_check
        self._offered: tuple[int, list[Service]] = (0, [])  # set by the agent's thread
        self._taken = 0  # the offer the loop has reconciled
        self._targets: dict[EndpointKey, Target] = {}
        self.endpoint_states: dict[EndpointKey, ProbeState] = {}
        self._endpoint_due: list[tuple[float, EndpointKey]] = []  # a heap, as _due
        # for the agent's thread and /status: replaced, never changed in place
        self.endpoint_passing: dict[Key, frozenset[str]] = {}  # each probed Service's endpoints that pass
        self.endpoint_failing: dict[EndpointKey, str] = {}

    def mine(self, pod: Pod) -> bool:
        return bool(pod.readiness_probes) and (self.every_node or pod.node_name == self.node_name)

    def status(self) -> dict[str, object]:
        """What /status shows: the counts, and each not-ready pod with its reason; the same for the
        explicit endpoints this agent probes, when there are any."""
        ready, not_ready = self.counts
        out: dict[str, object] = {"node": "(every node)" if self.every_node else self.node_name, "ready": ready, "notReady": not_ready,
                                  "failing": {f"{ns}/{name}": reason or NOT_PROBED for (ns, name), reason in sorted(self.failing.items())}}  # fmt: skip
        states, failing = self.endpoint_states, self.endpoint_failing
        if states:
            out["endpoints"] = {"ready": len(states) - len(failing), "notReady": len(failing),
                                "failing": {f"{ns}/{name} {addr}": reason or NOT_PROBED
                                            for (ns, name, addr), reason in sorted(failing.items())}}  # fmt: skip
        return out

    def resume_endpoints(self, old: Prober) -> None:
        """Before :meth:`start`: go on from ``old``'s endpoint verdicts (a reload's new prober), so the
        endpoints do not leave their Services until its first probes."""
        self._targets, self.endpoint_states = dict(old._targets), dict(old.endpoint_states)
        self.endpoint_passing, self.endpoint_failing = old.endpoint_passing, old.endpoint_failing
        self._offered, self._taken = old._offered, old._taken

    def offer_services(self, services: list[Service]) -> None:
        """The selector-less Services with a readinessProbe, as the agent's registry view has them now
        (any thread; the prober takes them within a second)."""
        self._offered = (self._offered[0] + 1, list(services))

    def use_lease(self, lease: object) -> None:
        """Write the statuses on ``lease`` (etcd: the node lease the agent holds on its own registry
        client); all of them again at the next listing, since a new lease holds none."""
        attach = getattr(self.registry, "write_statuses_on", None)
        if attach is not None:
            attach(lease)
        self._written = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="svcdns-prober", daemon=True)
        self._thread.start()
        self._started.wait(5)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self.registry.close()  # the prober owns its registry client

    def _main(self) -> None:
        asyncio.run(self.run())

    async def run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        io = ThreadPoolExecutor(1, thread_name_prefix="svcdns-prober-registry")
        slots = asyncio.Semaphore(self.max_concurrent)
        running: dict[ProbeKey, asyncio.Task] = {}
        running_endpoints: dict[EndpointKey, asyncio.Task] = {}
        next_refresh, listing = 0.0, None
        self._endpoint_due = [(s.due, k) for k, s in self.endpoint_states.items()]  # resumed ones (a reload)
        heapq.heapify(self._endpoint_due)
        log.info("prober: probing the pods of node %s", "(every node: file registry)" if self.every_node else self.node_name)
        try:
            while not self._stop.is_set():
                now = self._clock()
                if listing is None and now >= next_refresh:  # in the background: probes go on meanwhile
                    listing = asyncio.create_task(self._list(io))
                if self._offered[0] != self._taken:
                    self._take_endpoints()
                if listing is not None and listing.done():
                    listing = None
                    next_refresh = self._clock() + max(self.refresh, self._list_cost / LIST_SHARE)
                # every probe due within the next tick starts now: one wake-up per tick, not per probe
                horizon = now + TICK
                while self._due and self._due[0][0] <= horizon:
                    due, key = heapq.heappop(self._due)
                    state = self.states.get(key)
                    if state is not None and state.due == due and key not in running:
                        task = asyncio.create_task(self._probe(key, state, slots, io))
                        running[key] = task
                        task.add_done_callback(functools.partial(_forget, running, key))
                while self._endpoint_due and self._endpoint_due[0][0] <= horizon:
                    due, ep_key = heapq.heappop(self._endpoint_due)
                    ep_state = self.endpoint_states.get(ep_key)
                    if ep_state is not None and ep_state.due == due and ep_key not in running_endpoints:
                        task = asyncio.create_task(self._probe_endpoint(ep_key, ep_state, slots))
                        running_endpoints[ep_key] = task
                        task.add_done_callback(functools.partial(_forget, running_endpoints, ep_key))
                wake = min(next_refresh if listing is None else now + TICK, self._due[0][0] if self._due else now + 1,
                           self._endpoint_due[0][0] if self._endpoint_due else now + 1)  # fmt: skip
                await asyncio.sleep(min(1.0, max(TICK, wake - self._clock())))
        finally:
            tasks = [*running.values(), *running_endpoints.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            io.shutdown(wait=True, cancel_futures=True)
            log.info("prober: stopped")

    async def _list(self, io: ThreadPoolExecutor) -> None:
        def timed() -> tuple[list[Pod], dict[Key, PodStatus] | None]:
            started = time.thread_time()
            try:
                pods = self.registry.list_pods()
                return pods, None if self._resumed else dict(self.registry.pod_statuses())
            finally:
                self._list_cost = time.thread_time() - started

        try:
            pods, stored = await asyncio.get_running_loop().run_in_executor(io, timed)
        except SvcdnsError as err:  # an outage: keep probing what we know, write when it is back
            log.warning("prober: cannot list the pods: %s", err)
            return
        mine = [p for p in pods if self.mine(p)]
        keys = {p.key for p in mine}
        if stored is not None:
            self._resumed = True
            self._verdicts = {k: s for k, s in stored.items() if k in keys}
        self._verdicts = {k: v for k, v in self._verdicts.items() if k in keys}
        resumed = {k: v.ready for k, v in self._verdicts.items()}
        self.states = reconcile(self.states, mine, self._clock(), self._rng.random, resumed)
        self._pods = {p.key: p for p in mine}
        self._due = [(s.due, k) for k, s in self.states.items()]
        heapq.heapify(self._due)
        self._published()
        verdicts = dict(self._verdicts)
        unwritten = {k for k, v in verdicts.items() if self._written.get(k) != v}  # on their way already

        def reconcile_statuses() -> set[Key]:
            pruned = self.registry.prune_pod_statuses(keys)
            if pruned:
                log.info("prober: %d statuses of pods no longer probed here deleted", pruned)
            return self.registry.set_pod_statuses(verdicts)

        try:
            fixed = await asyncio.get_running_loop().run_in_executor(io, reconcile_statuses)
        except SvcdnsError as err:
            log.warning("prober: cannot write the pods' statuses: %s", err)
            return
        if fixed - unwritten:
            log.info("prober: %d pod statuses written again (missing or changed behind the prober's back)", len(fixed - unwritten))
        self._written = verdicts

    async def _run(self, run: Callable[[], Awaitable[Result]], probe: Probe, what: str, bound: bool) -> tuple[float, Result]:
        """One check of a pod's or an endpoint's probe: when it started and its result, never an
        exception (a timeout, or a bug in a check, is a failing result with its reason); counted."""
        started = self._clock()
        try:
            if bound:
                async with asyncio.timeout(probe.timeout + 0.5):
                    result = await run()
            else:
                result = await run()
        except TimeoutError:
            result = Result(False, f"timeout after {probe.timeout} s", timed_out=True)
        except Exception as err:  # noqa: BLE001 - a bug in a check must not end this target's probing
            log.error("prober: %s: the %s probe failed unexpectedly", what, probe.kind, exc_info=True)
            result = Result(False, f"probe error: {type(err).__name__}")
        if self.metrics is not None:
            self.metrics.observe(probe.kind, result, self._clock() - started)
        return started, result

    async def _probe(self, key: ProbeKey, state: ProbeState, slots: asyncio.Semaphore, io: ThreadPoolExecutor) -> None:
        pod_key = (key[0], key[1])
        async with slots:
            pod = self._pods.get(pod_key)
            if pod is None:
                return
            if state.probe.kind == "exec" and not self.exec_probes:
                run: Callable[[], Awaitable[Result]] = functools.partial(_result, Result(False, EXEC_DISABLED))
            else:
                run = functools.partial(self._check, pod, state.probe)
            # every kind of check keeps its own timeout; one given by the caller may not: bound it
            started, result = await self._run(run, state.probe, f"pod {pod_key[0]}/{pod_key[1]}", bound=self._check is not check)
        if self.states.get(key) is not state:  # the pod left, or its probe changed, meanwhile
            return
        new = observe(state, result.ok, result.reason, started, self._rng.random())
        self.states[key] = new
        heapq.heappush(self._due, (new.due, key))
        ready, reason = verdict([self.states[(*pod_key, i)] for i in range(len(pod.readiness_probes))])
        last = self._verdicts.get(pod_key)
        # a reason goes with a not-ready verdict; "" (a probe that has not failed yet) keeps the last one
        status = PodStatus(ready, reason or (last.reason if last is not None and not ready else ""))
        if (status == last and self._written.get(pod_key) == status) or (last is None and status == UNPROBED):
            return  # nothing new (no verdict yet and no failure: as "not probed yet" says already)
        was_ready = last is not None and last.ready
        self._verdicts[pod_key] = status
        if status != last:
            self._published(pod_key)
            if ready:
                log.info("prober: pod %s/%s is ready", *pod_key)
            elif was_ready:
                log.warning("prober: pod %s/%s is not ready: %d probes failed, the last: %s", *pod_key, new.failures, status.reason)
            else:
                log.info("prober: pod %s/%s is not ready: %s", *pod_key, status.reason or NOT_PROBED)
        self._pending[pod_key] = status
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(io))

    async def _write(self, io: ThreadPoolExecutor) -> None:
        """Write the pending verdicts, in batches, until none is left."""
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                await asyncio.get_running_loop().run_in_executor(io, self.registry.set_pod_statuses, batch)
            except SvcdnsError as err:  # the next probe of each tries again
                log.warning("prober: cannot write %d pod statuses: %s", len(batch), err)
                return
            self._written.update(batch)

    def _published(self, changed: Key | None = None) -> None:
        """The verdicts as /status and the gauges show them (a pod not probed yet is not ready): all of
        them after a listing, else the one ``changed`` (a copy of the failing pods only when that pod
        is or was one)."""
        if changed is None:
            self.failing = {k: (v.reason if (v := self._verdicts.get(k)) else "") for k in self._pods
                            if k not in self._verdicts or not self._verdicts[k].ready}  # fmt: skip
        else:
            status = self._verdicts[changed]
            if not status.ready:
                self.failing = {**self.failing, changed: status.reason}
            elif changed in self.failing:
                self.failing = {k: v for k, v in self.failing.items() if k != changed}
        self.counts = (len(self._pods) - len(self.failing), len(self.failing))
        if self.metrics is not None:
            self.metrics.verdicts(*self.counts)


    # ---- explicit endpoints ----------------------------------------------------------------------------

    def _take_endpoints(self) -> None:
        version, services = self._offered
        self._taken = version
        targets = targets_of(services)
        self.endpoint_states = reconcile_targets(self.endpoint_states, self._targets, targets, self._clock(), self._rng.random)
        self._targets = targets
        self._endpoint_due = [(s.due, k) for k, s in self.endpoint_states.items()]
        heapq.heapify(self._endpoint_due)
        passing: dict[Key, set[str]] = {}
        for (ns, name, addr), state in self.endpoint_states.items():
            entry = passing.setdefault((ns, name), set())
            if state.ready:
                entry.add(addr)
        self.endpoint_failing = {k: s.reason for k, s in self.endpoint_states.items() if not s.ready}
        new = {k: frozenset(v) for k, v in passing.items()}
        if new != self.endpoint_passing:
            self.endpoint_passing = new
        self._published_endpoints()

    async def _probe_endpoint(self, key: EndpointKey, state: ProbeState, slots: asyncio.Semaphore) -> None:
        target = self._targets.get(key)
        if target is None:
            return
        async with slots:
            run = functools.partial(self._endpoint_check, target.probe, target.host, target.port)
            started, result = await self._run(run, target.probe, f"endpoint {key[2]} of {key[0]}/{key[1]}", bound=True)
        if self.endpoint_states.get(key) is not state:  # the endpoint left, or its probe changed, meanwhile
            return
        new = observe(state, result.ok, result.reason, started, self._rng.random())
        self.endpoint_states[key] = new
        heapq.heappush(self._endpoint_due, (new.due, key))
        ns, name, addr = key
        if new.ready != state.ready:
            passing = self.endpoint_passing.get((ns, name), frozenset())
            passing = passing | {addr} if new.ready else passing - {addr}
            self.endpoint_passing = {**self.endpoint_passing, (ns, name): passing}
            if new.ready:
                log.info("prober: endpoint %s of Service %s/%s is ready", addr, ns, name)
            else:
                log.warning("prober: endpoint %s of Service %s/%s is not ready: %d probes failed, the last: %s",
                            addr, ns, name, new.failures, new.reason)  # fmt: skip
        reason = "" if new.ready else new.reason or self.endpoint_failing.get(key, "")
        if new.ready and key in self.endpoint_failing:
            self.endpoint_failing = {k: v for k, v in self.endpoint_failing.items() if k != key}
        elif not new.ready and self.endpoint_failing.get(key) != reason:
            self.endpoint_failing = {**self.endpoint_failing, key: reason}
        else:
            return
        self._published_endpoints()

    def _published_endpoints(self) -> None:
        if self.metrics is not None:
            failing = len(self.endpoint_failing)
            self.metrics.endpoint_verdicts(len(self.endpoint_states) - failing, failing)


def _forget(running: dict, key: tuple, _task: asyncio.Task) -> None:
    running.pop(key, None)


async def _result(result: Result) -> Result:
    return result


__all__ = ["Prober"]
