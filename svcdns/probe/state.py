"""The readiness probe state machine, as the kubelet's prober worker runs it (pure: no clock, no I/O).

A probed pod is not ready until its first success (``successThreshold`` consecutive ones); once ready
it stays so until ``failureThreshold`` consecutive failures. Probes run every ``periodSeconds``,
measured from the start of one to the start of the next, so a slow probe does not stretch the
period. Each pod's first probe falls at a random point of its first period (after
``initialDelaySeconds``), and every interval is shortened by a random part of :data:`JITTER`, so
10k pods never probe in the same second (Envoy's ``interval_jitter``, HAProxy's ``spread-checks``).
The jitter only shortens: a pod whose server dies leaves within ``failureThreshold x periodSeconds
+ timeoutSeconds``, the bound the README promises.

A pod with several probes (one per container) has one state per probe, keyed ``(namespace, name,
index)``; it is ready when every one is (:func:`verdict`), as in Kubernetes.

Times are the caller's monotonic seconds; the random draws come in as numbers in [0, 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..pod import Pod, Probe

JITTER = 0.05  # an interval is period x (1 - JITTER x draw)

Key = tuple[str, str]  # a pod's
ProbeKey = tuple[str, str, int]  # one of its probes: (namespace, name, index in readiness_probes)


@dataclass(frozen=True, slots=True)
class ProbeState:
    probe: Probe
    due: float  # when the next probe starts
    ready: bool = False
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    reason: str = ""  # why the last probe failed; "" after a success


def first(probe: Probe, now: float, spread: float, ready: bool = False) -> ProbeState:
    """A pod's state when its prober first sees it: its first probe ``spread`` (in [0, 1)) of the way
    into its first period, after the initial delay. ``ready`` carries the verdict its status holds
    (an agent that restarts resumes it instead of taking every pod out of its Services)."""
    return ProbeState(probe=probe, due=now + probe.initial_delay + spread * probe.period, ready=ready)


def observe(state: ProbeState, ok: bool, reason: str, started: float, jitter: float) -> ProbeState:
    """The state after a probe that started at ``started`` passed (``ok``) or failed with ``reason``."""
    probe = state.probe
    due = started + probe.period * (1 - JITTER * jitter)
    # constructed, not dataclasses.replace(): this runs for every probe (1,000 a second at 10k pods)
    if ok:
        successes = state.successes + 1
        return ProbeState(probe, due, state.ready or successes >= probe.success_threshold, successes, 0, "")
    failures = state.failures + 1
    return ProbeState(probe, due, state.ready and failures < probe.failure_threshold, 0, failures, reason)


def reconcile(
    states: Mapping[ProbeKey, ProbeState], pods: Iterable[Pod], now: float, draw: Callable[[], float],
    resumed: Mapping[Key, bool] | None = None,
) -> dict[ProbeKey, ProbeState]:
    """The states for ``pods`` (those to probe): a new probe starts as :func:`first` (ready if
    ``resumed`` says so: the status found at start), a probe that changed starts again keeping its
    verdict, a gone one is forgotten."""
    resumed = resumed or {}
    out: dict[ProbeKey, ProbeState] = {}
    for pod in pods:
        for i, probe in enumerate(pod.readiness_probes):
            key = (pod.namespace, pod.name, i)
            old = states.get(key)
            if old is not None and old.probe == probe:
                out[key] = old
            else:
                out[key] = first(probe, now, draw(), ready=old.ready if old is not None else resumed.get(pod.key, False))
    return out


def verdict(states: Sequence[ProbeState]) -> tuple[bool, str]:
    """A pod's readiness from its probes' states, and why not: the first failing probe's reason,
    naming its container when the pod has several probes."""
    for state in states:
        if not state.ready:
            reason = state.reason
            if reason and len(states) > 1 and state.probe.container:
                reason = f"container {state.probe.container}: {reason}"
            return False, reason
    return True, ""


__all__ = ["JITTER", "Key", "ProbeKey", "ProbeState", "first", "observe", "reconcile", "verdict"]
