"""The answers the references expect: cases from CoreDNS's plugin/kubernetes tables (handler_test.go,
handler_case_test.go, reverse_test.go, kubernetes_apex_test.go) and the Kubernetes DNS specification
(kubernetes/dns docs/specification.md), on the same Services, as {qname, qtype, rcode, records as
zone-file text}. Where svcdns answers differently on purpose, the case says so."""

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from svcdns.dns.answer import FORWARD, answer_cacheable
from svcdns.dns.zone import compile_zone
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.table import ServiceTable

HTTP = (ServicePort(80, name="http"),)

# CoreDNS handler_test.go's svcIndex and epsIndex (the Services svcdns can express)
COREDNS = [
    Service("kubedns", "kube-system", ports=(ServicePort(53, "UDP", name="dns"),), cluster_ips=("10.0.0.10",),
            endpoints=(Endpoint("172.0.0.100"),)),
    Service("svc1", "testns", ports=HTTP, cluster_ips=("10.0.0.1",), endpoints=(Endpoint("172.0.0.1", hostname="ep1a"),)),
    Service("svcempty", "testns", ports=HTTP, cluster_ips=("10.0.0.1",)),
    Service("svc6", "testns", ports=HTTP, cluster_ips=("1234:abcd::1",)),
    Service("hdls1", "testns", type="Headless", ports=HTTP, endpoints=(
        Endpoint("172.0.0.2"), Endpoint("172.0.0.3"),
        Endpoint("172.0.0.4", hostname="dup-name"), Endpoint("172.0.0.5", hostname="dup-name"),
        Endpoint("5678:abcd::1"), Endpoint("5678:abcd::2"))),
    Service("hdlsprtls", "testns", type="Headless", endpoints=(Endpoint("172.0.0.20"),)),
    Service("external", "testns", type="ExternalName", external_name="ext.interwebs.test", ports=HTTP),
    Service("external-to-service", "testns", type="ExternalName", external_name="svc1.testns.svc.cluster.local.",
            ports=HTTP),
    Service("svc-dual-stack", "testns", ports=HTTP, cluster_ips=("10.0.0.3", "10::3")),
]  # fmt: skip
SERIAL = 1499347823
SOA = f"cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. {SERIAL} 7200 1800 86400 5"


def zone_of(services, **kw):
    return compile_zone(ServiceTable.of(services), serial=SERIAL, **kw)


ZONE = zone_of(COREDNS)


