"""``svcdns agent`` and ``svcdns status``."""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..addr import format_hostport, parse_hostport
from ..dns.contract import DNS
from ..errors import SvcdnsError
from ..registry.contract import Registry, Watch
from . import config as configuration
from .lock import AgentLock
from .zonecache import ZoneCache, cache_path, registry_key

if TYPE_CHECKING:  # the module itself is imported where it is used: it is heavy (multiprocessing, dnslib)
    from ..dns.server import DNSServer
    from ..dns.sockets import SocketStore
    from ..probe import Prober
    from ..probe.metrics import ProbeMetrics
    from ..registry.etcd.lease import NodeLease
    from ..table import ServiceTable

log = logging.getLogger(__name__)


def register(sub, common) -> None:
    agent = sub.add_parser("agent", parents=[common], help="run the agent: registry -> rules -> DNS")
    agent.add_argument("--config", help=f"TOML settings (default: {configuration.DEFAULT_CONFIG} if present)")
    agent.add_argument("--dns-listen", action="append", metavar="ADDR:PORT", help="repeatable (default 127.0.0.1:53)")
    agent.add_argument("--health-listen", metavar="ADDR:PORT", help="health/metrics (default 127.0.0.1:10256)")
    agent.add_argument("--metrics-listen", metavar="ADDR:PORT", help="serve /metrics here, and only there")
    agent.add_argument("--password-file", metavar="FILE", help="etcd's password (mode 0600), not in the URL")
    agent.add_argument("--dataplane", choices=("nftables", "iptables"))
    agent.add_argument("--service-cidr", action="append", metavar="CIDR", help="repeatable (default 10.96.0.0/12)")
    agent.add_argument(
        "--pod-cidr", action="append", metavar="CIDR", help="pod networks (their DNS clients may recurse)"
    )
    agent.add_argument("--zone", help="cluster zone (default cluster.local)")
    agent.add_argument("--node-name", help="this node's name: the agent probes its pods (default: the host name)")
    agent.add_argument("--node-lease-ttl", type=int, metavar="SECONDS",
                       help="etcd: this node's lease TTL; its pods stay ready this long after the agent dies (default 15)")
    agent.add_argument("--no-probe-exec", action="store_true", default=None,
                       help="exec readiness probes fail on this node instead of running (probe_exec = false)")
    agent.add_argument("--dns-workers", type=int, metavar="N", help="DNS worker processes (default: one per core)")
    agent.add_argument("--no-forward", action="store_true", default=None, help="REFUSED for names outside the zone")
    agent.set_defaults(func=cmd_agent)

    status = sub.add_parser("status", parents=[common], help="what the running agent sees")
    status.add_argument("--config", help=f"the agent's settings (default: {configuration.DEFAULT_CONFIG} if present)")
    status.add_argument("--health-listen", metavar="ADDR:PORT",
                        help="the agent's health address (default: as the agent reads its configuration)")  # fmt: skip
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(func=cmd_status)


def load_config(args) -> configuration.Config:
    flags = {
        "registry": args.registry,
        "service_cidrs": args.service_cidr,
        "pod_cidrs": args.pod_cidr,
        "cluster_zone": args.zone,
        "node_name": args.node_name,
        "node_lease_ttl": args.node_lease_ttl,
        "dataplane": args.dataplane,
        "health_listen": args.health_listen,
        "metrics_listen": args.metrics_listen,
        "password_file": args.password_file,
        "dns.listen": args.dns_listen,
        "dns.workers": args.dns_workers,
        "dns.forward": False if args.no_forward else None,
        "probe_exec": False if getattr(args, "no_probe_exec", None) else None,
    }
    return configuration.load(args.config, flags)


# config fields whose change needs new DNS sockets and workers; new answering settings (taken by the
# running workers); a new registry watch
DNS_SOCKET_FIELDS = ("dns_listen", "dns_workers", "cluster_dns", "cluster_dns_interface")
DNS_ANSWER_FIELDS = ("cluster_zone", "dns_upstreams", "dns_allowed_networks", "dns_forward", "dns_ttl",
                     "service_cidrs", "pod_cidrs", "cluster_dns")  # fmt: skip
