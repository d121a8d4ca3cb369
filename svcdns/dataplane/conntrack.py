"""Stale UDP conntrack entries: deleted after each sync when they point at an endpoint that is gone.

UDP has no connection end: a client that keeps sending from one source port (a DNS resolver does)
stays pinned by conntrack to the endpoint it first reached, dead or not, or to the "no endpoint"
rejection. kube-proxy's users know this pain (kubernetes/kubernetes 48370, 125467, 139628). After
each sync svcdns looks at the UDP entries to the VIP:ports that changed (all of them on a full
sync) and deletes those whose reply does not come from one of that port's current endpoints: this
covers an endpoint leaving and a VIP getting its first endpoint, and needs no memory of the past,
so `svcdns sync --once` and a restarted agent clean up too.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from .edge import converted, kernel_error
from .guard import check_netns_guard

log = logging.getLogger(__name__)

Expected = dict[tuple[str, int], set[tuple[str, int]]]  # (vip, port) -> {(endpoint, target port)}


def sync_expectations(before, table, keys, family: str) -> Expected:
    """What :func:`clear_udp` checks after a sync from table ``before`` (None: the first sync) to
    ``table``: the UDP VIP:ports of the Services in ``keys`` (None: of every Service), and the ports
    of ``before`` among them that went (every entry to those goes). After an incremental sync a port
    that kept every endpoint it had (one or more) is left out: none of its entries can be stale, and
    the dump of every UDP entry is the costly part of a sync that only adds endpoints."""
    if keys is None:
        old, new = (before or ()), table
    else:
        old = [before.services[k] for k in keys if before is not None and k in before.services]
        new = [table.services[k] for k in keys if k in table.services]
    was = udp_expectations(old, family)
    out: Expected = {key: set() for key in was}
    for key, targets in udp_expectations(new, family).items():
        if keys is not None and was.get(key) and was[key] <= targets:
            del out[key]
        else:
            out[key] = targets
    return out


def clear_udp(expected: Expected) -> int:
    """Delete UDP entries to a VIP:port in ``expected`` whose reply source is not one of its
    endpoints. One dump of the UDP entries, whatever the number of ports. Returns how many went."""
    if not expected:
        return 0
    check_netns_guard("clear conntrack entries")
    wanted = {
        (ipaddress.ip_address(v), p): {(ipaddress.ip_address(a), tp) for a, tp in eps}
        for (v, p), eps in expected.items()
    }
    families = {socket.AF_INET6 if vip.version == 6 else socket.AF_INET for vip, _ in wanted}
    deleted = 0
    with converted("open a conntrack socket"):
        ct = Conntrack()
    try:
        for family in families:
            with converted("list the UDP conntrack entries"):
                entries = list(ct.dump_entries(tuple_orig=NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP)))
            for entry in entries:
                orig, reply = entry.tuple_orig, entry.tuple_reply
                try:
                    key = (ipaddress.ip_address(orig.daddr), orig.dport)
                    source = (ipaddress.ip_address(reply.saddr), reply.sport)
                except (TypeError, ValueError):
                    continue
                if key in wanted and source not in wanted[key]:
                    try:
                        ct.delete(entry)
                        deleted += 1
                    except (NetlinkError, OSError) as err:
                        failure = kernel_error(f"delete a conntrack entry to {key[0]}:{key[1]}", err)
                        if failure.errno != errno.ENOENT:
                            raise failure from err
                        log.debug("conntrack: an entry to %s:%d went meanwhile (it timed out)", *key)
    finally:
        ct.close()
    if deleted:
        log.info("conntrack: deleted %d stale UDP entries", deleted)
    return deleted


def udp_expectations(services, family: str) -> Expected:
    """For :func:`clear_udp`: each UDP VIP:port of ``services`` in ``family``, and the endpoints it
    sends to (``usable_endpoints``: the ready ones, else the serving and terminating ones); a port with
    none maps to an empty set, so every entry to it goes."""
    out: Expected = {}
    for svc in services:
        vip = svc.vip(family)
        if vip is None:
            continue
        for port in svc.ports:
            if port.protocol == "UDP":
                out[(str(vip), port.port)] = set(svc.targets(port, family))
    return out
