"""The DNS supervisor and its workers on loopback, on ports the kernel picks: no root needed."""

from __future__ import annotations

import socket

import pytest
from dnslib import DNSRecord

from svcdns.cli import main
from svcdns.dns.server import DNSServer
from svcdns.errors import DNSError, UsageError
from svcdns.model import Service, ServicePort
from svcdns.table import ServiceTable

TABLE = ServiceTable.of([Service("web", ports=(ServicePort(80),), cluster_ips=("10.96.0.10",))])
NAME = "web.default.svc.cluster.local"


def ask(server: DNSServer, name: str = NAME, tcp: bool = False) -> list[str]:
    host, port = server.addresses[0]
    reply = DNSRecord.parse(DNSRecord.question(name).send(host, port, tcp=tcp, timeout=2))
    return [str(r.rdata) for r in reply.rr]


@pytest.fixture
def server():
    with DNSServer([("127.0.0.1", 0)], workers=2, forward=False) as srv:
        srv.update(TABLE)
        yield srv


def test_answers_over_udp_and_tcp_and_counts(server):
    assert ask(server) == ["10.96.0.10"] and ask(server, tcp=True) == ["10.96.0.10"]
    stats = server.stats()
    assert stats["queries"] == {"NOERROR": 2} and stats["duration_count"] == 2


def test_an_address_that_cannot_be_bound_is_named():
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEPORT: nobody may share it
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        with pytest.raises(DNSError, match=rf"cannot listen on 127\.0\.0\.1:{port} \(UDP\): Address already in use"):
            DNSServer([("127.0.0.1", 0), ("127.0.0.1", port)], workers=1, forward=False).start()
    finally:
        taken.close()


@pytest.mark.parametrize("listen", ["127.0.0.1:x", "localhost:53", "127.0.0.1:70000"])
def test_a_bad_listen_address_is_bad_usage(listen, tmp_path, capsys):
    assert main(["dns", "--registry", str(tmp_path), "--listen", listen]) == 2
    assert "dns.listen" in capsys.readouterr().err


def test_a_bad_upstream_is_bad_usage():
    with pytest.raises(UsageError, match="dns.upstreams"):
        DNSServer([("127.0.0.1", 0)], upstreams=["10.0.0.1:x"])
