"""The zone's own packer (svcdns.dns.pack) gives dnslib's bytes for every answer the zone compiles."""

import struct

import pytest
from dnslib import AAAA, PTR, QTYPE, RR, SRV, A, DNSHeader, DNSLabel, DNSQuestion, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

import svcdns.dns.zone as zone_mod
from svcdns.dns.pack import pack_sections
from svcdns.dns.wire import name_to_wire
from svcdns.dns.zone import compile_zone
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.table import ServiceTable

SHAPES = [
    Service("web", ports=(ServicePort(80, name="http", target_port=8080), ServicePort(53, "UDP", name="dns")),
            cluster_ips=("10.96.0.10", "fd00:96::a"), endpoints=(Endpoint("10.244.1.2"),)),
    Service("plain", namespace="prod", ports=(ServicePort(8080),), cluster_ips=("10.96.0.11",)),
    Service("v6", ports=(ServicePort(443, name="https"),), cluster_ips=("fd00:96::b",)),
    Service("db", type="Headless", ports=(ServicePort(5432, name="pg"), ServicePort(9187, name="metrics")),
            endpoints=(Endpoint("10.244.1.3", hostname="db-0"), Endpoint("10.244.2.3"),
                       Endpoint("fd00:244::3"), Endpoint("10.244.3.3", ready=False))),
    Service("twin", type="Headless", ports=(ServicePort(80, name="http"),),
            endpoints=(Endpoint("10.244.2.3"),)),  # shares 10.244.2.3 with db: one PTR set, two names
    Service("ext", type="ExternalName", external_name="example.org"),
    Service("alias", type="ExternalName", external_name="web.default.svc.cluster.local"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, rtype, records",
    [
        ("web.default.svc.cluster.local.", QTYPE.A, [A("10.96.0.50")]),
        ("web.default.svc.cluster.local.", QTYPE.A, [A("10.244.0.5"), A("10.244.0.6"), A("10.244.0.7")]),
        ("web6.default.svc.cluster.local.", QTYPE.AAAA, [AAAA("fd00:96::5"), AAAA("fd00:244::1")]),
        ("50.0.96.10.in-addr.arpa.", QTYPE.PTR, [PTR("web.default.svc.cluster.local.")]),
        (
            "2.1.244.10.in-addr.arpa.",
            QTYPE.PTR,
            [PTR("a.web.default.svc.cluster.local."), PTR("b.web.default.svc.cluster.local.")],
        ),
        (
            "_http._tcp.web.default.svc.cluster.local.",
            QTYPE.SRV,
            [SRV(0, 50, 80, "a.web.default.svc.cluster.local."), SRV(0, 50, 80, "web.default.svc.cluster.local.")],
        ),
    ],
)
def test_one_records_set_packs_as_dnslib_does(name, rtype, records):
    answers = [RR(name, rtype, rdata=r, ttl=5) for r in records]
    msg = DNSRecord(DNSHeader(id=0, qr=1, aa=1), q=DNSQuestion(name, rtype))
    for a in answers:
        msg.add_answer(a)
    packed = msg.pack()
    expected = packed[12 + len(name_to_wire(name)) + 4 :]
    assert pack_sections(DNSLabel(name).label, answers) == (expected, (len(answers), 0, 0), len(expected))


def both(table: ServiceTable, monkeypatch: pytest.MonkeyPatch):
    fast = compile_zone(table, serial=7)
    with monkeypatch.context() as m:
        m.setattr(zone_mod, "pack_sections", lambda *a, **k: None)  # every body through dnslib
        slow = compile_zone(table, serial=7)
    return fast, slow


def assert_same(fast, slow) -> None:
    assert dict(fast.entries.items()) == dict(slow.entries.items())
    assert dict(fast.cnames.items()) == dict(slow.cnames.items())
    assert set(fast.names.keys()) == set(slow.names.keys())


def test_every_shape_packs_as_dnslib_does(monkeypatch):
    assert_same(*both(ServiceTable.of(SHAPES), monkeypatch))


def test_the_fast_path_is_the_one_taken(monkeypatch):
    """A, AAAA, SRV with its glue, PTR and CNAME never reach dnslib's packer (the point of it)."""
    packed = []
    real = DNSRecord.pack
    monkeypatch.setattr(DNSRecord, "pack", lambda self: packed.append(self.q.qtype) or real(self))
    compile_zone(ServiceTable.of(SHAPES[:5]), serial=7)
    assert set(packed) <= {2, 6, 16}  # NS (with glue), SOA, TXT: the apex only


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ClusterIP", "Headless"]), st.integers(0, 12), st.booleans(),
                          st.integers(1, 3), st.booleans()), min_size=1, max_size=6))  # fmt: skip
def test_random_tables_pack_as_dnslib_does(shapes):
    table = []
    for i, (kind, n_eps, dual, n_ports, hostnames) in enumerate(shapes):
        ports = tuple(
            ServicePort(1000 + p, "UDP" if p % 2 else "TCP", name=f"p{p}" if n_ports > 1 or hostnames else "")
            for p in range(n_ports)
        )
        eps = tuple(Endpoint(f"10.244.{i}.{k + 1}", hostname=f"h-{k}" if hostnames and k % 2 else "",
                             ready=k % 5 != 4) for k in range(n_eps))  # fmt: skip
        if dual:
            eps += tuple(Endpoint(f"fd00:244::{i}:{k + 1}") for k in range(n_eps // 2))
        ips = (f"10.96.{i}.1", f"fd00:96::{i}:1") if dual else (f"10.96.{i}.1",)
        table.append(Service(f"s{i}", ports=ports, type=kind, endpoints=eps,
                             cluster_ips=ips if kind == "ClusterIP" else ()))  # fmt: skip
    with pytest.MonkeyPatch.context() as m:
        assert_same(*both(ServiceTable.of(table), m))


def test_an_answer_past_16_kib_points_only_where_a_pointer_reaches():
    """Beyond 0x3FFF a pointer cannot say the offset (dnslib would point at its low 14 bits): names
    there are written out, and the message still reads back as every record."""
    eps = tuple(Endpoint(f"10.{k // 250}.{k % 250}.1", hostname=f"host-{k}") for k in range(700))
    svc = Service("big", type="Headless", ports=(ServicePort(80, name="http"),), endpoints=eps)
    z = compile_zone(ServiceTable.of([svc]), serial=7)
    qname = b"\x05_http\x04_tcp\x03big\x07default\x03svc\x07cluster\x05local\x00"
    (sections, (an, _, ar), _cut), *_ = z.entries[(qname, 33)]
    assert len(sections) > 0x4000
    msg = DNSRecord.parse(struct.pack("!HHHHHH", 0, 0x8400, 1, an, 0, ar) + qname + b"\x00\x21\x00\x01" + sections)
    assert sorted(str(r.rdata.target) for r in msg.rr) == sorted(
        f"host-{k}.big.default.svc.cluster.local." for k in range(700)
    )
    assert sorted(str(r.rname) for r in msg.ar) == sorted(str(r.rdata.target) for r in msg.rr)
