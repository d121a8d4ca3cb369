"""The agent's local HTTP endpoint: /healthz, /livez, /readyz, /metrics (Prometheus) and /status (JSON).

/healthz answers 200 while the last sync succeeded and no change has waited longer than the health
timeout, 503 otherwise (kube-proxy's rule), with a small JSON body saying why. /livez answers 200
while the agent's loop turns (it ran within the health timeout), whatever the registry or the
kernel say: a liveness probe restarts a stuck agent, not one waiting out an etcd outage. /readyz
answers 200 once the first sync is done and DNS is up. What stops VIPs from working on the node
(forwarding off, bridged pods without what they need) is listed in /healthz under ``vips.problems``
without failing it, as kube-proxy does: the agent works, and restarting it would not change a sysctl. /status is what `svcdns status` prints.
Every path answers HEAD too (the same status and headers, no body). With ``metrics_listen``,
/metrics moves to a listener of its own that serves nothing else, so Prometheus can scrape from
outside without /status (the registry, the errors) becoming public.

Metric names follow the anchors: kube-proxy's (``..._sync_last_timestamp_seconds``,
``..._sync_pending_changes``, ``..._build_info``) and, for DNS, CoreDNS's (requests by protocol and
type, responses by rcode, durations by type, forwarding by upstream, cache hits and misses).
"""

from __future__ import annotations

import json
import platform
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import __version__
from .addr import format_hostport
from .errors import SvcdnsError

SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class State:
    """What the agent knows about itself; written by the agent loop, read by the HTTP threads."""

    started: float = field(default_factory=time.time)
    ready: bool = False
    last_sync: float = 0.0  # time of the last successful sync
    last_error: str = ""
    pending_since: float = 0.0  # when the oldest unapplied change was seen (0: none)
    services: int = 0
    endpoints: int = 0
    revision: int = 0
    registry: str = ""
    registry_problem: str | None = None
    dns_problem: str | None = None
    bad_entries: dict[str, str] = field(default_factory=dict)
    vip_problems: list[str] = field(default_factory=list)  # what stops VIPs from working on this node
    health_timeout: float = 60.0
    loop_turned: float = field(default_factory=time.monotonic)  # the agent loop's last turn (monotonic)
    probes: Callable[[], dict[str, Any]] | None = None  # the prober's view: counts, failing pods and why
    nodes: dict[str, bool] = field(default_factory=dict)  # etcd: node -> its lease is alive

    def healthy(self, now: float | None = None) -> tuple[bool, str]:
        now = now or time.time()
        if not self.ready:
            return False, "the first sync has not completed"
        if self.dns_problem:
            return False, f"DNS is down or degraded: {self.dns_problem}"
        if self.pending_since and now - self.pending_since > self.health_timeout:
            return (
                False,
                f"a change has waited {now - self.pending_since:.0f}s to be applied: {self.last_error or 'syncing'}",
            )
        return True, "ok"

    def alive(self, now: float | None = None) -> tuple[bool, str]:
        """The loop turned within the health timeout (it turns at least every half second)."""
        idle = (now or time.monotonic()) - self.loop_turned
        if idle > self.health_timeout:
            return False, f"the agent's loop has not turned for {idle:.0f}s (stuck in a sync?)"
        return True, "ok"


