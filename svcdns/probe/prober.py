"""The prober: one thread with an asyncio loop that runs the due readiness probes of this node's pods
and writes a pod's ``ready`` (every one of its probes passes) and ``reason`` through the registry
only when its verdict differs from the record: never per probe.

It lists the pods every ``refresh`` seconds, or less often when a listing costs more than
:data:`LIST_SHARE` of a core (a new pod is not ready until its first success anyway, so it loses
nothing but time by waiting for the next listing); probes go on while it lists. At most ``max_concurrent`` probes run at once;
a probe holds its slot for at most its ``timeoutSeconds``. Registry reads and writes run one at a
time, in order, on one worker thread, so a listing never undoes a write it raced with and a slow
registry never delays a probe.
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
from dataclasses import replace

from ..errors import NotFound, SvcdnsError
from ..pod import Pod, Probe
from ..registry.contract import Registry
from .checks import check
from .metrics import ProbeMetrics
from .result import Result
from .state import Key, ProbeKey, ProbeState, observe, reconcile, verdict

log = logging.getLogger(__name__)

TICK = 0.01  # probes due within this are started together
LIST_SHARE = 0.05  # listings take at most this share of a core: at 10k pods they come less often than `refresh`

class Prober:
    def __init__(self, registry: Registry, node_name: str, *, every_node: bool = False, max_concurrent: int = 200,
                 refresh: float = 5.0, run_check: Callable[[Pod, Probe], Awaitable[Result]] = check,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 metrics: ProbeMetrics | None = None) -> None:  # fmt: skip
        """Probe the pods whose ``nodeName`` is ``node_name`` (every probed pod when ``every_node``:
        the file registry serves one host)."""
        self.registry, self.node_name, self.every_node = registry, node_name, every_node
        self.max_concurrent, self.refresh = max_concurrent, refresh
        self._check, self._clock, self._rng = run_check, clock, rng or random.Random()
        self.metrics = metrics
        self.states: dict[ProbeKey, ProbeState] = {}
        self._pods: dict[Key, Pod] = {}
        self._recorded: dict[Key, tuple[bool, str]] = {}  # (ready, reason) each record holds, as last read or written
        self._writing: set[Key] = set()
        self._due: list[tuple[float, ProbeKey]] = []  # a heap; an entry whose state moved on is skipped
        # for /status, read by other threads: replaced, never changed in place
        self.failing: dict[Key, str] = {}  # the pods whose record says not ready, with the reason
        self.counts = (0, 0)  # probed pods ready, not ready (as recorded)
        self._list_cost = 0.0  # CPU seconds the last listing took
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()

    def mine(self, pod: Pod) -> bool:
        return bool(pod.readiness_probes) and (self.every_node or pod.node_name == self.node_name)

    def status(self) -> dict[str, object]:
        """What /status shows: the counts, and each not-ready pod with its reason."""
        ready, not_ready = self.counts
        return {"node": "(every node)" if self.every_node else self.node_name, "ready": ready, "notReady": not_ready,
                "failing": {f"{ns}/{name}": reason or "not probed yet" for (ns, name), reason in sorted(self.failing.items())}}  # fmt: skip

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
        next_refresh, listing = 0.0, None
        log.info("prober: probing the pods of node %s", "(every node: file registry)" if self.every_node else self.node_name)
        try:
            while not self._stop.is_set():
                now = self._clock()
                if listing is None and now >= next_refresh:  # in the background: probes go on meanwhile
                    listing = asyncio.create_task(self._list(io))
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
                wake = min(next_refresh if listing is None else now + TICK, self._due[0][0] if self._due else now + 1)
                await asyncio.sleep(min(1.0, max(TICK, wake - self._clock())))
        finally:
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)
            io.shutdown(wait=True, cancel_futures=True)
            log.info("prober: stopped")

    async def _list(self, io: ThreadPoolExecutor) -> None:
        def timed() -> list[Pod]:
            started = time.thread_time()
            try:
                return self.registry.list_pods()
            finally:
                self._list_cost = time.thread_time() - started

        try:
            pods = await asyncio.get_running_loop().run_in_executor(io, timed)
        except SvcdnsError as err:  # an outage: keep probing what we know, write when it is back
            log.warning("prober: cannot list the pods: %s", err)
            return
        mine = [p for p in pods if self.mine(p)]
        self.states = reconcile(self.states, mine, self._clock(), self._rng.random)
        self._pods = {p.key: p for p in mine}
        self._recorded = {p.key: (p.ready, p.reason) for p in mine}
        self._due = [(s.due, k) for k, s in self.states.items()]
        heapq.heapify(self._due)
        self._published()

    async def _probe(self, key: ProbeKey, state: ProbeState, slots: asyncio.Semaphore, io: ThreadPoolExecutor) -> None:
        pod_key = (key[0], key[1])
        async with slots:
            pod = self._pods.get(pod_key)
            if pod is None:
                return
            started = self._clock()
            try:
                if self._check is check:  # every kind keeps its own timeout
                    result = await check(pod, state.probe)
                else:  # one given by the caller may not: bound it
                    async with asyncio.timeout(state.probe.timeout + 0.5):
                        result = await self._check(pod, state.probe)
            except TimeoutError:
                result = Result(False, f"timeout after {state.probe.timeout} s", timed_out=True)
            except Exception as err:  # noqa: BLE001 - a bug in a check must not end this pod's probing
                log.error("prober: pod %s/%s: the %s probe failed unexpectedly", *pod_key, state.probe.kind, exc_info=True)
                result = Result(False, f"probe error: {type(err).__name__}")
            if self.metrics is not None:
                self.metrics.observe(state.probe.kind, result, self._clock() - started)
        if self.states.get(key) is not state:  # the pod left, or its probe changed, meanwhile
            return
        new = observe(state, result.ok, result.reason, started, self._rng.random())
        self.states[key] = new
        heapq.heappush(self._due, (new.due, key))
        ready, reason = verdict([self.states[(*pod_key, i)] for i in range(len(pod.readiness_probes))])
        recorded_ready, recorded_reason = self._recorded.get(pod_key, (not ready, ""))
        # a reason is recorded with a not-ready verdict; "" (a probe that has not failed yet) keeps the last one
        if (ready == recorded_ready and (ready or not reason or reason == recorded_reason)) or pod_key in self._writing:
            return
        self._writing.add(pod_key)
        try:
            await self._write(pod_key, ready, reason or recorded_reason, new.failures, io)
        finally:
            self._writing.discard(pod_key)

    async def _write(self, key: Key, ready: bool, reason: str, failures: int, io: ThreadPoolExecutor) -> None:
        reason = "" if ready else reason

        def write() -> None:
            self.registry.update_pod(*key, lambda p: replace(p, ready=ready, reason=reason))

        try:
            await asyncio.get_running_loop().run_in_executor(io, write)
        except NotFound:
            return
        except SvcdnsError as err:
            log.warning("prober: pod %s/%s: cannot record it %s: %s", *key, "ready" if ready else "not ready", err)
            return
        was_ready = self._recorded.get(key, (False, ""))[0]
        self._recorded[key] = (ready, reason)
        self._published(key)
        if ready:
            log.info("prober: pod %s/%s is ready", *key)
        elif was_ready:
            log.warning("prober: pod %s/%s is not ready: %d probes failed, the last: %s", *key, failures, reason)
        else:
            log.info("prober: pod %s/%s is not ready: %s", *key, reason)

    def _published(self, changed: Key | None = None) -> None:
        """The recorded verdicts as /status and the gauges show them: all of them after a listing,
        else the one ``changed`` (a copy of the failing pods only when that pod is or was one)."""
        if changed is None:
            self.failing = {k: reason for k, (ready, reason) in self._recorded.items() if not ready}
        else:
            ready, reason = self._recorded[changed]
            if not ready:
                self.failing = {**self.failing, changed: reason}
            elif changed in self.failing:
                self.failing = {k: v for k, v in self.failing.items() if k != changed}
        self.counts = (len(self._recorded) - len(self.failing), len(self.failing))
        if self.metrics is not None:
            self.metrics.verdicts(*self.counts)


def _forget(running: dict[ProbeKey, asyncio.Task], key: ProbeKey, _task: asyncio.Task) -> None:
    running.pop(key, None)


__all__ = ["Prober"]