REGISTRY_FIELDS = ("registry", "registry_password", "service_cidrs")
PROBER_FIELDS = ("registry", "registry_password", "node_name", "probe_exec")
SECRET_FIELDS = ("registry", "registry_password")  # a reload's log names them, never shows them
LEASE_FIELDS = (*REGISTRY_FIELDS, "node_name", "node_lease_ttl")


def dns_answering(cfg: configuration.Config) -> dict[str, Any]:
    return {"zone": cfg.cluster_zone, "ttl": cfg.dns_ttl, "upstreams": list(cfg.dns_upstreams) or None,
            "allowed_networks": cfg.allowed_networks(), "forward": cfg.dns_forward,
            "cluster_dns": cfg.cluster_dns}  # fmt: skip


def new_dns(cfg: configuration.Config, store: SocketStore | None = None,
            on_update: Callable[[ServiceTable], None] | None = None) -> DNSServer:  # fmt: skip
    from ..dns.server import DNSServer  # heavy (multiprocessing, dnslib): only where it is used

    managed = (cfg.cluster_dns,) if cfg.cluster_dns_interface and cfg.cluster_dns else ()  # start_dns puts it there
    return DNSServer([parse_hostport(a, "dns.listen") for a in cfg.dns_listen_all()], store=store, freebind=managed,
                     on_update=on_update, workers=cfg.dns_workers or None, **dns_answering(cfg))  # fmt: skip


def new_zone_cache(cfg: configuration.Config) -> ZoneCache | None:
    """Where the last known zone is kept for ``cfg``'s registry (None: nowhere, etcd outside systemd)."""
    path = cache_path(cfg.registry)
    return ZoneCache(path, registry_key(cfg.registry)) if path is not None else None


def start_dns(dns: DNS, cfg: configuration.Config) -> None:
    """Start answering, then put the cluster DNS address on its interface (the server binds it
    with IP_FREEBIND): after a restart the sockets answer before pyroute2 has even loaded."""
    try:
        dns.start()
    except OSError as err:
        raise SvcdnsError(f"DNS cannot listen on {', '.join(cfg.dns_listen_all())}: {err.strerror or err}") from None
    if cfg.cluster_dns_interface and cfg.cluster_dns:
        from ..dataplane.address import ensure_address  # pyroute2: only for the agent

        try:
            ensure_address(cfg.cluster_dns, cfg.cluster_dns_interface)
        except BaseException:
            dns.stop()
            raise


def new_watch(cfg: configuration.Config) -> tuple[Registry, Watch]:
    """The registry, and its watch."""
    from ..registry import open_registry

    registry = open_registry(cfg.registry, list(cfg.service_cidrs), password=cfg.registry_password)
    return registry, registry.watch()


def new_prober(cfg: configuration.Config, metrics: ProbeMetrics | None = None) -> Prober:
    """The prober of this node's pods, on a registry client of its own (the watch's is not shared
    across threads); with the file registry (one host) it probes every probed pod."""
    from ..probe import Prober
    from ..registry import open_registry

    registry = open_registry(cfg.registry, list(cfg.service_cidrs), password=cfg.registry_password)
    return Prober(registry, cfg.node_name, every_node=registry.kind == "files", metrics=metrics,
                  exec_probes=cfg.probe_exec)  # fmt: skip


def status_servers(cfg: configuration.Config, state, metrics) -> tuple[Any, Any]:
    """The health listener, and the metrics listener when ``metrics_listen`` is set (then /metrics
    is served there alone, so that /status never becomes public with it)."""
    from ..status import StatusServer

    health = StatusServer(parse_hostport(cfg.health_listen, "health_listen"), state, metrics,
                          metrics_elsewhere=cfg.metrics_listen)  # fmt: skip
    if not cfg.metrics_listen:
        return health, None
    return health, StatusServer(parse_hostport(cfg.metrics_listen, "metrics_listen"), state, metrics, metrics_only=True)


