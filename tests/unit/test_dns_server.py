"""The DNS supervisor and its workers on loopback, on ports the kernel picks: no root needed."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

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


def wait_until(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_killed_worker_is_replaced_with_the_current_zone_and_counted():
    with DNSServer([("127.0.0.1", 0)], workers=2, forward=False) as server:
        server.update(TABLE)
        ask(server)
        before = server.stats()["queries"]["NOERROR"]
        for n, victim in enumerate(server.pids(), start=1):
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda v=victim: server.problem is not None or v not in server.pids(), 10, "the death noticed")
            took = wait_until(lambda: server.problem is None, 10, f"worker {victim} replaced")
            assert victim not in server.pids() and len(server.pids()) == 2, f"replaced in {took:.2f} s"
            assert all(ask(server) == ["10.96.0.10"] for _ in range(20)), "the replacement answers from the zone"
            stats = server.stats()
            assert stats["worker_restarts"] == n and stats["workers_answering"] == 2
        # counts never go back when a worker is replaced (Prometheus counters)
        assert server.stats()["queries"]["NOERROR"] >= before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_leaves_the_workers_to_their_agent(server, sig):
    """kill -TERM -PGID, or Ctrl-C in the agent's terminal, reaches every worker too: they keep
    answering until the agent stops them, instead of dying and being replaced with an ERROR."""
    pids = server.pids()
    for pid in pids:
        os.kill(pid, sig)
    assert all(ask(server) == ["10.96.0.10"] for _ in range(20))
    for pid in pids:
        os.kill(pid, 0)  # still there (ProcessLookupError otherwise)
    assert server.pids() == pids and server.stats()["worker_restarts"] == 0


def test_a_worker_killed_during_updates_never_fails_them():
    """Before: the update after a kill -9 raised BrokenPipeError, and `svcdns agent` exited 0."""
    with DNSServer([("127.0.0.1", 0)], workers=2, forward=False) as server:
        server.update(TABLE)
        os.kill(server.pids()[0], signal.SIGKILL)
        for i in range(50):
            server.update(ServiceTable.of([Service(f"s{i}", ports=(ServicePort(80),), cluster_ips=("10.96.0.20",))]))
        wait_until(lambda: server.problem is None, 1, "the worker replaced")
        server.update(TABLE)
        assert all(ask(server) == ["10.96.0.10"] for _ in range(20))


def test_scrapers_during_a_thousand_updates():
    """Before: scrapes and zone updates read each other's replies on the same pipes (EOFError,
    "a DNS worker did not take the new zone")."""
    errors: list[BaseException] = []
    scrapes = [0]
    stop = threading.Event()
    with DNSServer([("127.0.0.1", 0)], workers=2, forward=False) as server:

        def scrape() -> None:
            while not stop.is_set():
                try:
                    assert "queries" in server.stats()
                    scrapes[0] += 1
                except BaseException as err:  # noqa: BLE001 - collected for the assertion
                    errors.append(err)

        threads = [threading.Thread(target=scrape) for _ in range(4)]
        for t in threads:
            t.start()
        failed = 0
        try:
            for i in range(1000):
                table = ServiceTable.of([Service(f"s{i % 7}", ports=(ServicePort(80),), cluster_ips=("10.96.0.20",))])
                try:
                    server.update(table)
                except DNSError as err:
                    failed += 1
                    errors.append(err)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert (failed, errors) == (0, []), (
            f"{failed} of 1000 updates failed, {len(errors)} errors in {scrapes[0]} scrapes"
        )
        assert server.stats()["worker_restarts"] == 0 and server.problem is None


def test_the_tcp_idle_timeout_shrinks_as_the_slots_fill():
    from svcdns.dns.worker import TCP_IDLE, TCP_IDLE_MIN, idle_timeout

    assert [idle_timeout(n, cap=256) for n in (0, 128)] == [TCP_IDLE, TCP_IDLE]
    assert idle_timeout(192, cap=256) == TCP_IDLE / 2
    assert idle_timeout(256, cap=256) == idle_timeout(255, cap=256) == TCP_IDLE_MIN
