"""Forwarding on loopback, against fake upstreams of the test's own: failover past a dead upstream
(asked once, then skipped for a while), and forwarding for the registry's pods, REFUSED to others."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from svcdns.dns.forward import Forwarder
from svcdns.dns.server import DNSServer
from svcdns.dns.wire import parse_query
from svcdns.table import ServiceTable


class Upstream:
    """A fake resolver on 127.0.0.1: ``answers`` it with 192.0.2.1 for every A query; ``dead`` it
    reads nothing (its queries wait in the socket, where ``received`` counts them)."""

    def __init__(self, dead: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.dead, self.stop, self.thread = dead, threading.Event(), None
        if not dead:
            self.sock.settimeout(0.1)
            self.thread = threading.Thread(target=self.serve, daemon=True)
            self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            q = DNSRecord.parse(data)
            reply = q.reply()
            reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
            self.sock.sendto(reply.pack(), peer)

    def received(self) -> int:
        """(dead) The queries that arrived since the last call."""
        n = 0
        self.sock.setblocking(False)
        try:
            while self.sock.recv(4096):
                n += 1
        except BlockingIOError:
            pass
        return n

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        self.sock.close()


@pytest.fixture
def upstreams():
    made: list[Upstream] = []

    def make(dead: bool = False) -> Upstream:
        made.append(Upstream(dead))
        return made[-1]

    yield make
    for u in made:
        u.close()


def resolve(fwd: Forwarder, name: str) -> list[str] | None:
    data = bytes(DNSRecord.question(name).pack())
    out = fwd.resolve(data, parse_query(data))
    return None if out is None else [str(r.rdata) for r in DNSRecord.parse(out).rr]


def test_a_dead_first_upstream_is_asked_once_then_skipped_until_its_hold_down_ends(upstreams):
    dead, live = upstreams(dead=True), upstreams()
    fwd = Forwarder([dead.address, live.address], timeout=0.3, hold_down=1.0)
    answers = [resolve(fwd, f"n{i}.example.org") for i in range(5)]
    assert answers == [["192.0.2.1"]] * 5  # every one answered, by the second upstream
    assert dead.received() == 1  # the dead one was asked once, then skipped
    deadline = time.monotonic() + 5
    while fwd.order(time.monotonic())[0] != dead.address and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resolve(fwd, "again.example.org") == ["192.0.2.1"]
    assert dead.received() == 1  # once its hold-down ended, it is tried first again


def test_when_every_upstream_is_down_each_is_still_tried(upstreams):
    a, b = upstreams(dead=True), upstreams(dead=True)
    fwd = Forwarder([a.address, b.address], timeout=0.2, hold_down=60)
    assert resolve(fwd, "x.example.org") is None
    assert resolve(fwd, "y.example.org") is None  # both held down: both asked again, as a last resort
    assert (a.received(), b.received()) == (2, 2)


def ask_from(server: DNSServer, source: str, name: str) -> DNSRecord:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(5)  # a first forward waits for the dead upstream's 2 s
        s.sendto(DNSRecord.question(name).pack(), server.addresses[0])
        return DNSRecord.parse(s.recv(4096))


def test_the_registry_pods_get_forwarded_answers_and_other_clients_refused(upstreams):
    dead, live = upstreams(dead=True), upstreams()  # the first upstream configured does not answer
    pod, stranger = "127.0.0.5", "127.0.0.6"  # loopback addresses, outside the allowed networks given
    with DNSServer([("127.0.0.1", 0)], workers=2, upstreams=[dead.address, live.address],
                   allowed_networks=["192.0.2.0/24"]) as server:  # fmt: skip
        server.update(ServiceTable())
        assert ask_from(server, pod, "example.org").header.rcode == 5  # REFUSED: not a pod yet
        server.allow_clients(frozenset({pod, "10.244.0.2"}))
        for _ in range(4):  # both workers (SO_REUSEPORT spreads the source ports)
            reply = ask_from(server, pod, "example.org")
            assert reply.header.rcode == 0 and [str(r.rdata) for r in reply.rr] == ["192.0.2.1"]
            assert ask_from(server, stranger, "example.org").header.rcode == 5
        assert dead.received() <= 2  # once per worker, then skipped
        server.allow_clients(frozenset({"10.244.0.2"}))  # the pod went
        assert all(ask_from(server, pod, "example.org").header.rcode == 5 for _ in range(4))


def test_a_replaced_worker_still_forwards_for_the_pods(upstreams):
    live = upstreams()
    with DNSServer([("127.0.0.1", 0)], workers=1, upstreams=[live.address], allowed_networks=["192.0.2.0/24"]) as server:
        server.update(ServiceTable())
        server.allow_clients(frozenset({"127.0.0.5"}))
        (victim,) = server.pids()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (victim in server.pids() or server.problem is not None) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.pids() and victim not in server.pids() and server.problem is None, "not replaced in 10 s"
        assert ask_from(server, "127.0.0.5", "example.org").header.rcode == 0  # the replacement knows the pods
        assert ask_from(server, "127.0.0.6", "example.org").header.rcode == 5