def hold_lease(cfg: configuration.Config, registry: Registry) -> NodeLease | None:
    """With etcd, this node's lease, refreshed on the registry's loop; None with files (one host)."""
    if registry.kind != "etcd":
        return None
    from ..registry.etcd import EtcdRegistry

    assert isinstance(registry, EtcdRegistry)
    return registry.hold_node(cfg.node_name, cfg.node_lease_ttl)


def node_check(cfg: configuration.Config):
    """What stops VIPs from working on this node, checked by the agent every few seconds."""
    from ..dataplane.health import NodeCheck, problems

    ipv6 = any(":" in c for c in cfg.service_cidrs)
    return NodeCheck(lambda: problems(ipv6=ipv6, masquerades_bridges=cfg.dataplane == "nftables"))


class Running:
    """The agent's parts, wired from a configuration; a reload replaces only what it must."""

    def __init__(self, cfg: configuration.Config) -> None:
        from ..agent import Agent
        from ..dataplane import open_dataplane
        from ..dns.sockets import SocketStore
        from ..notify import Notifier
        from ..status import Metrics, State

        self.cfg = cfg
        # the sockets systemd kept across the restart (taken once per process); where the zone's
        # source is kept for the next start
        self.sockets = SocketStore.from_environment()
        self.zone_cache = new_zone_cache(cfg)
        self.dns = new_dns(cfg, self.sockets, self._published)
        # the status servers first: they fail fast and alone when a port is taken
        state = State(registry="", health_timeout=max(60.0, 2 * cfg.full_sync_period))
        self.metrics = Metrics(dns_stats=lambda: self.dns.stats())  # whichever server runs now
        self.status, self.metrics_server = status_servers(cfg, state, self.metrics)
        try:
            self.status.start()
            if self.metrics_server is not None:
                self.metrics_server.start()
            # then DNS, before the registry, the dataplane and the prober are even built: under
            # systemd its sockets hold the queries that arrived since the last process, and the last
            # known zone answers them
            last = self.zone_cache.load() if self.zone_cache is not None else None
            if last is not None:
                self.dns.preload(last)  # answers from the first query, until the registry is read
            start_dns(self.dns, cfg)
        except BaseException:
            self._stop_status()
            raise
        try:
            self.registry, watch = new_watch(cfg)
            state.registry = self.registry.location
            dataplane = open_dataplane(cfg.dataplane, service_cidrs=cfg.service_cidrs)
            self.agent = Agent(watch, dataplane, self.dns, state=state, metrics=self.metrics, notifier=Notifier(),
                               full_sync_period=cfg.full_sync_period, node_check=node_check(cfg))  # fmt: skip
            self.metrics.follow(state, self.agent.pending_changes)
            from ..probe.metrics import ProbeMetrics

            self.probe_metrics = ProbeMetrics(self.metrics.registry)  # once: a reload's prober takes the same
            self.prober = new_prober(cfg, self.probe_metrics)
            state.probes = lambda: self.prober.status()  # whichever prober runs now
            self.agent.use_probes(self.prober)  # the explicit endpoints of selector-less Services
            self.lease: NodeLease | None = None
            self.metrics.node_lease.set_function(lambda: self.lease.remaining() if self.lease else 0.0)
        except BaseException:
            self.dns.stop()
            self._stop_status()
            raise

    def _stop_status(self) -> None:
        self.status.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()

    def _published(self, table: ServiceTable) -> None:
        if self.zone_cache is not None:
            self.zone_cache.offer(table)

    def start(self) -> None:
        if self.zone_cache is not None:
            self.zone_cache.start()
        self.lease = hold_lease(self.cfg, self.registry)
        self.prober.use_lease(self.lease)  # etcd: the statuses go on the node's lease
        self.prober.start()
        cfg = self.cfg
        log.info("agent: registry %s, dataplane %s, DNS on %s, health on %s%s", self.registry.location, cfg.dataplane,
                 ", ".join(cfg.dns_listen_all()), cfg.health_listen,
                 f", metrics on {cfg.metrics_listen}" if cfg.metrics_listen else "")  # fmt: skip

    def stop(self) -> None:
        if self.lease is not None:
            self.lease.release()  # not revoked: see svcdns.registry.etcd.lease
        self.prober.stop()
        self.agent.watch.close()
        self.registry.close()
        self._stop_status()
        if self.zone_cache is not None:
            self.zone_cache.stop()
        self.dns.stop()  # last: it answers for as long as this process runs

    def reconfigure(self, new: configuration.Config) -> None:
        """Take ``new`` in place. DNS keeps answering throughout: the server keeps its sockets and
        workers, which take new answering settings (zone, TTL, forwarding) in one message; only new
        listen addresses or another number of workers take a new server, which then answers from
        the current zone before the old one stops (SO_REUSEPORT lets both listen meanwhile). The
        table, the revision and the rules stay; a new registry location gets a new watch."""
        old = self.cfg
        changed = [f for f in old.__dataclass_fields__ if f not in ("source", "origins")
                   and getattr(old, f) != getattr(new, f)]  # fmt: skip
        # the registry URL may hold a password: it is named, and its new location logged redacted below
        log.info("agent: configuration reloaded from %s: %s", new.source or "flags and environment",
                 "; ".join(f"{f} changed" if f in SECRET_FIELDS else f"{f} {getattr(old, f)!r} -> {getattr(new, f)!r}"
                           for f in changed) or "nothing changed")  # fmt: skip
        agent = self.agent
        if any(f in changed for f in DNS_ANSWER_FIELDS) and not any(f in changed for f in DNS_SOCKET_FIELDS):
            self.dns.reconfigure(agent.applied, **dns_answering(new))
        elif any(f in changed for f in DNS_SOCKET_FIELDS):
            dns = new_dns(new, self.sockets, self._published)
            start_dns(dns, new)
            if agent.applied is not None:
                dns.update(agent.applied)
            self.dns, agent.dns, old_dns = dns, dns, self.dns
            agent.dns_pod_ips = None  # the new server learns the pods' addresses at the loop's next turn
            old_dns.stop()
        if "health_listen" in changed or "metrics_listen" in changed:  # make before break, each
            status, metrics_server = status_servers(new, agent.state, self.metrics)
            if "health_listen" in changed:
                status.start()
                self.status, status = status, self.status
                status.stop()
            self.status.metrics_elsewhere = new.metrics_listen
            if "metrics_listen" in changed:
                if metrics_server is not None:
                    metrics_server.start()
                self.metrics_server, metrics_server = metrics_server, self.metrics_server
                if metrics_server is not None:
                    metrics_server.stop()
        if any(f in changed for f in LEASE_FIELDS) and self.lease is not None:
            self.lease.release()  # the old registry's loop must not keep it alive
            self.lease = None
        if any(f in changed for f in REGISTRY_FIELDS):
            registry, watch = new_watch(new)
            agent.replace_watch(watch)
            self.registry, old_registry = registry, self.registry
            old_registry.close()
            cache, self.zone_cache = self.zone_cache, new_zone_cache(new)
            if cache is not None:
                cache.stop()
            if self.zone_cache is not None:
                self.zone_cache.start()
            agent.state.registry = registry.location
            log.info("agent: following the registry at %s", registry.location)
        if "dataplane" in changed:
            log.warning("agent: dataplane %s -> %s: the %s rules stay until `svcdns cleanup --dataplane %s`",
                        old.dataplane, new.dataplane, old.dataplane, old.dataplane)  # fmt: skip
            from ..dataplane import open_dataplane

            agent.dataplane = open_dataplane(new.dataplane, service_cidrs=new.service_cidrs)
            agent.need_full = True
        elif "service_cidrs" in changed:  # the rule rejecting what no Service holds in them: rewritten fully
            agent.dataplane.service_cidrs = tuple(new.service_cidrs)
            agent.need_full = True
        if "dataplane" in changed or "service_cidrs" in changed:
            agent.node_check = node_check(new)
        if any(f in changed for f in PROBER_FIELDS):
            prober, old_prober = new_prober(new, self.probe_metrics), self.prober
            old_prober.stop()  # first: two probers of one node would both write
            prober.use_lease(self.lease)
            prober.resume_endpoints(old_prober)
            prober.start()
            self.prober = prober
            agent.use_probes(prober)
        if any(f in changed for f in LEASE_FIELDS):
            self.lease = hold_lease(new, self.registry)
            self.prober.use_lease(self.lease)
        agent.full_sync_period = new.full_sync_period
        agent.state.health_timeout = max(60.0, 2 * new.full_sync_period)
        self.cfg = new


