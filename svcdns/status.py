"""The agent's local HTTP endpoint: /healthz, /readyz, /metrics (Prometheus) and /status (JSON).

/healthz answers 200 while the last sync succeeded and no change has waited longer than the health
timeout, 503 otherwise (kube-proxy's rule), with a small JSON body saying why. /readyz answers 200
once the first sync is done and DNS is up. /status is what `svcdns status` prints.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

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
    health_timeout: float = 60.0

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
        if dns_stats is not None:
            r.register(_DNSCollector(dns_stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DNSCollector:
    """DNS figures come from the worker processes through DNSServer.stats() at scrape time."""

    def __init__(self, stats) -> None:
        self.stats = stats

    def collect(self):
        try:
            s = self.stats()
        except Exception:  # noqa: BLE001 - a scrape must not fail because a worker is restarting
            return
        queries = CounterMetricFamily("svcdns_dns_queries", "DNS queries answered, by rcode", labels=["rcode"])
        for rcode, n in sorted(s.get("queries", {}).items()):
            queries.add_metric([rcode], n)
        yield queries
        buckets, acc = [], 0
        for bound, n in sorted(((b, n) for b, n in s.get("duration_buckets", {}).items() if b != "+Inf")):
            acc += n
            buckets.append((str(bound), acc))
        buckets.append(("+Inf", acc + s.get("duration_buckets", {}).get("+Inf", 0)))
        hist = HistogramMetricFamily("svcdns_dns_request_duration_seconds",
                                     "Time to answer a DNS query (an answer sent in a UDP batch counts the "
                                     "whole batch's time)")  # fmt: skip
        hist.add_metric([], buckets, s.get("duration_sum", 0.0))
        yield hist
        restarts = CounterMetricFamily("svcdns_dns_worker_restarts", "DNS worker processes that died and were replaced")
        restarts.add_metric([], s.get("worker_restarts", 0))
        yield restarts


class StatusServer:
    def __init__(self, listen: tuple[str, int], state: State, metrics: Metrics) -> None:
        self.state, self.metrics = state, metrics
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                outer.handle(self)

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
                f"health_listen {format_hostport(host, port)}: cannot listen: {err.strerror or err} "
                "(another agent running? choose another address with --health-listen)"
            ) from None
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="svcdns-status", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?")[0]
        st = self.state
        if path == "/healthz":
            ok, why = st.healthy()
            body = {"healthy": ok, "reason": why, "lastUpdated": _iso(st.last_sync), "currentTime": _iso(time.time()),
                    "registry": {"location": st.registry, "up": st.registry_problem is None, "problem": st.registry_problem},
                    "dns": {"up": st.dns_problem is None, "problem": st.dns_problem}}  # fmt: skip
            self.reply(req, 200 if ok else 503, json.dumps(body).encode(), "application/json")
        elif path == "/readyz":
            self.reply(req, 200 if st.ready else 503, b"ok\n" if st.ready else b"not ready\n", "text/plain")
        elif path == "/metrics":
            self.reply(req, 200, self.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/status":
            body = {"services": st.services, "endpoints": st.endpoints, "revision": st.revision,
                    "lastSync": _iso(st.last_sync), "lastError": st.last_error, "ready": st.ready,
                    "registry": st.registry, "registryProblem": st.registry_problem, "dnsProblem": st.dns_problem,
                    "invalidEntries": st.bad_entries, "healthy": st.healthy()[0], "startedAt": _iso(st.started)}  # fmt: skip
            self.reply(req, 200, json.dumps(body, indent=2).encode(), "application/json")
        else:
            self.reply(req, 404, b"not found: try /healthz, /readyz, /metrics or /status\n", "text/plain")

    @staticmethod
    def reply(req: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)


def _iso(ts: float) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None