def ask(zone, qname, qtype="A", edns=None, ra=False):
    q = DNSRecord.question(qname, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    out, _, _ = answer_cacheable(zone, bytes(q.pack()), udp=True, ra=ra)
    assert out is not FORWARD, f"{qname} {qtype} was sent upstream"
    return DNSRecord.parse(out)


def text(records):
    """Zone-file text, one line per record, whitespace normalised, OPT left out, sorted (as
    CoreDNS's SortAndCheck)."""
    return sorted(" ".join(str(r).split()) for r in records if r.rtype != QTYPE.OPT)


def check(zone, qname, qtype, rcode, answer=(), ns=(), extra=(), edns=None):
    r = ask(zone, qname, qtype, edns)
    assert RCODE.get(r.header.rcode) == rcode
    assert (text(r.rr), text(r.auth), text(r.ar)) == (sorted(answer), sorted(ns), sorted(extra))
    assert r.header.tc == 0
    return r


@pytest.mark.parametrize(
    "qname, qtype, rcode, answer, ns, extra",
    [
        ("svc1.testns.svc.cluster.local.", "A", "NOERROR", ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"], [], []),
        ("svcempty.testns.svc.cluster.local.", "A", "NOERROR", ["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"],
         [], []),
        ("_http._tcp.svc1.testns.svc.cluster.local.", "SRV", "NOERROR",
         ["_http._tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local."], [],
         ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
        ("hdls1.testns.svc.cluster.local.", "A", "NOERROR",
         [f"hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.{i}" for i in (2, 3, 4, 5)], [], []),
        ("hdls1.testns.svc.cluster.local.", "AAAA", "NOERROR",
         ["hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1", "hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2"],
         [], []),
        ("hdlsprtls.testns.svc.cluster.local.", "A", "NOERROR", ["hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"],
         [], []),
        ("172-0-0-20.hdlsprtls.testns.svc.cluster.local.", "A", "NOERROR",
         ["172-0-0-20.hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"], [], []),
        ("172-0-0-2.hdls1.testns.svc.cluster.local.", "A", "NOERROR",
         ["172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2"], [], []),
        ("dup-name.hdls1.testns.svc.cluster.local.", "A", "NOERROR",
         ["dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
          "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5"], [], []),
        ("5678-abcd--2.hdls1.testns.svc.cluster.local", "AAAA", "NOERROR",
         ["5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2"], [], []),
        ("external.testns.svc.cluster.local.", "CNAME", "NOERROR",
         ["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."], [], []),
        ("svc1.testns.svc.cluster.local.", "AAAA", "NOERROR", [], [SOA], []),
        ("svc0.testns.svc.cluster.local.", "A", "NXDOMAIN", [], [SOA], []),
        ("svc0.svc-nons.svc.cluster.local.", "A", "NXDOMAIN", [], [SOA], []),
        ("bogusendpoint.hdls1.testns.svc.cluster.local.", "A", "NXDOMAIN", [], [SOA], []),
        ("bogusendpoint.svc0.testns.svc.cluster.local.", "A", "NXDOMAIN", [], [SOA], []),
        ("svc6.testns.svc.cluster.local.", "AAAA", "NOERROR", ["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"],
         [], []),
        ("_http._tcp.svc6.testns.svc.cluster.local.", "SRV", "NOERROR",
         ["_http._tcp.svc6.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc6.testns.svc.cluster.local."], [],
         ["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"]),
        ("svc.cluster.local.", "A", "NOERROR", [], [SOA], []),
        ("testns.svc.cluster.local.", "A", "NOERROR", [], [SOA], []),
        ("svc.cluster.local.", "NS", "NOERROR", [], [SOA], []),
        ("foo.cluster.local.", "NS", "NXDOMAIN", [], [SOA], []),
        ("foo.svc.cluster.local.", "NS", "NXDOMAIN", [], [SOA], []),
        ("svc-dual-stack.testns.svc.cluster.local.", "A", "NOERROR",
         ["svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3"], [], []),
        ("svc-dual-stack.testns.svc.cluster.local.", "AAAA", "NOERROR",
         ["svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3"], [], []),
        ("svc1.testns.svc.cluster.local.", "SOA", "NOERROR", [], [SOA], []),
        ("endpoint.external.testns.svc.cluster.local.", "CNAME", "NXDOMAIN", [], [SOA], []),
        ("cluster.local.", "SOA", "NOERROR", [SOA], [], []),  # kubernetes_apex_test.go
        ("cluster.local.", "HINFO", "NOERROR", [], [SOA], []),
        # reverse_test.go, on this fixture's addresses
        ("4.0.0.172.in-addr.arpa.", "PTR", "NOERROR",
         ["4.0.0.172.in-addr.arpa. 5 IN PTR dup-name.hdls1.testns.svc.cluster.local."], [], []),
    ],
)  # fmt: skip
def test_coredns_handler_cases(qname, qtype, rcode, answer, ns, extra):
    check(ZONE, qname, qtype, rcode, answer, ns, extra)


def test_1_an_srv_set_holds_no_duplicates():
    """Two ready endpoints named dup-name: one SRV record for the name, both addresses as glue
    (handler_test.go "SRV Service (Headless)"; RFC 2181 section 5)."""
    check(ZONE, "_http._tcp.hdls1.testns.svc.cluster.local.", "SRV", "NOERROR",
          [f"_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 {host}.hdls1.testns.svc.cluster.local."
           for host in ("172-0-0-2", "172-0-0-3", "5678-abcd--1", "5678-abcd--2", "dup-name")],
          [],
          ["172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
           "172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
           "5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
           "5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
           "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
           "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5"], edns=1232)  # fmt: skip
    # every rotation of the set holds each record once
    for turn in range(8):
        q = DNSRecord.question("_http._tcp.hdls1.testns.svc.cluster.local.", "SRV")
        out, _, _ = answer_cacheable(ZONE, bytes(q.pack()), udp=False, turn=turn)
        srv = [str(r.rdata) for r in DNSRecord.parse(out).rr]
        assert len(srv) == len(set(srv)) == 5


def test_3_a_headless_service_without_ready_endpoints_does_not_exist():
    """Spec 2.4.1: "If there are no ready endpoints for the headless Service, the answer should be
    NXDOMAIN" (CoreDNS answers so). Its namespace still exists."""
    zone = zone_of([Service("hdlsempty", "emptyns", type="Headless", ports=HTTP,
                            endpoints=(Endpoint("172.0.0.9", ready=False),))])  # fmt: skip
    for qname, qtype, rcode in [
        ("hdlsempty.emptyns.svc.cluster.local.", "A", "NXDOMAIN"),
        ("hdlsempty.emptyns.svc.cluster.local.", "AAAA", "NXDOMAIN"),
        ("_http._tcp.hdlsempty.emptyns.svc.cluster.local.", "SRV", "NXDOMAIN"),
        ("172-0-0-9.hdlsempty.emptyns.svc.cluster.local.", "A", "NXDOMAIN"),
        ("emptyns.svc.cluster.local.", "A", "NOERROR"),
    ]:
        check(zone, qname, qtype, rcode, ns=[SOA])


@pytest.mark.parametrize(
    "qname, qtype, rcode, answer, ns, extra",
    [
        ("SvC1.TeStNs.SvC.cLuStEr.LoCaL.", "A", "NOERROR", ["SvC1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN A 10.0.0.1"], [], []),
        ("Cluster.local.", "SOA", "NOERROR",  # CoreDNS also writes the rdata's names in the query's case
         [f"Cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. {SERIAL} 7200 1800 86400 5"], [], []),
        ("CLUSTER.LOCAL.", "SOA", "NOERROR",
         [f"CLUSTER.LOCAL. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. {SERIAL} 7200 1800 86400 5"], [], []),
        # the SOA in a negative answer keeps the zone's own case (CoreDNS echoes it): it is
        # precompiled once for every name, and no client compares it
        ("not-a-service.testns.svc.ClUsTeR.lOcAl.", "A", "NXDOMAIN", [], [SOA], []),
    ],
)  # fmt: skip
def test_6_the_query_case_is_echoed(qname, qtype, rcode, answer, ns, extra):
    """handler_case_test.go's table."""
    check(ZONE, qname, qtype, rcode, answer, ns, extra)


def test_7_an_answer_that_fits_goes_without_the_additional_records_that_do_not():
    """handler_test.go's headless SRV case, asked without EDNS (512 bytes): the six addresses do
    not fit beside the five SRV records, so they are left out and TC stays 0 (RFC 2181 section 9)."""
    r = check(ZONE, "_http._tcp.hdls1.testns.svc.cluster.local.", "SRV", "NOERROR",
              [f"_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 {host}.hdls1.testns.svc.cluster.local."
               for host in ("172-0-0-2", "172-0-0-3", "5678-abcd--1", "5678-abcd--2", "dup-name")])  # fmt: skip
    assert len(r.pack()) <= 512
    # with EDNS at 512 too, the OPT record kept
    r = ask(ZONE, "_http._tcp.hdls1.testns.svc.cluster.local.", "SRV", edns=512)
    assert r.header.tc == 0 and len(r.rr) == 5 and [QTYPE.get(a.rtype) for a in r.ar] == ["OPT"]
    # an answer section that does not fit by itself still truncates
    many = [
        Service("big", type="Headless", ports=HTTP, endpoints=tuple(Endpoint(f"10.245.0.{i}") for i in range(1, 40)))
    ]
    r = ask(zone_of(many), "_http._tcp.big.default.svc.cluster.local.", "SRV")
    assert r.header.tc == 1 and not r.rr and not r.ar


def test_5_the_ns_name_has_the_cluster_dns_address():
    """kubernetes_apex_test.go: the NS answer carries its name's address; the name answers it."""
    ns = "cluster.local. 5 IN NS ns.dns.cluster.local."
    check(ZONE, "cluster.local.", "NS", "NOERROR", [ns], [], ["ns.dns.cluster.local. 5 IN A 10.96.0.10"])
    check(ZONE, "ns.dns.cluster.local.", "A", "NOERROR", ["ns.dns.cluster.local. 5 IN A 10.96.0.10"])
    check(ZONE, "ns.dns.cluster.local.", "AAAA", "NOERROR", [], [SOA])
    check(ZONE, "dns.cluster.local.", "A", "NOERROR", [], [SOA])
    # the configured cluster DNS address, of either family
    for address, rtype in [("10.100.0.10", "A"), ("fd00:96::a", "AAAA")]:
        zone = zone_of(COREDNS, cluster_dns=address)
        glue = f"ns.dns.cluster.local. 5 IN {rtype} {address}"
        check(zone, "cluster.local.", "NS", "NOERROR", [ns], [], [glue])
        check(zone, "ns.dns.cluster.local.", rtype, "NOERROR", [glue])


def test_4_an_address_shared_by_services_has_a_ptr_for_each_name():
    """Spec 2.3.3 and 2.4.3: a PTR record per name of the address. handler_test.go's fixture gives
    svc1 and svcempty the same ClusterIP; two headless Services here share an endpoint address.
    The set is sorted: the same from run to run, whatever the order of the table."""
    check(ZONE, "1.0.0.10.in-addr.arpa.", "PTR", "NOERROR",
          ["1.0.0.10.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local.",
           "1.0.0.10.in-addr.arpa. 5 IN PTR svcempty.testns.svc.cluster.local."])  # fmt: skip
    shared = [
        Service("web", "shop", type="Headless", ports=HTTP, endpoints=(Endpoint("10.244.0.20", hostname="web-0"),)),
        Service("metrics", "ops", type="Headless", ports=HTTP, endpoints=(Endpoint("10.244.0.20"),)),
    ]
    names = ["20.0.244.10.in-addr.arpa. 5 IN PTR 10-244-0-20.metrics.ops.svc.cluster.local.",
             "20.0.244.10.in-addr.arpa. 5 IN PTR web-0.web.shop.svc.cluster.local."]  # fmt: skip
    forward = ask(zone_of(shared), "20.0.244.10.in-addr.arpa.", "PTR")
    backward = ask(zone_of(shared[::-1]), "20.0.244.10.in-addr.arpa.", "PTR")
    assert text(forward.rr) == names and forward.pack()[2:] == backward.pack()[2:]  # the ID aside
    assert [str(r.rdata) for r in forward.rr] == sorted(str(r.rdata) for r in forward.rr)
    # one Service leaves, in an update: the other's name stays
    from svcdns.dns.zone import ZoneCompiler

    compiler = ZoneCompiler()
    for services in (shared, shared[1:], shared, shared[:1]):
        compiler.update(ServiceTable.of(services), serial=SERIAL)
        assert compiler.zone.entries == zone_of(services).entries
    check(compiler.zone, "20.0.244.10.in-addr.arpa.", "PTR", "NOERROR", names[1:])


def test_2_an_external_name_inside_the_zone_is_answered_from_the_zone():
    """handler_test.go "CNAME External To Internal Service": the CNAME and the target's A record,
    CNAME first, for a client that may recurse too (nothing goes upstream)."""
    from svcdns.dns.answer import CHASE

    qname = "external-to-service.testns.svc.cluster.local"
    cname = "external-to-service.testns.svc.cluster.local. 5 IN CNAME svc1.testns.svc.cluster.local."
    r = check(ZONE, qname, "A", "NOERROR", [cname, "svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"])
    assert QTYPE.get(r.rr[0].rtype) == "CNAME"
    check(ZONE, qname, "AAAA", "NOERROR", [cname])  # the target has no AAAA
    for qtype in ("A", "AAAA"):
        q = bytes(DNSRecord.question(qname, qtype).pack())
        assert answer_cacheable(ZONE, q, ra=True)[2] is not CHASE
    # outside the zone, still chased for those who may recurse
    q = bytes(DNSRecord.question("external.testns.svc.cluster.local", "A").pack())
    assert answer_cacheable(ZONE, q, ra=True)[2] == CHASE
    # a headless target: its addresses, rotating as its own answer does
    zone = zone_of([*COREDNS, Service("to-hdls", "testns", type="ExternalName",
                                      external_name="hdls1.testns.svc.cluster.local")])  # fmt: skip
    firsts = set()
    for turn in range(4):
        q = bytes(DNSRecord.question("to-hdls.testns.svc.cluster.local", "A").pack())
        r = DNSRecord.parse(answer_cacheable(zone, q, turn=turn)[0])
        assert QTYPE.get(r.rr[0].rtype) == "CNAME" and len(r.rr) == 5
        firsts.add(str(r.rr[1].rdata))
    assert len(firsts) == 4


def test_2_an_external_name_follows_its_target_as_it_changes():
    from svcdns.dns.zone import ZoneCompiler

    ext = Service("alias", type="ExternalName", external_name="web.default.svc.cluster.local")
    web = Service("web", ports=HTTP, cluster_ips=("10.96.0.50",))
    steps = [
        ([ext], []),  # the target does not exist yet: the CNAME alone
        ([ext, web], ["web.default.svc.cluster.local. 5 IN A 10.96.0.50"]),
        ([ext, Service("web", ports=HTTP, cluster_ips=("10.96.0.51",))], ["web.default.svc.cluster.local. 5 IN A 10.96.0.51"]),
        ([ext, Service("web", type="Headless", ports=HTTP, endpoints=(Endpoint("10.244.0.7"),))],
         ["web.default.svc.cluster.local. 5 IN A 10.244.0.7"]),
        ([ext, Service("web", type="ExternalName", external_name="example.org")], []),  # one level only
        ([ext], []),
    ]  # fmt: skip
    compiler = ZoneCompiler()
    cname = "alias.default.svc.cluster.local. 5 IN CNAME web.default.svc.cluster.local."
    for services, addresses in steps:
        compiler.update(ServiceTable.of(services), serial=SERIAL)
        fresh = zone_of(services)
        assert compiler.zone.entries == fresh.entries and compiler.zone.cnames == fresh.cnames
        check(compiler.zone, "alias.default.svc.cluster.local", "A", "NOERROR", [cname, *addresses])
    compiler.update(ServiceTable.of([web]), serial=SERIAL)
    check(compiler.zone, "alias.default.svc.cluster.local", "A", "NXDOMAIN", [], [SOA])


def test_7_every_compiled_body_parses_without_its_additional_section():
    import struct

    for (name, rtype), variants in ZONE.entries.items():
        for sections, (an, ns, _), cut in variants:
            header = struct.pack("!HHHHHH", 0, 0x8400, 1, an, ns, 0)
            msg = DNSRecord.parse(header + name + struct.pack("!HH", rtype, 1) + sections[:cut])
            assert len(msg.rr) == an and not msg.ar


def test_the_cluster_dns_service_has_its_kubernetes_names():
    """Issue 14: kube-dns.kube-system.svc.<zone> answers the cluster DNS address (as in Kubernetes)."""
    name = "kube-dns.kube-system.svc.cluster.local."
    check(ZONE, name, "A", "NOERROR", [f"{name} 5 IN A 10.96.0.10"])
    srv = f"_dns._udp.{name}"
    check(ZONE, srv, "SRV", "NOERROR", [f"{srv} 5 IN SRV 0 100 53 {name}"], [], [f"{name} 5 IN A 10.96.0.10"])
    zone = zone_of(COREDNS, cluster_dns="10.100.0.10")
    check(zone, name, "A", "NOERROR", [f"{name} 5 IN A 10.100.0.10"])
