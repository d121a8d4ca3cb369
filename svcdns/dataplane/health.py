"""What stops VIPs from working on this node, read from /proc/sys and /sys/class/net.

The rules can be in the kernel and still never match: a node that does not forward drops every
pod's packet to a VIP, and pods on a Linux bridge need the node to see the replies. :func:`problems`
reads the paths it is given (so tests pass a fake tree) and says what is wrong, in sentences an
operator can act on; :class:`NodeCheck` runs it periodically for the agent and logs each problem
once when it appears (WARNING) and once when it clears (INFO). Only reads: svcdns never changes a
sysctl nor loads a module (both are the host's to decide).

Bridges (docs/architecture.md, "Pods on a bridge"): with the nftables dataplane svcdns masquerades
VIP traffic from a bridge to a bridge, so br_netfilter is not needed; the iptables dataplane has no
such rule, and needs br_netfilter. With br_netfilter on, the packets are bridged, and a pod reaching
its own Service needs its bridge port in hairpin mode (as the kubelet's ``hairpin-veth`` sets it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

PROC_SYS = "/proc/sys"
CLASS_NET = "/sys/class/net"
MAX_NAMED = 5  # interfaces named in one problem; the rest are counted


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def bridges(class_net: str = CLASS_NET) -> dict[str, list[str]]:
    """The bridges of this namespace that have ports: bridge -> its ports, sorted."""
    out: dict[str, list[str]] = {}
    try:
        links = sorted(os.listdir(class_net))
    except OSError:
        return out
    for name in links:
        try:
            ports = sorted(os.listdir(os.path.join(class_net, name, "brif")))
        except OSError:
            continue  # not a bridge
        if ports:
            out[name] = ports
    return out


def problems(proc_sys: str = PROC_SYS, class_net: str = CLASS_NET, *, ipv6: bool = False,
             masquerades_bridges: bool = True) -> list[str]:  # fmt: skip
    """What stops VIPs from working here, one sentence each; [] when nothing does. ``ipv6``: check
    IPv6 forwarding too (IPv6 service CIDRs); ``masquerades_bridges``: the dataplane masquerades
    bridge-to-bridge VIP traffic (nftables), so bridged pods do not need br_netfilter."""
    found = []
    if _read(f"{proc_sys}/net/ipv4/ip_forward") == "0":
        found.append("net.ipv4.ip_forward is 0: this node does not forward its pods' packets, so every VIP "
                     "times out from a pod (sysctl -w net.ipv4.ip_forward=1)")  # fmt: skip
    if ipv6 and _read(f"{proc_sys}/net/ipv6/conf/all/forwarding") == "0":
        found.append("net.ipv6.conf.all.forwarding is 0: this node does not forward its pods' IPv6 packets, "
                     "so every IPv6 VIP times out from a pod (sysctl -w net.ipv6.conf.all.forwarding=1)")  # fmt: skip
    bridged = bridges(class_net)
    if not bridged:
        return found
    br_netfilter = _read(f"{proc_sys}/net/bridge/bridge-nf-call-iptables") == "1"
    if not br_netfilter and not masquerades_bridges:
        why = "is not loaded" if _read(f"{proc_sys}/net/bridge/bridge-nf-call-iptables") is None else "is off"
        found.append(f"br_netfilter {why} and pods are on the bridge(s) {_names(sorted(bridged))}: a reply "
                     "from a pod behind a VIP to a pod on the same bridge bypasses the node's conntrack and "
                     "the connection times out (modprobe br_netfilter and net.bridge.bridge-nf-call-iptables=1, "
                     "or the nftables dataplane, which needs neither)")  # fmt: skip
    if br_netfilter:
        for bridge, ports in sorted(bridged.items()):
            off = [p for p in ports if _read(f"{class_net}/{bridge}/brif/{p}/hairpin_mode") == "0"]
            if off:
                found.append(f"bridge {bridge}: hairpin mode is off on port(s) {_names(off)}: with br_netfilter on, "
                             "a pod there that reaches its own Service through a VIP times out "
                             "(bridge link set dev PORT hairpin on)")  # fmt: skip
    return found


class NodeCheck:
    """``problems`` run on demand (the agent calls it every few seconds); each problem logged when it
    appears and when it clears, not at every check."""

    def __init__(self, check: Callable[[], list[str]] = problems) -> None:
        self.check = check
        self.current: list[str] = []

    def __call__(self) -> list[str]:
        try:
            now = self.check()
        except Exception as err:  # noqa: BLE001 - a check that cannot read says so, and changes nothing
            log.warning("dataplane: could not check this node's forwarding settings (%s)", err)
            return self.current
        for p in now:
            if p not in self.current:
                log.warning("dataplane: VIPs will not work: %s", p)
        for p in self.current:
            if p not in now:
                log.info("dataplane: no longer a problem: %s", p.split(":")[0])
        self.current = now
        return now


__all__ = ["NodeCheck", "bridges", "problems"]
