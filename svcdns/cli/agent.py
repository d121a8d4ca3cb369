"""``svcdns agent`` and ``svcdns status``."""

from __future__ import annotations

import json
import logging
import signal
import threading
import urllib.error
import urllib.request

from ..addr import parse_hostport
from ..errors import SvcdnsError, UsageError
from . import config as configuration
from .lock import AgentLock

log = logging.getLogger(__name__)


def register(sub, common) -> None:
    agent = sub.add_parser("agent", parents=[common], help="run the agent: registry -> rules -> DNS")
    agent.add_argument("--config", help=f"TOML settings (default: {configuration.DEFAULT_CONFIG} if present)")
    agent.add_argument("--dns-listen", action="append", metavar="ADDR:PORT", help="repeatable (default 127.0.0.1:53)")
    agent.add_argument("--health-listen", metavar="ADDR:PORT", help="health/metrics (default 127.0.0.1:10256)")
    agent.add_argument("--dataplane", choices=("nftables", "iptables"))
    agent.add_argument("--service-cidr", action="append", metavar="CIDR", help="repeatable (default 10.96.0.0/12)")
    agent.add_argument(
        "--pod-cidr", action="append", metavar="CIDR", help="pod networks (their DNS clients may recurse)"
    )
    agent.add_argument("--zone", help="cluster zone (default cluster.local)")
    agent.add_argument("--dns-workers", type=int, metavar="N", help="DNS worker processes (default: one per core)")
    agent.add_argument("--no-forward", action="store_true", default=None, help="REFUSED for names outside the zone")
    agent.set_defaults(func=cmd_agent)

    status = sub.add_parser("status", parents=[common], help="what the running agent sees")
    status.add_argument("--health-listen", metavar="ADDR:PORT", default="127.0.0.1:10256")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(func=cmd_status)


def load_config(args) -> configuration.Config:
    flags = {
        "registry": args.registry,
        "service_cidrs": args.service_cidr,
        "pod_cidrs": args.pod_cidr,
        "cluster_zone": args.zone,
        "dataplane": args.dataplane,
        "health_listen": args.health_listen,
        "dns.listen": args.dns_listen,
        "dns.workers": args.dns_workers,
        "dns.forward": False if args.no_forward else None,
    }
    return configuration.load(args.config, flags)


def build(cfg: configuration.Config):
    """The agent's parts from a configuration (imports here: each is a heavy module)."""
    from ..agent import Agent
    from ..dataplane import open_dataplane
    from ..dns.server import DNSServer
    from ..notify import Notifier
    from ..registry import open_registry
    from ..status import Metrics, State, StatusServer

    dns = DNSServer(
        [parse_hostport(a, "dns.listen") for a in cfg.dns_listen],
        zone=cfg.cluster_zone,
        ttl=cfg.dns_ttl,
        upstreams=list(cfg.dns_upstreams) or None,
        allowed_networks=cfg.allowed_networks(),
        forward=cfg.dns_forward,
        workers=cfg.dns_workers or None,
    )
    state = State(registry=cfg.registry, health_timeout=max(60.0, 2 * cfg.full_sync_period))
    metrics = Metrics(dns_stats=dns.stats)
    status = StatusServer(parse_hostport(cfg.health_listen, "health_listen"), state, metrics)
    watch = open_registry(cfg.registry, list(cfg.service_cidrs)).watch()
    agent = Agent(watch, open_dataplane(cfg.dataplane), dns, state=state, metrics=metrics, notifier=Notifier(),
                  full_sync_period=cfg.full_sync_period)  # fmt: skip
    return agent, dns, status


def cmd_agent(args) -> int:
    if not args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    cfg = load_config(args)
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
    """Run the agent until SIGTERM; SIGHUP rebuilds it with the configuration read again."""
    while True:
        agent, dns, status = build(cfg)
        try:
            status.start()  # first: it fails fast and alone when its port is taken
            try:
                dns.start()
            except OSError as err:
                raise SvcdnsError(f"DNS cannot listen on {', '.join(cfg.dns_listen)}: {err.strerror or err}") from None
        except BaseException:
            status.stop()
            agent.watch.close()
            raise
        log.info("agent: registry %s, dataplane %s, DNS on %s, health on %s", cfg.registry, cfg.dataplane,
                 ", ".join(cfg.dns_listen), cfg.health_listen)  # fmt: skip
        try:
            agent.run(stop)
        finally:
            agent.notifier.stopping() if not reload.is_set() else agent.notifier.reloading()
            agent.watch.close()
            dns.stop()
            status.stop()
        if not reload.is_set():
            log.info("agent: stopped; the rules stay in place (svcdns cleanup removes them)")
            return 0
        reload.clear()
        stop.clear()
        try:
            new = load_config(args)
        except UsageError as err:
            log.error("agent: reload refused, keeping the running configuration: %s", err)
            new = cfg
        log.info("agent: configuration reloaded from %s", new.source or "flags and environment")
        cfg = new


def cmd_status(args) -> int:
    url = f"http://{args.health_listen}/status"
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
    print(f"Last sync:        {st['lastSync'] or 'never'}")
    if st["lastError"]:
        print(f"Last error:       {st['lastError']}")
    for message in sorted(st["invalidEntries"].values()):
        print(f"Invalid:          {message}")
    return 0 if st["healthy"] else 1


__all__ = ["register"]
