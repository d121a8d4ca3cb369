"""``svcdns sync --once`` and ``svcdns cleanup``: the dataplane from the command line.

svcdns sync --once [--dataplane nftables|iptables]   # read the registry, program the rules, exit
svcdns cleanup [--dataplane nftables|iptables]       # remove svcdns's rules, nothing else: the tables
                                                     # ip/ip6 svcdns, or the SVCDNS- chains and jumps
"""

from __future__ import annotations

from ..dataplane import open_dataplane
from ..errors import UsageError
from ..registry import open_registry
from . import config as configuration
from .config import registry_location, registry_password


def register(sub, common) -> None:
    dp = {"choices": ("nftables", "iptables"), "default": "nftables", "help": "backend (default: %(default)s)"}
    sync = sub.add_parser("sync", parents=[common], help="program the rules for the registry's Services")
    sync.add_argument("--once", action="store_true", help="sync once and exit (the agent keeps syncing)")
    sync.add_argument("--dataplane", **dp)
    sync.set_defaults(func=cmd_sync)
    clean = sub.add_parser("cleanup", parents=[common], help="remove every rule svcdns installed, and only those")
    clean.add_argument("--dataplane", **dp)
    clean.set_defaults(func=cmd_cleanup)


def cmd_sync(args) -> int:
    if not args.once:
        raise UsageError("svcdns sync: pass --once (to keep the rules in sync, run `svcdns agent`)")
    location = registry_location(args.registry)
    snap = open_registry(location, password=registry_password(location)).snapshot()
    dp = open_dataplane(args.dataplane, service_cidrs=configuration.load(None, {}).service_cidrs)
    result = dp.sync(snap.table, full=True)
    unit = "netlink messages" if dp.kind == "nftables" else "iptables-restore lines"
    print(f"synced {result.services} Services, {result.endpoints} endpoints "
          f"({result.rules} {unit}, {result.duration * 1000:.1f} ms)")  # fmt: skip
    for source, message in sorted(snap.errors.items()):
        print(f"skipped {source}: {message}")
    return 0


def cmd_cleanup(args) -> int:
    from ..dataplane.address import remove_address

    open_dataplane(args.dataplane).cleanup()
    print("removed svcdns's rules")
    cfg = configuration.load(None, {})
    if cfg.cluster_dns_interface and remove_address(cfg.cluster_dns, cfg.cluster_dns_interface):
        print(f"removed the cluster DNS address {cfg.cluster_dns}")
    return 0
