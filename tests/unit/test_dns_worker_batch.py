"""The worker's UDP loop on loopback sockets: answers not in its cache yet leave with the batch's
one ``sendmmsg`` too, and the cache holds a zone larger than its floor. No root needed."""

import ipaddress
import multiprocessing
import select
import socket

import pytest
from dnslib import DNSRecord

from svcdns.dns import worker as worker_mod
from svcdns.dns.mmsg import Batch
from svcdns.dns.worker import Settings, Worker
from svcdns.dns.zone import compile_zone
from svcdns.model import Service, ServicePort
from svcdns.table import ServiceTable


def zone_of(n: int):
    base = int(ipaddress.ip_address("10.96.1.0"))
    return compile_zone(ServiceTable.of([
        Service(f"s{i}", namespace="t", ports=(ServicePort(80),), cluster_ips=(str(ipaddress.ip_address(base + i)),))
        for i in range(n)
    ]))  # fmt: skip


class Counted:
    """The UDP socket, counting the answers sent one by one (``sendto``) rather than in the batch."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.alone = sock, 0

    def sendto(self, data, addr):
        self.alone += 1
        return self.sock.sendto(data, addr)


@pytest.fixture
def worker_on_loopback():
    """A factory: a Worker with ``zone`` and the batch of a UDP socket on loopback; all closed after."""
    opened = []

    def make(zone):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        control, other = multiprocessing.Pipe()
        w = Worker(Settings(listen=(server.getsockname(),), forward=False), control, [])
        opened.extend([server, control, other, w.wake_r, w.wake_w, w.sel])
        w.take(zone)
        batch = Batch(server)
        batch.sock = Counted(server)  # type: ignore[assignment]
        return w, batch, server

    yield make
    for thing in opened:
        thing.close()


def ask(w, batch, server, names):
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    client.bind(("127.0.0.1", 0))
    for n, name in enumerate(names):
        client.sendto(_query(n, name), server.getsockname())
    select.select([server], [], [], 2)
    w.on_udp(batch)
    answers = {}
    for _ in names:
        reply = DNSRecord.parse(client.recv(4096))
        answers[reply.header.id] = reply
    client.close()
    return [answers[n] for n in range(len(names))]


def _query(n: int, name: str) -> bytes:
    q = DNSRecord.question(name)
    q.header.id = n
    return bytes(q.pack())


def test_misses_and_hits_in_one_batch_are_all_answered_without_a_send_of_their_own(worker_on_loopback):
    w, batch, server = worker_on_loopback(zone_of(20))
    names = [f"s{i}.t.svc.cluster.local" for i in range(10)] + ["nope.t.svc.cluster.local"]
    first = ask(w, batch, server, names)  # all misses
    assert [str(r.a.rdata) for r in first[:10]] == [f"10.96.1.{i}" for i in range(10)]
    assert first[10].header.rcode == 3  # NXDOMAIN, answered as well
    assert batch.sock.alone == 0 and w.counts.cache_misses == 11
    mixed = names[:5] + [f"s{i}.t.svc.cluster.local" for i in range(10, 15)]  # hits, then misses
    again = ask(w, batch, server, mixed)
    assert [str(r.a.rdata) for r in again] == [f"10.96.1.{i}" for i in [*range(5), *range(10, 15)]]
    assert batch.sock.alone == 0 and w.counts.cache_hits == 5 and w.counts.cache_misses == 16


def test_the_answer_cache_holds_every_answer_of_a_zone_larger_than_its_floor(monkeypatch, worker_on_loopback):
    monkeypatch.setattr(worker_mod, "CACHE_ENTRIES", 20)
    w, batch, server = worker_on_loopback(zone_of(30))  # 60 answers (A and PTR) and the apex, floor 20
    names = [f"s{i}.t.svc.cluster.local" for i in range(30)]
    ask(w, batch, server, names)
    ask(w, batch, server, names)  # clients asking for every name in turn: the second round hits
    assert w.counts.cache_hits == 30 and w.counts.cache_misses == 30
    w.take(zone_of(3))  # a smaller zone: the floor again
    assert w.cache_entries == 20
