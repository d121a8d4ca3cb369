"""The prober's Prometheus figures, on the agent's registry: made once per agent (a reload's new
prober takes the same ones, so the counters go on).

Names are svcdns's (``svcdns_probes_total``), not the kubelet's ``prober_probe_total``: every other
figure of the agent is ``svcdns_*``, and the kubelet's carries pod and container labels, one series
per pod (10k pods, 10k series); these are labelled by probe kind and result alone.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .result import Result

PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ProbeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.probes = Counter("svcdns_probes", "Readiness probes run by this agent, by kind and result "
                              "(success, failure, timeout)", ["kind", "result"], registry=r)  # fmt: skip
        self.duration = Histogram("svcdns_probe_duration_seconds", "Time one readiness probe took", ["kind"],
                                  buckets=PROBE_BUCKETS, registry=r)  # fmt: skip
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.pods = Gauge("svcdns_probed_pods", "Pods this agent probes, by their verdict", ["ready"], registry=r)
        self.endpoints = Gauge("svcdns_probed_endpoints", "Explicit endpoints of selector-less Services this agent "
                               "probes, by its own verdict", ["ready"], registry=r)  # fmt: skip

    def observe(self, kind: str, result: Result, seconds: float) -> None:
        outcome = "success" if result.ok else "timeout" if result.timed_out else "failure"
        children = self._children.get((kind, outcome))
        if children is None:  # labels() takes a lock and builds a key: once per kind and outcome
            children = self._children[(kind, outcome)] = (self.probes.labels(kind, outcome), self.duration.labels(kind))
        children[0].inc()
        children[1].observe(seconds)

    def verdicts(self, ready: int, not_ready: int) -> None:
        self.pods.labels("true").set(ready)
        self.pods.labels("false").set(not_ready)

    def endpoint_verdicts(self, ready: int, not_ready: int) -> None:
        self.endpoints.labels("true").set(ready)
        self.endpoints.labels("false").set(not_ready)


__all__ = ["ProbeMetrics"]
