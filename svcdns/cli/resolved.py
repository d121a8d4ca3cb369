"""The systemd-resolved routing that ``svcdns install --with-resolved`` writes (pure).

resolved routes a name to the DNS servers of the links whose routing domains (``~zone``) match it
best; a name no routing domain matches goes to every link marked as a default route *and* to the
global servers of resolved.conf's ``DNS=``, always (systemd 252: the global scope is a default route
whatever its ``Domains=``). So a global ``DNS=127.0.0.1`` made svcdns a resolver for every name on
the host, and svcdns, forwarding to resolv.conf's 127.0.0.53, looped. The servers must belong to
a link: the agent's cluster DNS interface (``svcdns0``), configured through systemd-networkd with
``DNSDefaultRoute=no`` and routing domains for the zone and the reverse zones of the service CIDRs.
"""

from __future__ import annotations

import ipaddress

from ..errors import UsageError


def reverse_zones(cidrs: list[str] | tuple[str, ...]) -> list[str]:
    """The reverse-lookup zones that together cover ``cidrs``: a prefix is rounded up to the next
    label boundary (8 bits for IPv4, a 4-bit nibble for IPv6), so 10.96.0.0/12 gives the 16 zones
    96.10.in-addr.arpa ... 111.10.in-addr.arpa and fd00:96::/108 one zone of 27 nibbles."""
    zones: list[str] = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        step = 8 if net.version == 4 else 4
        bits = -(-net.prefixlen // step) * step
        keep = bits // step
        for sub in net.subnets(new_prefix=bits):
            labels = sub.network_address.reverse_pointer.split(".")
            zone = ".".join(labels[len(labels) - 2 - keep :])
            if zone not in zones:
                zones.append(zone)
    return zones


def network_file(template: str, *, interface: str, cluster_dns: str, zone: str, cidrs: list[str] | tuple[str, ...]) -> str:
    """The systemd-networkd ``.network`` file for the agent's cluster DNS interface."""
    if not interface:
        raise UsageError.invalid("cluster_dns_interface", interface, "an interface for the cluster DNS address "
                                 "(--with-resolved routes the zone to svcdns on it), e.g. svcdns0")  # fmt: skip
    ip = ipaddress.ip_address(cluster_dns)
    domains = " ".join(f"~{z}" for z in [zone.lower().removesuffix("."), *reverse_zones(cidrs)])
    return (template.replace("@INTERFACE@", interface).replace("@ADDRESS@", f"{ip}/{ip.max_prefixlen}")
            .replace("@DNS@", str(ip)).replace("@DOMAINS@", domains))  # fmt: skip


__all__ = ["network_file", "reverse_zones"]
