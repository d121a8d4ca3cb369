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
