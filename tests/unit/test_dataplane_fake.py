"""The nftables planner against the fake kernel, without root: an incremental change leaves what a
fresh full load of the new table leaves, and packets traced through the fake's chains go where a user
expects (kube-proxy's runPacketFlowTests)."""

import dataclasses
import errno
import ipaddress

import pytest

from svcdns.dataplane import DataplaneError
from svcdns.dataplane.nftables.fake import FakeKernel, Packet
from svcdns.dataplane.nftables.objects import VIPS, chain_name
from svcdns.dataplane.nftables.ruleset import build, plan, render, stamp
from svcdns.dataplane.nftables.transaction import AddElements, AddRules, DeleteChain, FlushChain, Transaction
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.table import ServiceTable, changed_keys

WEB = Service(
    "web",
    ports=(ServicePort(80, name="http", target_port=8080), ServicePort(53, "UDP", name="dns")),
    cluster_ips=("10.96.0.10", "fd00:96::a"),
    endpoints=(Endpoint("10.244.1.2"), Endpoint("10.244.2.2"), Endpoint("10.244.3.2", ready=False),
               Endpoint("fd00:244:1::2")),
)  # fmt: skip
EMPTY = Service("empty", namespace="prod", ports=(ServicePort(443),), cluster_ips=("10.96.0.11",))
STICKY = Service("sticky", ports=(ServicePort(80, target_port=8080),), cluster_ips=("10.96.0.13",),
                 session_affinity="ClientIP", affinity_timeout=60,
                 endpoints=(Endpoint("10.244.1.2"), Endpoint("10.244.2.2"), Endpoint("10.244.4.2")))  # fmt: skip
SELF = Service("self", ports=(ServicePort(80, target_port=8080),), cluster_ips=("10.96.0.14",),
               endpoints=(Endpoint("10.244.5.5"),))  # fmt: skip
A = ServiceTable.of([WEB, EMPTY, STICKY])
NEW = Service("new", ports=(ServicePort(8443),), cluster_ips=("10.96.0.20",), endpoints=(Endpoint("10.244.1.2"),))

CHANGES = {
    "add": A.replace([NEW]),
    "change endpoints": A.replace([WEB.with_endpoints((Endpoint("10.244.1.2"), Endpoint("10.244.7.7")))]),
    "one endpoint more": A.replace([WEB.with_endpoints((*WEB.endpoints, Endpoint("10.244.8.8")))]),
    "delete": A.replace(deletes=[WEB.key]),
    "affinity: an endpoint goes": A.replace([STICKY.with_endpoints(STICKY.endpoints[:2])]),
    "affinity switched off": A.replace([dataclasses.replace(STICKY, session_affinity="None")]),
    "affinity switched on": A.replace([dataclasses.replace(WEB, session_affinity="ClientIP", affinity_timeout=30)]),
    "reject: the last endpoint goes": A.replace([WEB.with_endpoints(())]),
    "reject: a port goes": A.replace([dataclasses.replace(WEB, ports=WEB.ports[:1])]),
    "first endpoint": A.replace([EMPTY.with_endpoints((Endpoint("10.244.9.9"),))]),
}


def loaded(table, family="IPv4"):
    fake = FakeKernel()
    fake.run(plan(build(table, family)))
    return fake


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
@pytest.mark.parametrize("what", CHANGES)
def test_a_change_leaves_what_a_fresh_load_of_the_new_table_leaves(what, family):
    b = CHANGES[what]
    fake = loaded(A, family)
    before = build(A, family)
    after, tx = before.apply(b, changed_keys(A, b))
    fake.run(tx)
    fresh = loaded(b, family)
    fam = "ip" if family == "IPv4" else "ip6"
    assert fake.dump(fam) == fresh.dump(fam) == render(build(b, family))
    assert render(after) == render(build(b, family))
    assert render(before) == render(build(A, family))  # apply changed nothing of the old one


def test_the_fake_holds_what_render_says():
    assert loaded(A).dump("ip") == render(build(A))


def test_a_full_plan_over_a_stale_table_converges_and_drops_what_went():
    fake = loaded(A)
    b = CHANGES["delete"]
    fake.run(plan(build(b), *fake.present("ip")))
    assert fake.dump("ip") == render(build(b))
    assert chain_name(WEB, "TCP", 80) not in fake.present("ip")[0]


def test_a_refused_transaction_changes_nothing():
    fake = loaded(A)
    before = fake.dump("ip")
    rs = build(A)
    tx = Transaction("ip", [AddElements(VIPS, ((("10.96.0.99",), None),)),
                            AddRules(dataclasses.replace(rs.chains()["services"], name="no-such-chain"))])  # fmt: skip
    with pytest.raises(DataplaneError) as err:
        fake.run(tx)
    assert err.value.is_not_found()
    assert fake.dump("ip") == before


