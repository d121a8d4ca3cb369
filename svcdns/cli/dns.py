"""``svcdns dns``: the DNS server alone, answering for the registry's Services (no dataplane).

    svcdns dns --listen 127.0.0.1:53 --registry /var/lib/svcdns/registry

It follows the registry and applies every change to the answers without a restart. The agent runs
the same server next to the dataplane; this command is for hosts that want names only, and for tests.
"""

from __future__ import annotations

import logging
import signal
import threading

from ..addr import parse_hostport
from ..dns.server import DNSServer
from ..dns.sockets import SocketStore
from ..errors import UsageError
from ..registry import open_registry
from ..registry.contract import Snapshot
from .config import registry_location, registry_password

log = logging.getLogger(__name__)


def register(sub, common) -> None:
    p = sub.add_parser("dns", parents=[common], help="serve the Services' DNS names (without the dataplane)")
    p.add_argument(
        "--listen", action="append", default=[], metavar="ADDR:PORT", help="repeatable; default 127.0.0.1:53"
    )
    p.add_argument("--zone", default="cluster.local", help="cluster zone (default: %(default)s)")
    p.add_argument("--ttl", type=int, default=5, help="TTL of the answers in seconds (default: %(default)s)")
    p.add_argument("--upstream", action="append", default=None, metavar="ADDR[:PORT]",
                   help="resolver for names outside the zone (repeatable); default: /etc/resolv.conf")  # fmt: skip
    p.add_argument("--allow", action="append", default=None, metavar="CIDR",
                   help="client networks whose queries outside the zone are forwarded; default: loopback")  # fmt: skip
    p.add_argument("--no-forward", action="store_true", help="answer REFUSED for every name outside the zone")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    p.set_defaults(func=cmd_dns)


def cmd_dns(args) -> int:
    if args.ttl < 0 or args.ttl > 86400:
        raise UsageError(f"--ttl {args.ttl}: must be 0 to 86400 seconds")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    try:
        server = DNSServer(
            [parse_hostport(a, "dns.listen", default_port=53) for a in args.listen or ["127.0.0.1:53"]],
            zone=args.zone,
            ttl=args.ttl,
            upstreams=args.upstream,
            allowed_networks=args.allow,
            forward=not args.no_forward,
            workers=args.workers,
            store=SocketStore.from_environment(),  # under systemd, the sockets outlive a restart
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    location = registry_location(args.registry)
    watch = open_registry(location, password=registry_password(location)).watch()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    try:
        snap: Snapshot | None = watch.start()
        while not stop.is_set():
            if snap is not None and snap.synced:  # until the registry is read, the zone answers SERVFAIL
                server.update(snap.table)
                server.allow_clients(snap.pod_ips)  # the registry's pods may recurse
                log.info("dns: answering for %d Services (registry revision %d)", len(snap.table), snap.revision)
            elif snap is not None:
                log.warning("dns: the registry has not been read yet (%s); the zone answers SERVFAIL", watch.problem)
            snap = watch.poll(0.5)
    finally:
        watch.close()
        server.stop()
    return 0
