"""Stale UDP conntrack entries: deleted when an endpoint goes, or when a VIP gets its first endpoint.

UDP has no connection end: a client that keeps sending from one source port (a DNS resolver does)
stays pinned by conntrack to the endpoint it first reached, dead or not, or to the "no endpoint"
rejection. kube-proxy's users know this pain (kubernetes/kubernetes 48370, 125467, 139628); after
each sync svcdns deletes the entries that now point at nothing.
"""

from __future__ import annotations

import logging
import socket

from ..lab import check_netns_guard

log = logging.getLogger(__name__)


def clear_udp(flows: list[tuple[str, int, str | None, int | None]]) -> int:
    """Delete UDP conntrack entries to ``(vip, port)`` whose reply comes from ``(endpoint, target)``,
    or all entries to ``(vip, port)`` when ``endpoint`` is None. Returns how many were deleted."""
    if not flows:
        return 0
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    check_netns_guard("clear conntrack entries")
    deleted = 0
    ct = Conntrack()
    try:
        for vip, port, endpoint, target in flows:
            family = socket.AF_INET6 if ":" in vip else socket.AF_INET
            orig = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP, daddr=vip, dport=port)
            reply = (
                NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP, saddr=endpoint, sport=target)
                if endpoint
                else None
            )
            for entry in list(ct.dump_entries(tuple_orig=orig, tuple_reply=reply)):
                try:
                    ct.delete(entry)
                    deleted += 1
                except OSError as err:  # gone meanwhile (it timed out): nothing left to do
                    log.debug("conntrack: could not delete an entry to %s:%d: %s", vip, port, err)
    finally:
        ct.close()
    if deleted:
        log.info("conntrack: deleted %d stale UDP entries", deleted)
    return deleted
