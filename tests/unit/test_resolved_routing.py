"""The systemd-resolved routing `svcdns install --with-resolved` writes: only the zone and the
service CIDRs' reverse zones go to svcdns, on its own link, never as a default route."""

import ipaddress

import pytest

from svcdns.cli import install
from svcdns.cli.config import Config
from svcdns.cli.resolved import network_file, reverse_zones
from svcdns.errors import UsageError
from tests.unit.test_systemd_unit import TEMPLATES


@pytest.mark.parametrize("cidr, zones", [
    ("10.96.0.0/12", [f"{n}.10.in-addr.arpa" for n in range(96, 112)]),
    ("10.0.0.0/8", ["10.in-addr.arpa"]),
    ("192.168.4.0/23", ["4.168.192.in-addr.arpa", "5.168.192.in-addr.arpa"]),
    ("fd00:96::/108", ["0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa"]),
    ("fd00:96::/110", [f"{n}.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa" for n in "0123"]),
])  # fmt: skip
def test_reverse_zones_cover_the_cidr_exactly(cidr, zones):
    assert reverse_zones([cidr]) == zones
    net = ipaddress.ip_network(cidr)
    for ip in (net[0], net[-1], net[len(zones) and net.num_addresses // 2]):  # every address of the CIDR is in one
        assert sum(ip.reverse_pointer.endswith("." + z) for z in zones) == 1, ip
    outside = net[-1] + 1
    assert not any(outside.reverse_pointer.endswith("." + z) for z in zones)


def test_the_network_file_routes_only_the_zone_and_its_reverse_zones():
    text = network_file(TEMPLATES["svcdns-resolved.network"], interface="svcdns0", cluster_dns="10.96.0.10",
                        zone="Cluster.Local.", cidrs=("10.96.0.0/12",))  # fmt: skip
    lines = set(text.splitlines())
    assert {"Name=svcdns0", "Address=10.96.0.10/32", "DNS=10.96.0.10", "DNSDefaultRoute=no"} <= lines
    (domains,) = [line for line in lines if line.startswith("Domains=")]
    assert domains.split("=", 1)[1].split() == ["~cluster.local", *(f"~{n}.10.in-addr.arpa" for n in range(96, 112))]
    assert "@" not in text  # every placeholder filled


def test_without_a_cluster_dns_interface_resolved_routing_is_refused():
    with pytest.raises(UsageError, match="cluster_dns_interface"):
        install.plan(TEMPLATES, "/opt/svcdns/bin/svcdns", "/var/lib/svcdns/registry", with_resolved=True,
                     cfg=Config(cluster_dns="10.96.0.10", cluster_dns_interface=""))  # fmt: skip