def test_the_fake_refuses_what_the_kernel_refuses():
    fake = loaded(A)
    with pytest.raises(DataplaneError) as err:  # still the target of a draws element
        fake.run(Transaction("ip", [FlushChain("draw-2"), DeleteChain("draw-2")]))
    assert err.value.errno == errno.EBUSY
    with pytest.raises(DataplaneError) as err:  # still the target of a service-ips element
        fake.run(Transaction("ip", [FlushChain(chain_name(STICKY, "TCP", 80)), DeleteChain(chain_name(STICKY, "TCP", 80))]))
    assert err.value.errno == errno.EBUSY
    endpoints = build(A).endpoint_elements()
    key = next(iter(endpoints))
    from svcdns.dataplane.nftables.objects import ENDPOINTS

    with pytest.raises(DataplaneError) as err:  # a key that is there, with another value
        fake.run(Transaction("ip", [AddElements(ENDPOINTS, ((key, ("10.244.99.99", 1)),))]))
    assert err.value.is_already_exists()


# ---- packets through the fake's chains ---------------------------------------------------------------------

POD = "10.244.6.6"  # a client pod
FLOWS = ServiceTable.of([WEB, EMPTY, STICKY, SELF])


@pytest.fixture
def fake():
    return loaded(FLOWS)


@pytest.mark.parametrize("routed", [True, False], ids=["pod", "node"])
def test_to_a_cluster_ip_with_no_endpoints_is_rejected(fake, routed):
    assert fake.trace(Packet(POD, "10.96.0.11", "TCP", 443), routed=routed).verdict == "REJECT"


@pytest.mark.parametrize("routed", [True, False], ids=["pod", "node"])
def test_to_a_port_the_service_lacks_is_rejected(fake, routed):
    assert fake.trace(Packet(POD, "10.96.0.10", "TCP", 81), routed=routed).verdict == "REJECT"
    assert fake.trace(Packet(POD, "10.96.0.10", "UDP", 80), routed=routed).verdict == "REJECT"


@pytest.mark.parametrize("routed", [True, False], ids=["pod", "node"])
def test_to_vip_port_is_translated_to_each_ready_endpoint(fake, routed):
    got = {fake.trace(Packet(POD, "10.96.0.10", "TCP", 80), routed=routed, draw=lambda n, i=i: i % n).dnat
           for i in range(2)}  # fmt: skip
    assert got == {("10.244.1.2", 8080), ("10.244.2.2", 8080)}  # every number drawn: a ready endpoint
    t = fake.trace(Packet(POD, "10.96.0.10", "UDP", 53), routed=routed)
    assert t.verdict == "ACCEPT" and t.dnat in {("10.244.1.2", 53), ("10.244.2.2", 53)} and not t.masquerade


def test_ipv6_is_translated_in_its_own_table():
    fake = loaded(FLOWS, "IPv6")
    t = fake.trace(Packet("fd00:244:9::9", "fd00:96::a", "TCP", 80, family="ip6"), routed=True)
    assert t.dnat == ("fd00:244:1::2", 8080)


def test_a_pod_to_its_own_service_is_masqueraded(fake):
    t = fake.trace(Packet("10.244.5.5", "10.96.0.14", "TCP", 80), routed=True)
    assert t.dnat == ("10.244.5.5", 8080) and t.masquerade
    assert not fake.trace(Packet(POD, "10.96.0.14", "TCP", 80), routed=True).masquerade


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_a_pod_on_a_bridge_to_a_pod_on_a_bridge_is_masqueraded_and_no_one_else(family):
    """Without br_netfilter the reply would cross the bridge straight back, past the node's
    conntrack: the node masquerades bridge-to-bridge VIP traffic so the reply comes back to it."""
    fake = loaded(FLOWS, family)
    ip, client, vip = ("ip", POD, "10.96.0.10") if family == "IPv4" else ("ip6", "fd00:244:9::9", "fd00:96::a")
    bridged = fake.trace(Packet(client, vip, "TCP", 80, ip, "bridge", "bridge"), routed=True)
    assert bridged.dnat and bridged.masquerade
    for iif, oif in (("veth", "bridge"), ("bridge", "veth"), ("", "")):  # routed pods keep their address
        t = fake.trace(Packet(client, vip, "TCP", 80, ip, iif, oif), routed=True)
        assert t.dnat and not t.masquerade, (iif, oif)
    other = POD if family == "IPv4" else "fd00:244:1::2"  # not a VIP: untouched
    assert not fake.trace(Packet(client, other, "TCP", 8080, ip, "bridge", "bridge"), routed=True).masquerade


