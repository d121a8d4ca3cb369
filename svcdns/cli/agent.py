"""``svcdns agent``, ``svcdns status``, ``svcdns install`` and ``svcdns uninstall``."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import SvcdnsError, UsageError
from . import config as configuration

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent.parent


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

    inst = sub.add_parser("install", parents=[common], help="install the systemd unit, config and resolved drop-in")
    inst.add_argument("--root", default="/", help="install below this directory (default: /)")
    inst.set_defaults(func=cmd_install)
    uninst = sub.add_parser("uninstall", parents=[common], help="remove what install put in place and the rules")
    uninst.add_argument("--root", default="/")
    uninst.set_defaults(func=cmd_uninstall)


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
        [configuration.split_hostport(a, "dns.listen") for a in cfg.dns_listen],
        zone=cfg.cluster_zone,
        ttl=cfg.dns_ttl,
        upstreams=list(cfg.dns_upstreams) or None,
        allowed_networks=cfg.allowed_networks(),
        forward=cfg.dns_forward,
        workers=cfg.dns_workers or None,
    )
    state = State(registry=cfg.registry, health_timeout=max(60.0, 2 * cfg.full_sync_period))
    metrics = Metrics(dns_stats=dns.stats)
    status = StatusServer(configuration.split_hostport(cfg.health_listen, "health_listen"), state, metrics)
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
    signal.signal(signal.SIGHUP, lambda *_: (reload.set(), stop.set()))
    while True:
        agent, dns, status = build(cfg)
        try:
            dns.start()
            status.start()
        except OSError as err:
            dns.stop()
            raise SvcdnsError(f"cannot listen on {cfg.health_listen}: {err.strerror}") from None
        log.warning("agent: registry %s, dataplane %s, DNS on %s, health on %s", cfg.registry, cfg.dataplane,
                    ", ".join(cfg.dns_listen), cfg.health_listen)  # fmt: skip
        try:
            agent.run(stop)
        finally:
            agent.notifier.stopping() if not reload.is_set() else agent.notifier.reloading()
            agent.watch.close()
            dns.stop()
            status.stop()
        if not reload.is_set():
            log.warning("agent: stopped; the rules stay in place (svcdns cleanup removes them)")
            return 0
        reload.clear()
        stop.clear()
        try:
            new = load_config(args)
        except UsageError as err:
            log.error("agent: reload refused, keeping the running configuration: %s", err)
            new = cfg
        log.warning("agent: configuration reloaded from %s", new.source or "flags and environment")
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


UNIT = "etc/systemd/system/svcdns.service"
CONF = "etc/svcdns/svcdns.toml"
DROPIN = "etc/systemd/resolved.conf.d/svcdns.conf"


def _sources() -> Path:
    for base in (PACKAGE_DIR / "systemd", PACKAGE_DIR.parent / "systemd"):
        if (base / "svcdns.service").exists():
            return base
    raise SvcdnsError("the systemd unit files are not installed with this copy of svcdns")


def cmd_install(args) -> int:
    root, src = Path(args.root), _sources()
    svcdns_bin = shutil.which("svcdns") or "/usr/local/bin/svcdns"
    unit = (src / "svcdns.service").read_text().replace("/usr/local/bin/svcdns", svcdns_bin)
    for rel, text in ((UNIT, unit), (DROPIN, (src / "resolved-svcdns.conf").read_text())):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        print(f"installed {root / rel}")
    if not (root / CONF).exists():
        (root / CONF).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "svcdns.toml", root / CONF)
        print(f"installed {root / CONF}")
    (root / "var/lib/svcdns/registry").mkdir(parents=True, exist_ok=True)
    if args.root == "/" and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    print("next: systemctl enable --now svcdns")
    return 0


def cmd_uninstall(args) -> int:
    root = Path(args.root)
    if args.root == "/" and shutil.which("systemctl"):
        subprocess.run(["systemctl", "disable", "--now", "svcdns"], check=False, capture_output=True)
    for rel in (UNIT, DROPIN):
        if (root / rel).exists():
            (root / rel).unlink()
            print(f"removed {root / rel}")
    if args.root == "/":
        from ..dataplane import open_dataplane

        for kind in ("nftables", "iptables"):  # whichever backend the agent ran with
            open_dataplane(kind).cleanup()
        print("removed svcdns's rules")
        if shutil.which("systemctl"):
            subprocess.run(["systemctl", "daemon-reload"], check=False)
    print(f"kept {root / CONF} and the registry (/var/lib/svcdns): remove them by hand if you want them gone")
    return 0


__all__ = ["register"]