class Metrics:
    def __init__(self, dns_stats=None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sync_duration = Histogram("svcdns_sync_duration_seconds", "Time to program one sync into the kernel",
                                        ["kind"], buckets=SYNC_BUCKETS, registry=r)  # fmt: skip
        self.programming = Histogram("svcdns_network_programming_duration_seconds",
                                     "From a registry change seen to its rules in the kernel and its DNS answers",
                                     buckets=SYNC_BUCKETS, registry=r)  # fmt: skip
        self.sync_errors = Counter("svcdns_sync_errors_total", "Syncs the kernel refused", registry=r)
        self.services = Gauge("svcdns_services", "Services in the table", registry=r)
        self.endpoints = Gauge("svcdns_endpoints", "Endpoints in the table", registry=r)
        self.rules = Gauge("svcdns_sync_messages", "Netlink messages the last sync wrote", registry=r)
        self.registry_up = Gauge("svcdns_registry_up", "1 while the registry can be read", registry=r)
        self.bad_entries = Gauge("svcdns_registry_invalid_entries", "Registry entries rejected as invalid", registry=r)
        build = Gauge("svcdns_build_info", "1, labelled with svcdns's version and Python's", ["version", "python"],
                      registry=r)  # fmt: skip
        build.labels(__version__, platform.python_version()).set(1)
        self.nodes = Gauge("svcdns_nodes", "Nodes run by an agent (etcd), by the state of their lease", ["state"],
                           registry=r)  # fmt: skip
        self.node_lease = Gauge("svcdns_node_lease_remaining_seconds",
                                "Seconds this node's lease has left at least (0: none held; etcd only)", registry=r)
        if dns_stats is not None:
            r.register(_DNSCollector(dns_stats))

    def follow(self, state: State, pending: Callable[[], int]) -> None:
        """Figures read from the agent at scrape time: its last sync, and ``pending()`` Services
        changed in the registry and not yet applied (kube-proxy's ..._changes_pending)."""
        self.registry.register(_AgentCollector(state, pending))

    def set_nodes(self, nodes: dict[str, bool]) -> None:
        ready = sum(nodes.values())
        self.nodes.labels("ready").set(ready)
        self.nodes.labels("not_ready").set(len(nodes) - ready)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AgentCollector:
    def __init__(self, state: State, pending: Callable[[], int]) -> None:
        self.state, self.pending = state, pending

    def collect(self):
        last = GaugeMetricFamily("svcdns_sync_last_timestamp_seconds",
                                 "When the last successful sync ended (Unix time; 0: none yet)")  # fmt: skip
        last.add_metric([], self.state.last_sync)
        yield last
        pending = GaugeMetricFamily("svcdns_sync_pending_changes", "Services changed in the registry, not yet applied")
        pending.add_metric([], self.pending())
        yield pending


class _DNSCollector:
    """DNS figures come from the worker processes through DNSServer.stats() at scrape time."""

    def __init__(self, stats) -> None:
        self.stats = stats

    def collect(self):
        try:
            s = self.stats()
        except Exception:  # noqa: BLE001 - a scrape must not fail because a worker is restarting
            return
        requests = CounterMetricFamily("svcdns_dns_requests", "DNS requests, by transport and query type",
                                       labels=["proto", "type"])  # fmt: skip
        for (proto, qtype), n in sorted(s.get("requests", {}).items()):
            requests.add_metric([proto, qtype], n)
        yield requests
        responses = CounterMetricFamily("svcdns_dns_responses", "DNS responses, by rcode", labels=["rcode"])
        for rcode, n in sorted(s.get("queries", {}).items()):
            responses.add_metric([rcode], n)
        yield responses
        yield _histogram("svcdns_dns_request_duration_seconds", "Time to answer a DNS request, by query type "
                         "(an answer sent in a UDP batch counts the whole batch's time)", "type",
                         s.get("duration_buckets", {}), s.get("duration_sums", {}))  # fmt: skip
        forwards = CounterMetricFamily("svcdns_dns_forward_requests", "Requests sent to each upstream", labels=["to"])
        for to, n in sorted(s.get("forward_requests", {}).items()):
            forwards.add_metric([to], n)
        yield forwards
        answers = CounterMetricFamily("svcdns_dns_forward_responses", "Responses from each upstream, by rcode",
                                      labels=["to", "rcode"])  # fmt: skip
        for (to, rcode), n in sorted(s.get("forward_responses", {}).items()):
            answers.add_metric([to, rcode], n)
        yield answers
        yield _histogram("svcdns_dns_forward_request_duration_seconds", "Time each upstream took to answer", "to",
                         s.get("forward_buckets", {}), s.get("forward_sums", {}))  # fmt: skip
        hits = CounterMetricFamily("svcdns_dns_cache_hits", "Answers from a cache: the workers' answers to in-zone "
                                   "queries (answers), upstream answers within their TTL (forward)",
                                   labels=["cache"])  # fmt: skip
        misses = CounterMetricFamily("svcdns_dns_cache_misses", "Requests a cache could not answer", labels=["cache"])
        for cache, prefix in (("answers", ""), ("forward", "forward_")):
            hits.add_metric([cache], s.get(f"{prefix}cache_hits", 0))
            misses.add_metric([cache], s.get(f"{prefix}cache_misses", 0))
        yield hits
        yield misses
        restarts = CounterMetricFamily("svcdns_dns_worker_restarts", "DNS worker processes that died and were replaced")
        restarts.add_metric([], s.get("worker_restarts", 0))
        yield restarts


class StatusServer:
    """``metrics_only``: the metrics listener (only /metrics); ``metrics_elsewhere``: the health
    listener when /metrics has its own (named in the 404)."""

    def __init__(self, listen: tuple[str, int], state: State, metrics: Metrics, *, metrics_only: bool = False,
                 metrics_elsewhere: str = "") -> None:  # fmt: skip
        self.state, self.metrics = state, metrics
        self.metrics_only, self.metrics_elsewhere = metrics_only, metrics_elsewhere
        self.key = "metrics_listen" if metrics_only else "health_listen"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                outer.handle(self)

            def do_HEAD(self) -> None:  # noqa: N802 - the http.server API
                outer.handle(self, head=True)

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
            daemon_threads = True
            allow_reuse_address = True

        self.listen = listen
        self._server_class, self._handler = Server, Handler
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; a port that is taken is a SvcdnsError naming the address."""
        host, port = self.listen
        try:
            self.httpd = self._server_class(self.listen, self._handler)
        except OSError as err:
            raise SvcdnsError(
                f"{self.key} {format_hostport(host, port)}: cannot listen: {err.strerror or err} "
                f"(another agent running? choose another address with --{self.key.replace('_', '-')})"
            ) from None
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="svcdns-status", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def handle(self, req: BaseHTTPRequestHandler, head: bool = False) -> None:
        path = req.path.split("?")[0]
        st = self.state

        def reply(code: int, body: bytes, ctype: str) -> None:
            self.reply(req, code, body, ctype, head)

        if self.metrics_only:
            if path == "/metrics":
                reply(200, self.metrics.render(), CONTENT_TYPE_LATEST)
            else:
                reply(404, b"not found: only /metrics is served here (health and status: health_listen)\n",
                      "text/plain")  # fmt: skip
        elif path == "/healthz":
            ok, why = st.healthy()
            body = {"healthy": ok, "reason": why, "lastUpdated": _iso(st.last_sync), "currentTime": _iso(time.time()),
                    "registry": {"location": st.registry, "up": st.registry_problem is None, "problem": st.registry_problem},
                    "dns": {"up": st.dns_problem is None, "problem": st.dns_problem},
                    "vips": {"problems": st.vip_problems}}  # fmt: skip
            reply(200 if ok else 503, json.dumps(body).encode(), "application/json")
        elif path == "/livez":
            ok, why = st.alive()
            reply(200 if ok else 503, f"{why}\n".encode(), "text/plain")
        elif path == "/readyz":
            reply(200 if st.ready else 503, b"ok\n" if st.ready else b"not ready\n", "text/plain")
        elif path == "/metrics" and self.metrics_elsewhere:
            reply(404, f"not found: /metrics is served on {self.metrics_elsewhere} (metrics_listen)\n".encode(),
                  "text/plain")  # fmt: skip
        elif path == "/metrics":
            reply(200, self.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/status":
            body = {"services": st.services, "endpoints": st.endpoints, "revision": st.revision,
                    "lastSync": _iso(st.last_sync), "lastError": st.last_error, "ready": st.ready,
                    "registry": st.registry, "registryProblem": st.registry_problem, "dnsProblem": st.dns_problem,
                    "invalidEntries": st.bad_entries, "vipProblems": st.vip_problems, "healthy": st.healthy()[0],
                    "startedAt": _iso(st.started),
                    "nodes": {n: "Ready" if up else "NotReady" for n, up in sorted(st.nodes.items())}}  # fmt: skip
            if st.probes is not None:
                body["probes"] = st.probes()
            reply(200, json.dumps(body, indent=2).encode(), "application/json")
        else:
            reply(404, b"not found: try /healthz, /livez, /readyz, /metrics or /status\n", "text/plain")

    @staticmethod
    def reply(req: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str, head: bool = False) -> None:
        """The answer; for HEAD, its status and headers (Content-Length included) without the body."""
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if not head:
            req.wfile.write(body)


def _histogram(name: str, doc: str, label: str, buckets: dict, sums: dict) -> HistogramMetricFamily:
    """A histogram family with one series per ``label`` value from ``{(value, bound): n}`` counts
    (bound ``"+Inf"`` for the last) and ``{value: seconds}`` sums."""
    hist = HistogramMetricFamily(name, doc, labels=[label])
    per: dict[str, dict] = {}
    for (value, bound), n in buckets.items():
        per.setdefault(value, {})[bound] = n
    for value in sorted(per):
        counts, acc, cumulative = per[value], 0, []
        for bound in sorted(b for b in counts if b != "+Inf"):
            acc += counts[bound]
            cumulative.append((str(bound), acc))
        cumulative.append(("+Inf", acc + counts.get("+Inf", 0)))
        hist.add_metric([value], cumulative, sums.get(value, 0.0))
    return hist


def _iso(ts: float) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None