def test_a_sticky_client_keeps_its_endpoint(fake):
    first = fake.trace(Packet(POD, "10.96.0.13", "TCP", 80), routed=True, draw=lambda n: 2)
    assert first.dnat == ("10.244.4.2", 8080)
    for i in range(3):  # whatever it would draw next
        assert fake.trace(Packet(POD, "10.96.0.13", "TCP", 80), routed=True, draw=lambda n, i=i: i).dnat == first.dnat
    other = fake.trace(Packet("10.244.6.7", "10.96.0.13", "TCP", 80), routed=True, draw=lambda n: 0)
    assert other.dnat == ("10.244.1.2", 8080)


def test_traffic_to_other_addresses_is_untouched(fake):
    t = fake.trace(Packet(POD, "10.244.1.2", "TCP", 8080), routed=True)
    assert t == type(t)("ACCEPT", None, False)


def test_a_sticky_client_picks_again_when_its_endpoints_change(fake):
    assert fake.trace(Packet(POD, "10.96.0.13", "TCP", 80), routed=True, draw=lambda n: 2).dnat == ("10.244.4.2", 8080)
    fewer = FLOWS.replace([STICKY.with_endpoints(STICKY.endpoints[:2])])  # its endpoint, number 3, goes
    fake.run(build(FLOWS).apply(fewer, changed_keys(FLOWS, fewer))[1])
    again = fake.trace(Packet(POD, "10.96.0.13", "TCP", 80), routed=True, draw=lambda n: 1)
    assert again.verdict == "ACCEPT" and again.dnat == ("10.244.2.2", 8080)  # not number 3: nothing there now


CIDRS = ("10.96.0.0/12", "fd00:96::/108")
CLUSTER_DNS = ("10.96.0.10", "fd00:96::a")  # inside the CIDRs and on the node (svcdns0): delivered locally


@pytest.fixture(params=["IPv4", "IPv6"])
def with_cidrs(request):
    """FLOWS with the service CIDRs given, on a node holding the cluster DNS address; the Services'
    VIPs moved off it (in production no Service holds it)."""
    six = request.param == "IPv6"
    moved = [dataclasses.replace(s, cluster_ips=tuple(ipaddress.ip_address(int(ip) + 0x100) for ip in s.cluster_ips))
             for s in FLOWS]  # fmt: skip
    fake = FakeKernel(local=("fd00:96::a",) if six else ("10.96.0.10",))
    table = ServiceTable.of(moved)
    fake.run(plan(build(table, request.param, CIDRS)))
    fam = "ip6" if six else "ip"

    def packet(daddr, proto="TCP", port=80):
        return Packet("fd00:244:9::9" if six else POD, daddr, proto, port, family=fam)

    vip = str(table.get("default", "web").vip(request.param))
    return fake, packet, vip, ("fd00:96::5:5" if six else "10.96.5.5"), ("fd00:96::a" if six else "10.96.0.10"), fam


@pytest.mark.parametrize("routed", [True, False], ids=["pod", "node"])
def test_an_address_of_the_service_cidrs_no_service_holds_is_rejected(with_cidrs, routed):
    fake, packet, vip, unallocated, _, _ = with_cidrs
    for proto in ("TCP", "UDP"):
        assert fake.trace(packet(unallocated, proto), routed=routed).verdict == "REJECT"
    assert fake.trace(packet(vip), routed=routed, draw=lambda n: 0).dnat is not None  # a VIP still translates


@pytest.mark.parametrize("routed", [True, False], ids=["pod", "node"])
def test_the_cluster_dns_address_on_the_node_is_not_rejected(with_cidrs, routed):
    fake, packet, _, _, dns, _ = with_cidrs
    t = fake.trace(packet(dns, "UDP", 53), routed=routed)
    assert t.verdict == "ACCEPT" and t.dnat is None


def test_outside_the_service_cidrs_nothing_changes(with_cidrs):
    fake, packet, _, _, _, fam = with_cidrs
    other = "fd00:97::5" if fam == "ip6" else "10.112.0.5"  # just past 10.96.0.0/12
    assert fake.trace(packet(other), routed=True) == type(fake.trace(packet(other), routed=True))("ACCEPT", None, False)


def test_the_commit_stamp_is_one_comment_rule_and_keeps_the_table_as_render_says():
    fake = loaded(A)
    for n in (1, 2):  # each commit replaces the last one's stamp
        tx = Transaction("ip")
        stamp(tx, f"svcdns pid 1 commit {n}")
        fake.run(tx)
    dump = fake.dump("ip")
    assert 'chain commit {\n\t\tcomment "svcdns pid 1 commit 2"\n\t}' in dump and "commit 1" not in dump
    assert dump.replace('\t\tcomment "svcdns pid 1 commit 2"\n', "") == render(build(A))
