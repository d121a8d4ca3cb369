"""The DNS counters by CoreDNS's names move as a real worker answers queries on loopback: by
transport and type, by rcode, forwarded by upstream, and the caches' hits and misses."""

from __future__ import annotations

import socket
import threading

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from prometheus_client.parser import text_string_to_metric_families

from svcdns.dns.server import DNSServer
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.status import Metrics
from svcdns.table import ServiceTable

TABLE = ServiceTable.of([Service("web", ports=(ServicePort(80, name="http"),), cluster_ips=("10.96.0.20",),
                                 endpoints=(Endpoint("10.244.0.5"),))])  # fmt: skip
WEB = "web.default.svc.cluster.local"


@pytest.fixture
def upstream():
    """A resolver on loopback answering every A question with 192.0.2.1 (TTL 60), counting questions."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    asked: list[str] = []

    def serve() -> None:
        while True:
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                return
            q = DNSRecord.parse(data)
            asked.append(str(q.q.qname))
            reply = q.reply()
            reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
            sock.sendto(reply.pack(), peer)

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname(), asked
    sock.close()


def values(server: DNSServer) -> dict[tuple, float]:
    """Every sample of /metrics' DNS families, by (name, sorted labels)."""
    text = Metrics(dns_stats=server.stats).render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) if fam.name.startswith("svcdns_dns")
            for s in fam.samples}  # fmt: skip


def test_the_coredns_named_counters_move_per_type_rcode_upstream_and_cache(upstream):
    (up_host, up_port), asked = upstream
    to = f"{up_host}:{up_port}"
    with DNSServer([("127.0.0.1", 0)], workers=1, upstreams=[to], allowed_networks=["127.0.0.1/32"]) as server:
        server.update(TABLE)
        host, port = server.addresses[0]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # one address: the worker's fast path knows it
        client.bind(("127.0.0.1", 0))
        client.settimeout(3)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # not in the allowed networks
        stranger.bind(("127.0.0.2", 0))
        stranger.settimeout(3)

        def ask(name: str, qtype: str = "A", sock: socket.socket = client, tcp: bool = False) -> str:
            query = DNSRecord.question(name, qtype)
            if tcp:
                return rcode_of(DNSRecord.parse(query.send(host, port, tcp=True, timeout=3)))
            sock.sendto(query.pack(), (host, port))
            return rcode_of(DNSRecord.parse(sock.recv(4096)))

        answers = [ask(WEB), ask(WEB), ask(WEB), ask(WEB, "AAAA"), ask(f"_http._tcp.{WEB}", "SRV"),
                   ask("20.0.96.10.in-addr.arpa", "PTR"), ask("nope.default.svc.cluster.local"),
                   ask(WEB, "NAPTR"), ask(WEB, tcp=True), ask("example.org"), ask("example.org"),
                   ask("example.net", sock=stranger)]  # fmt: skip
        assert answers == ["NOERROR"] * 3 + ["NOERROR"] * 3 + ["NXDOMAIN", "NOERROR", "NOERROR"] + \
            ["NOERROR", "NOERROR", "REFUSED"]  # fmt: skip
        assert asked == ["example.org."], "the second example.org came from the forwarder's cache"
        v = values(server)

    def get(name: str, **labels: str) -> float:
        return v.get((name, tuple(sorted(labels.items()))), 0.0)

    requests = "svcdns_dns_requests_total"
    assert get(requests, proto="udp", type="A") == 3 + 1 + 2 + 1  # web x3, nope, example.org x2, example.net
    assert [get(requests, proto="udp", type=t) for t in ("AAAA", "SRV", "PTR", "other")] == [1, 1, 1, 1]
    assert get(requests, proto="tcp", type="A") == 1
    assert get("svcdns_dns_responses_total", rcode="NOERROR") == 10
    assert get("svcdns_dns_responses_total", rcode="NXDOMAIN") == 1
    assert get("svcdns_dns_responses_total", rcode="REFUSED") == 1
    assert get("svcdns_dns_request_duration_seconds_count", type="A") == 8
    assert get("svcdns_dns_request_duration_seconds_bucket", type="SRV", le="+Inf") == 1
    assert get("svcdns_dns_forward_requests_total", to=to) == 1
    assert get("svcdns_dns_forward_responses_total", to=to, rcode="NOERROR") == 1
    assert get("svcdns_dns_forward_request_duration_seconds_count", to=to) == 1
    assert get("svcdns_dns_cache_hits_total", cache="forward") == 1
    assert get("svcdns_dns_cache_misses_total", cache="forward") == 1
    # the two repeated in-zone A queries over UDP came from the worker's answer cache (the fast path)
    assert get("svcdns_dns_cache_hits_total", cache="answers") == 2
    assert get("svcdns_dns_cache_misses_total", cache="answers") == 10


def rcode_of(reply: DNSRecord) -> str:
    return RCODE.get(reply.header.rcode)
