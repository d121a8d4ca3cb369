"""``svcdns resolv-conf``: the resolv.conf a pod should use, as the kubelet writes it for
``dnsPolicy: ClusterFirst``.

    nameserver 10.96.0.10
    search <ns>.svc.<zone> svc.<zone> <zone> [the host's own search domains]
    options ndots:5

``ip netns exec NAME`` bind-mounts ``/etc/netns/NAME/resolv.conf`` over /etc/resolv.conf, so
``--write /etc/netns/NAME/resolv.conf`` is how a namespace pod gets it.
"""

from __future__ import annotations

import os
import tempfile

from ..errors import SvcdnsError
from ..model import check_label
from . import config as configuration

MAX_SEARCH = 32  # glibc 2.26+ reads up to 32 search domains (older ones stop at 6)


def register(sub, common) -> None:
    p = sub.add_parser("resolv-conf", parents=[common], help="print (or write) the resolv.conf for a pod",
                       description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--config", help=f"TOML settings (default: {configuration.DEFAULT_CONFIG} if present)")
    p.add_argument("--zone", help="cluster zone (default: the configuration's, else cluster.local)")
    p.add_argument("--cluster-dns", metavar="ADDR", help="the nameserver (default: the configuration's cluster_dns)")
    p.add_argument("--host-resolv-conf", default="/etc/resolv.conf", metavar="FILE",
                   help="whose search domains to append (default: %(default)s)")  # fmt: skip
    p.add_argument("--write", metavar="PATH", help="write it here atomically (e.g. /etc/netns/POD/resolv.conf)")
    p.set_defaults(func=cmd_resolv_conf)


def render(namespace: str, zone: str, nameserver: str, host_search: list[str]) -> str:
    search = [f"{namespace}.svc.{zone}", f"svc.{zone}", zone]
    search += [d for d in host_search if d not in search]
    return f"nameserver {nameserver}\nsearch {' '.join(search[:MAX_SEARCH])}\noptions ndots:5\n"


def host_search_domains(path: str) -> list[str]:
    """The ``search`` (or ``domain``) domains of a resolv.conf; the last such line wins, as in glibc."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read(65536).splitlines()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise SvcdnsError(f"cannot read {path}: {err.strerror or err}") from None
    domains: list[str] = []
    for line in lines:
        words = line.split()
        if words and words[0] in ("search", "domain"):
            domains = [w.rstrip(".") for w in words[1:] if w != "."]
    return domains


def cmd_resolv_conf(args) -> int:
    check_label("namespace", args.namespace)
    cfg = configuration.load(args.config, {"cluster_zone": args.zone, "cluster_dns": args.cluster_dns})
    text = render(args.namespace, cfg.cluster_zone, cfg.cluster_dns, host_search_domains(args.host_resolv_conf))
    if not args.write:
        print(text, end="")
        return 0
    directory = os.path.dirname(os.path.abspath(args.write))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".resolv.conf.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.write)
    except OSError as err:
        raise SvcdnsError(f"cannot write {args.write}: {err.strerror or err}") from None
    print(f"wrote {args.write}")
    return 0


__all__ = ["register", "render"]
