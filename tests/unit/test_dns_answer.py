"""The zone planner and the answer function, without sockets: tables of question -> rcode + records."""

import random
import struct

import pytest
from dnslib import EDNS0, QTYPE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from svcdns.dns.answer import FORWARD, answer
from svcdns.dns.zone import compile_zone, empty_zone
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.table import ServiceTable

TABLE = ServiceTable.of(
    [
        Service(
            "web",
            ports=(ServicePort(80, name="http", target_port=8080), ServicePort(53, "UDP", name="dns")),
            cluster_ips=("10.96.0.10", "fd00:96::a"),
            endpoints=(Endpoint("10.244.1.2"),),
        ),
        Service("plain", namespace="prod", ports=(ServicePort(8080),), cluster_ips=("10.96.0.11",)),
        Service(
            "db",
            type="Headless",
            ports=(ServicePort(5432, name="pg"),),
            endpoints=(
                Endpoint("10.244.1.3", hostname="db-0"),
                Endpoint("10.244.2.3"),
                Endpoint("10.244.3.3", ready=False),
            ),
        ),
        Service("ext", type="ExternalName", external_name="example.org"),
    ]
)
ZONE = compile_zone(TABLE, serial=42)
SOA = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5"


def ask(name, qtype="A", zone=ZONE, edns=None, udp=True, ra=False, turn=0):
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    out, rcode = answer(zone, bytes(q.pack()), udp=udp, ra=ra, turn=turn)
    if out is FORWARD:
        return "FORWARD", None
    return DNSRecord.parse(out), q


def text(records):
    return sorted(" ".join(str(r).split()) for r in records)


@pytest.mark.parametrize(
    "qname, qtype, rcode, answers, authority, additional",
    [
        ("web.default.svc.cluster.local", "A", "NOERROR", ["web.default.svc.cluster.local. 5 IN A 10.96.0.10"], [], []),
        ("web.default.svc.cluster.local", "AAAA", "NOERROR", ["web.default.svc.cluster.local. 5 IN AAAA fd00:96::a"], [], []),
        (
            "_http._tcp.web.default.svc.cluster.local", "SRV", "NOERROR",
            ["_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local."],
            [],
            ["web.default.svc.cluster.local. 5 IN A 10.96.0.10", "web.default.svc.cluster.local. 5 IN AAAA fd00:96::a"],
        ),
        ("_dns._udp.web.default.svc.cluster.local", "SRV", "NOERROR",
         ["_dns._udp.web.default.svc.cluster.local. 5 IN SRV 0 100 53 web.default.svc.cluster.local."], [],
         ["web.default.svc.cluster.local. 5 IN A 10.96.0.10", "web.default.svc.cluster.local. 5 IN AAAA fd00:96::a"]),
        ("_http._udp.web.default.svc.cluster.local", "SRV", "NXDOMAIN", [], [SOA], []),
        ("plain.prod.svc.cluster.local", "A", "NOERROR", ["plain.prod.svc.cluster.local. 5 IN A 10.96.0.11"], [], []),
        ("plain.prod.svc.cluster.local", "AAAA", "NOERROR", [], [SOA], []),  # NODATA
        ("db.default.svc.cluster.local", "A", "NOERROR",
         ["db.default.svc.cluster.local. 5 IN A 10.244.1.3", "db.default.svc.cluster.local. 5 IN A 10.244.2.3"], [], []),
        ("db-0.db.default.svc.cluster.local", "A", "NOERROR", ["db-0.db.default.svc.cluster.local. 5 IN A 10.244.1.3"], [], []),
        ("10-244-2-3.db.default.svc.cluster.local", "A", "NOERROR",
         ["10-244-2-3.db.default.svc.cluster.local. 5 IN A 10.244.2.3"], [], []),
        ("10-244-3-3.db.default.svc.cluster.local", "A", "NXDOMAIN", [], [SOA], []),  # not ready: not published
        ("_pg._tcp.db.default.svc.cluster.local", "SRV", "NOERROR",
         ["_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 50 5432 10-244-2-3.db.default.svc.cluster.local.",
          "_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 50 5432 db-0.db.default.svc.cluster.local."], [],
         ["10-244-2-3.db.default.svc.cluster.local. 5 IN A 10.244.2.3", "db-0.db.default.svc.cluster.local. 5 IN A 10.244.1.3"]),
        ("ext.default.svc.cluster.local", "A", "NOERROR", ["ext.default.svc.cluster.local. 5 IN CNAME example.org."], [], []),
        ("ext.default.svc.cluster.local", "AAAA", "NOERROR", ["ext.default.svc.cluster.local. 5 IN CNAME example.org."], [], []),
        ("10.0.96.10.in-addr.arpa", "PTR", "NOERROR", ["10.0.96.10.in-addr.arpa. 5 IN PTR web.default.svc.cluster.local."], [], []),
        ("a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa", "PTR", "NOERROR",
         ["a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa. 5 IN PTR web.default.svc.cluster.local."], [], []),
        ("3.1.244.10.in-addr.arpa", "PTR", "NOERROR",
         ["3.1.244.10.in-addr.arpa. 5 IN PTR db-0.db.default.svc.cluster.local."], [], []),
        ("nope.default.svc.cluster.local", "A", "NXDOMAIN", [], [SOA], []),
        ("default.svc.cluster.local", "A", "NOERROR", [], [SOA], []),  # an empty non-terminal: NODATA
        ("svc.cluster.local", "A", "NOERROR", [], [SOA], []),
        ("cluster.local", "SOA", "NOERROR", [SOA], [], []),
        ("cluster.local", "NS", "NOERROR", ["cluster.local. 5 IN NS ns.dns.cluster.local."], [],
         ["ns.dns.cluster.local. 5 IN A 10.96.0.10"]),
        ("dns-version.cluster.local", "TXT", "NOERROR", ['dns-version.cluster.local. 5 IN TXT "1.1.0"'], [], []),
        ("web.default.svc.cluster.local", "AXFR", "REFUSED", [], [], []),
    ],
)  # fmt: skip
def test_answers(qname, qtype, rcode, answers, authority, additional):
    r, _ = ask(qname, qtype)
    assert QTYPE.get(r.q.qtype) == qtype
    assert {0: "NOERROR", 3: "NXDOMAIN", 5: "REFUSED"}[r.header.rcode] == rcode
    assert text(r.rr) == sorted(answers)
    assert text(r.auth) == sorted(authority)
    assert text(r.ar) == sorted(additional)
    assert r.header.aa == 1