def cmd_agent(args) -> int:
    if not args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    cfg = load_config(args)
    gc.disable()  # until the first full sync, which enables it (svcdns.agent.Agent.sync says why)
    stop, reload = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def on_hup(*_: object) -> None:
        reload.set()
        stop.set()

    signal.signal(signal.SIGHUP, on_hup)
    with AgentLock():  # before anything binds or programs: a second agent changes nothing
        return _serve(args, cfg, stop, reload)


def _serve(args, cfg: configuration.Config, stop: threading.Event, reload: threading.Event) -> int:
    """Run the agent until SIGTERM; at SIGHUP, read the configuration again and take it in place."""
    running = Running(cfg)
    running.start()
    try:
        while True:
            running.agent.run(stop)
            if not reload.is_set():
                running.agent.notifier.stopping()
                log.info("agent: stopped; the rules stay in place (svcdns cleanup removes them)")
                return 0
            reload.clear()
            stop.clear()
            running.agent.notifier.reloading()
            try:
                running.reconfigure(load_config(args))
            except SvcdnsError as err:
                log.error("agent: reload refused, keeping the running configuration: %s", err)
            running.agent.notifier.ready()
    finally:
        running.stop()


def cmd_status(args) -> int:
    host, port = parse_hostport(args.health_listen or configuration.health_address(args.config), "health_listen")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # a wildcard: ask loopback
    url = f"http://{format_hostport(host, port)}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            st = json.load(resp)
    except (urllib.error.URLError, OSError) as err:
        raise SvcdnsError(f"no agent answers at {url} ({err}); is `svcdns agent` running?") from None
    if args.output == "json":
        print(json.dumps(st, indent=2))
        return 0
    print(f"Healthy:          {'yes' if st['healthy'] else 'NO'}{'' if st['ready'] else ' (first sync pending)'}")
    print(
        f"Registry:         {st['registry']}{'' if not st['registryProblem'] else '  PROBLEM: ' + st['registryProblem']}"
    )
    print(f"Services:         {st['services']} ({st['endpoints']} endpoints), revision {st['revision']}")
    if st.get("dnsProblem"):
        print(f"DNS:              PROBLEM: {st['dnsProblem']}")
    for problem in st.get("vipProblems", []):
        print(f"VIPs:             PROBLEM: {problem}")
    print(f"Last sync:        {st['lastSync'] or 'never'}")
    if st["lastError"]:
        print(f"Last error:       {st['lastError']}")
    if st.get("nodes"):
        down = sorted(n for n, s in st["nodes"].items() if s != "Ready")
        print(f"Nodes:            {len(st['nodes'])}" + (f" ({len(down)} NotReady: {', '.join(down)})" if down else ""))
    for message in sorted(st["invalidEntries"].values()):
        print(f"Invalid:          {message}")
    probes = st.get("probes") or {}
    if probes.get("ready") or probes.get("notReady"):
        print(f"Probed pods:      {probes['ready']} ready, {probes['notReady']} not ready")
    for pod, reason in (probes.get("failing") or {}).items():
        print(f"Not ready:        {pod}: {reason}")
    endpoints = probes.get("endpoints") or {}
    if endpoints:
        print(f"Probed endpoints: {endpoints['ready']} ready, {endpoints['notReady']} not ready (this host's probes)")
    for endpoint, reason in (endpoints.get("failing") or {}).items():
        print(f"Not ready:        {endpoint}: {reason}")
    return 0 if st["healthy"] else 1


__all__ = ["register"]
