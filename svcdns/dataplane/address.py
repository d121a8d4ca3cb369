"""The cluster DNS address on the node: a dummy interface holding it, so that every pod reaches DNS
there whatever its networking (routed veth pairs, a bridge), as NodeLocal DNSCache does.

A packet from a pod to the address is routed to the node like any other, finds a local address and
is delivered to the DNS sockets bound to it: no DNAT, no conntrack entry per query, nothing that
depends on how the pods are attached. (A VIP DNAT-ed to a node address works too, but costs one
conntrack entry per UDP query and needs an address of the node that every pod reaches.) A kernel
without the dummy driver gets the address on ``lo`` instead, which delivers the same way.
"""

from __future__ import annotations

import errno
import ipaddress
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .edge import converted
from .guard import check_netns_guard

log = logging.getLogger(__name__)

INTERFACE = "svcdns0"
FALLBACK = "lo"


def ensure_address(address: str, interface: str = INTERFACE) -> str:
    """Make ``interface`` (a dummy) exist, be up and hold ``address`` (as a /32 or /128), and return
    the interface that holds it. Idempotent: a restart finds it in place."""
    check_netns_guard(f"add {address} to {interface}")
    ip = ipaddress.ip_address(address)
    with converted(f"put the cluster DNS address {address} on {interface}"), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=interface)
        if not found:
            try:
                ipr.link("add", ifname=interface, kind="dummy")
            except NetlinkError as err:
                if err.code != errno.EOPNOTSUPP:
                    raise
                log.warning("dataplane: this kernel has no dummy interfaces; the cluster DNS address %s goes on %s",
                            address, FALLBACK)  # fmt: skip
                interface = FALLBACK
            found = ipr.link_lookup(ifname=interface)
        index = found[0]
        ipr.link("set", index=index, state="up")
        if str(ip) not in _held(ipr, index, ip):
            ipr.addr("add", index=index, address=str(ip), prefixlen=ip.max_prefixlen)
            log.info("dataplane: the cluster DNS address %s is on %s", address, interface)
    return interface


def remove_address(address: str, interface: str = INTERFACE) -> bool:
    """Take the cluster DNS address away (what ``svcdns cleanup`` does): delete ``interface``, or the
    address from ``lo`` where it went instead. False if neither was there."""
    check_netns_guard(f"delete {interface}")
    ip = ipaddress.ip_address(address)
    with converted(f"delete {interface}"), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=interface)
        if found:
            ipr.link("del", index=found[0])
            return True
        lo = ipr.link_lookup(ifname=FALLBACK)
        if lo and str(ip) in _held(ipr, lo[0], ip):
            ipr.addr("del", index=lo[0], address=str(ip), prefixlen=ip.max_prefixlen)
            return True
    return False


def _held(ipr: IPRoute, index: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> set[str]:
    """The addresses of ``ip``'s family on interface ``index``."""
    return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2 if ip.version == 4 else 10)}


__all__ = ["FALLBACK", "INTERFACE", "ensure_address", "remove_address"]