def test_case_is_echoed_and_matching_is_case_insensitive():
    r, q = ask("WeB.DeFault.SVC.cluster.LOCAL")
    assert str(r.q.qname) == "WeB.DeFault.SVC.cluster.LOCAL."
    assert str(r.rr[0].rname) == "WeB.DeFault.SVC.cluster.LOCAL."
    assert str(r.rr[0].rdata) == "10.96.0.10"
    assert r.header.id == q.header.id


def test_outside_the_zone_is_forwarded():
    assert ask("example.org")[0] == "FORWARD"
    assert ask("cluster.local.example.org")[0] == "FORWARD"
    assert ask("notcluster.local")[0] == "FORWARD"


def test_servfail_until_the_first_table():
    r, _ = ask("web.default.svc.cluster.local", zone=empty_zone())
    assert r.header.rcode == 2
    assert ask("example.org", zone=empty_zone())[0] == "FORWARD"


def test_headless_answers_rotate():
    firsts = {str(ask("db.default.svc.cluster.local", turn=turn)[0].rr[0].rdata) for turn in range(4)}
    assert firsts == {"10.244.1.3", "10.244.2.3"}
    # the function keeps no state: the same turn gives the same answer
    assert len({str(ask("db.default.svc.cluster.local", turn=1)[0].rr[0].rdata) for _ in range(4)}) == 1


def test_any_gets_the_rfc8482_answer():
    r, _ = ask("web.default.svc.cluster.local", "ANY")
    assert r.header.rcode == 0 and QTYPE.get(r.rr[0].rtype) == "HINFO"


def big_headless(n=200):
    eps = tuple(Endpoint(f"10.245.{i // 250}.{i % 250 + 1}") for i in range(n))
    return compile_zone(ServiceTable.of([Service("big", type="Headless", ports=(ServicePort(80),), endpoints=eps)]))


def test_large_answers_truncate_over_udp_and_come_whole_over_tcp():
    zone = big_headless()
    r, _ = ask("big.default.svc.cluster.local", zone=zone)
    assert r.header.tc == 1 and not r.rr
    r, _ = ask("big.default.svc.cluster.local", zone=zone, edns=1232)
    assert r.header.tc == 1 and r.ar and QTYPE.get(r.ar[0].rtype) == "OPT"
    r, _ = ask("big.default.svc.cluster.local", zone=zone, udp=False)
    assert r.header.tc == 0 and len(r.rr) == 200


def test_edns_is_echoed_and_small_answers_fit():
    r, _ = ask("web.default.svc.cluster.local", edns=4096)
    assert r.header.tc == 0 and r.rr and any(QTYPE.get(a.rtype) == "OPT" for a in r.ar)


def raw(ident=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0, body=b""):
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar) + body


QUESTION = b"\x03web\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "data, rcode",
    [
        (raw(body=QUESTION), 0),
        (raw(qd=0), 1),  # no question
        (raw(qd=2, body=QUESTION + QUESTION), 1),
        (raw(body=QUESTION[:10]), 1),  # truncated question
        (raw(body=b"\xc0\x0c\x00\x01\x00\x01"), 1),  # a compression pointer (a loop) in the question
        (raw(body=b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"), 1),  # a 64-byte label
        (raw(body=QUESTION + b"junk"), 1),  # trailing bytes
        (raw(ar=1, body=QUESTION + b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00"), 16),  # EDNS version 1
        (raw(ar=2, body=QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" * 2), 1),  # two OPTs
        (raw(flags=0x2900, body=QUESTION), 4),  # opcode UPDATE
        (raw(flags=0x1100, body=QUESTION), 4),  # opcode STATUS
        (raw(body=QUESTION[:-2] + b"\x00\x03"), 5),  # class CH
    ],
)
def test_malformed_and_unsupported_queries(data, rcode):
    out, got = answer(ZONE, data)
    assert got == rcode
    assert struct.unpack("!H", out[:2])[0] == 0x1234
    assert out[2] & 0x80  # QR


@pytest.mark.parametrize("data", [b"", b"\x12", raw(flags=0x8100, body=QUESTION)])
def test_runts_and_responses_are_dropped(data):
    assert answer(ZONE, data) == (None, None)


def _check(out, data):
    if out is None or out is FORWARD:
        return
    assert out[:2] == data[:2] and out[2] & 0x80


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_crash(data):
    out, _ = answer(ZONE, data)
    _check(out, data)


def test_fuzz_mutated_real_queries_never_crash():
    rng = random.Random(1234)
    seeds = [bytes(DNSRecord.question(n, t).pack()) for n, t in
             [("web.default.svc.cluster.local", "A"), ("_pg._tcp.db.default.svc.cluster.local", "SRV"), ("example.org", "AAAA")]]  # fmt: skip
    for _ in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            i = rng.randrange(len(data))
            if op < 0.5:
                data[i] = rng.randrange(256)
            elif op < 0.75:
                del data[i]
            else:
                data.insert(i, rng.randrange(256))
        out, _ = answer(ZONE, bytes(data))
        _check(out, bytes(data))
    r, _ = ask("web.default.svc.cluster.local")
    assert str(r.rr[0].rdata) == "10.96.0.10"


def test_incremental_zone_updates_equal_a_fresh_compile():
    from svcdns.dns.zone import ZoneCompiler, apply_delta

    web, db = TABLE.get("default", "web"), TABLE.get("default", "db")
    steps = [
        TABLE,
        TABLE.replace(deletes=[web.key]),
        TABLE.replace([db.with_endpoints(db.endpoints[:1])]),
        TABLE.replace([Service("new", ports=(ServicePort(80, name="http"),), cluster_ips=("10.96.0.77",))]),
        TABLE,
    ]
    compiler, worker = ZoneCompiler(), None
    for i, table in enumerate(steps):
        delta = compiler.update(table, serial=42)
        worker = compiler.zone if i == 0 else apply_delta(worker, delta)  # what a worker holds
        fresh = compile_zone(table, serial=42)
        for zone in (compiler.zone, worker):
            assert zone.entries == fresh.entries and zone.cnames == fresh.cnames and zone.names == fresh.names


def test_external_names_are_chased_only_for_clients_that_may_recurse():
    from svcdns.dns.answer import CHASE, answer_cacheable

    q = bytes(DNSRecord.question("ext.default.svc.cluster.local", "A").pack())
    assert answer_cacheable(ZONE, q, ra=True)[2] == CHASE
    out, rcode, cacheable = answer_cacheable(ZONE, q, ra=False)
    assert cacheable is True and [str(r.rdata) for r in DNSRecord.parse(out).rr] == ["example.org."]



@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["ClusterIP", "Headless", "ExternalName", "gone"]),
                          st.integers(0, 4), st.integers(0, 3)), min_size=1, max_size=25))  # fmt: skip
def test_random_walks_of_changes_keep_the_incremental_zone_equal_to_a_fresh_compile(steps):
    """Services appear, change kind and endpoints (sharing addresses: one PTR set for several), alias
    each other's names and vanish; after each step the compiler's zone and a worker's (the deltas
    applied) equal a fresh compile of the same table."""
    from svcdns.dns.zone import ZoneCompiler, apply_delta

    compiler, worker, table = ZoneCompiler(), None, ServiceTable()
    for i, (n, kind, eps, target) in enumerate(steps):
        key = ("default", f"s{n}")
        if kind == "gone":
            table = table.replace(deletes=[key])
        elif kind == "ExternalName":
            svc = Service(f"s{n}", type=kind, external_name=f"s{target}.default.svc.cluster.local")
            table = table.replace([svc])
        else:
            endpoints = tuple(Endpoint(f"10.244.0.{k + target}") for k in range(eps))
            svc = Service(f"s{n}", type=kind, ports=(ServicePort(80, name="http"),), endpoints=endpoints,
                          cluster_ips=(f"10.96.0.{n + 1}",) if kind == "ClusterIP" else ())  # fmt: skip
            table = table.replace([svc])
        delta = compiler.update(table, serial=42)
        worker = compiler.zone if i == 0 else apply_delta(worker, delta)
        fresh = compile_zone(table, serial=42)
        for zone in (compiler.zone, worker):
            assert zone.entries == fresh.entries and zone.cnames == fresh.cnames and zone.names == fresh.names
