"""DNS across a restart without root: the socket names of systemd's file-descriptor store, the
hand-over of the stored sockets to the next server, and the last known zone on disk."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest
from dnslib import DNSRecord

from svcdns.cli.zonecache import ZoneCache, cache_path
from svcdns.dns.server import DNSServer
from svcdns.dns.sockets import SocketName, SocketStore, bind_one, fd_name, parse_fd_name
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.notify import Notifier, fdname_ok, listen_fds
from svcdns.table import ServiceTable

NAME = "web.default.svc.cluster.local"
TABLE = ServiceTable.of([
    Service("web", ports=(ServicePort(80),), cluster_ips=("10.96.0.10",)),
    Service("db", type="Headless", ports=(ServicePort(5432, name="pg"),), selector=(("app", "db"),),
            endpoints=(Endpoint("10.244.1.5", hostname="db-0", pod="db-0"), Endpoint("10.244.1.6", ready=False))),
    Service("ext", type="ExternalName", external_name="example.org"),
], revision=42)  # fmt: skip


class FakeSystemd:
    """The service manager's notify socket: what it was sent, and the descriptors it stores."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.notifier = Notifier(env={"NOTIFY_SOCKET": path})
        self.store: dict[str, list[int]] = {}

    def drain(self) -> list[str]:
        got = []
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 4096, 16)
            except BlockingIOError:
                return got
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            got.append(data.decode())
            name = fields.get("FDNAME", "")
            if fields.get("FDSTOREREMOVE") == "1":
                for fd in self.store.pop(name, []):
                    os.close(fd)
            for fd in fds:  # a socket stored already is not stored twice (systemd's same_fd)
                held = {(os.fstat(f).st_dev, os.fstat(f).st_ino) for fs in self.store.values() for f in fs}
                if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) in held:
                    os.close(fd)
                else:
                    self.store.setdefault(name, []).append(fd)

    def hand_back(self) -> list[tuple[str, int]]:
        """What the next process gets ($LISTEN_FDS, $LISTEN_FDNAMES), the store keeping its own copies."""
        return [(name, os.dup(fd)) for name, fds in self.store.items() for fd in fds]

    def close(self) -> None:
        for fds in self.store.values():
            for fd in fds:
                os.close(fd)
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    fake = FakeSystemd(str(tmp_path / "notify"))
    yield fake
    fake.close()


@pytest.mark.parametrize("proto, host, port, index", [
    ("udp", "127.0.0.1", 53, 0), ("tcp", "10.96.0.10", 53, 3), ("udp", "fd00:96::a", 5353, 1), ("tcp", "::1", 53, 0),
])  # fmt: skip
def test_socket_names_are_valid_fdnames_and_read_back(proto, host, port, index):
    name = fd_name(proto, host, port, index)
    assert fdname_ok(name), name
    assert parse_fd_name(name) == SocketName(proto, host, port, index)


@pytest.mark.parametrize("name", ["", "unknown", "dns/udp/127.0.0.1/53", "dns/sctp/127.0.0.1/53/0",
                                  "dns/udp/localhost/53/0", "dns/udp/127.0.0.1/70000/0", "dns/udp/127.0.0.1/5³/0",
                                  "other/udp/127.0.0.1/53/0"])  # fmt: skip
def test_names_that_are_not_ours_are_not_taken(name):
    assert parse_fd_name(name) is None


def test_listen_fds_only_for_this_process_and_taken_once():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0", "LISTEN_FDNAMES": ""}
    assert listen_fds(env) == [] and env == {}
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds(env) == []  # meant for another process: never touch descriptors 3 and 4


def test_a_stored_socket_is_reused_only_when_it_is_what_its_name_says(systemd, caplog):
    udp = bind_one("udp", "127.0.0.1", 0)
    port = udp.getsockname()[1]
    tcp = bind_one("tcp", "127.0.0.1", port)
    stray = bind_one("udp", "127.0.0.1", 0)
    store = SocketStore(systemd.notifier, [
        (fd_name("udp", "127.0.0.1", port, 0), os.dup(udp.fileno())),
        (fd_name("tcp", "127.0.0.1", port, 0), os.dup(udp.fileno())),  # a UDP socket under a TCP name
        (fd_name("udp", "127.0.0.1", port, 1), os.dup(stray.fileno())),  # bound to another port
        (fd_name("udp", "127.0.0.1", port, 7), os.dup(tcp.fileno())),  # no longer configured
        ("unknown", os.dup(tcp.fileno())),
    ])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        got = store.take(SocketName("udp", "127.0.0.1", port, 0))
        assert got is not None and got.getsockname() == ("127.0.0.1", port) and got.type == socket.SOCK_DGRAM
        assert store.take(SocketName("tcp", "127.0.0.1", port, 0)) is None
        assert store.take(SocketName("udp", "127.0.0.1", port, 1)) is None
    assert "is not what its name says" in caplog.text
    store.publish({fd_name("udp", "127.0.0.1", port, 0): got})
    messages = systemd.drain()
    removed = {m.split("FDNAME=")[1] for m in messages if "FDSTOREREMOVE=1" in m}
    assert removed == {"unknown", *(fd_name(p, "127.0.0.1", port, i) for p, i in (("tcp", 0), ("udp", 1), ("udp", 7)))}
    assert list(systemd.store) == [fd_name("udp", "127.0.0.1", port, 0)]
    for s in (udp, tcp, stray, got):
        s.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_query_sent_between_two_servers_is_answered_by_the_second_from_the_last_zone(systemd):
    port = free_port()
    first = DNSServer([("127.0.0.1", port)], workers=2, forward=False, store=SocketStore(systemd.notifier, []))
    first.start()
    try:
        first.update(TABLE)
    finally:
        first.stop()  # the process's copies close; the store's keep the sockets
    systemd.drain()
    assert sorted(systemd.store) == sorted(fd_name(p, "127.0.0.1", port, i) for p in ("udp", "tcp") for i in (0, 1))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(10)
    client.sendto(DNSRecord.question(NAME).pack(), ("127.0.0.1", port))  # nobody serves: it waits in the socket
    tcp = socket.create_connection(("127.0.0.1", port), timeout=10)  # the listener's backlog accepts it
    second = DNSServer([("127.0.0.1", port)], workers=2, forward=False,
                       store=SocketStore(systemd.notifier, systemd.hand_back()))  # fmt: skip
    second.preload(TABLE)
    second.start()
    try:
        answer = DNSRecord.parse(client.recv(512))
        assert [str(r.rdata) for r in answer.rr] == ["10.96.0.10"] and answer.header.rcode == 0
        q = DNSRecord.question(NAME).pack()
        tcp.sendall(len(q).to_bytes(2, "big") + q)
        size = int.from_bytes(tcp.recv(2), "big")
        assert [str(r.rdata) for r in DNSRecord.parse(tcp.recv(size)).rr] == ["10.96.0.10"]
    finally:
        second.stop()
        client.close()
        tcp.close()
    systemd.drain()
    third = DNSServer([("127.0.0.1", port)], workers=1, forward=False,
                      store=SocketStore(systemd.notifier, systemd.hand_back()))  # fmt: skip
    third.start()
    third.stop()
    systemd.drain()  # one worker now: the second worker's sockets left the store
    assert sorted(systemd.store) == sorted(fd_name(p, "127.0.0.1", port, 0) for p in ("udp", "tcp"))


def test_outside_systemd_nothing_is_kept():
    store = SocketStore(Notifier(env={}), [])
    assert not store.active and store.take(SocketName("udp", "127.0.0.1", 53, 0)) is None
    store.publish({})


# ---- the last known zone -------------------------------------------------------------------------------


def test_the_zone_source_round_trips(tmp_path):
    cache = ZoneCache(tmp_path / "dns-zone.json", "/reg")
    cache.save(TABLE)
    got = ZoneCache(tmp_path / "dns-zone.json", "/reg").load()
    assert got is not None and got.revision == 42
    assert {s.key for s in got} == {s.key for s in TABLE}
    for svc in TABLE:
        back = got.get(svc.namespace, svc.name)
        assert back is not None
        assert (back.type, back.cluster_ips, back.ports, back.endpoints, back.external_name) == (
            svc.type, svc.cluster_ips, svc.ports, svc.endpoints, svc.external_name)  # fmt: skip
    assert oct((tmp_path / "dns-zone.json").stat().st_mode & 0o777) == "0o600"


def test_later_saves_encode_what_changed_and_read_back_as_the_latest_table(tmp_path):
    """A save re-encodes only the Services changed since the last one (from the table's lineage);
    an update, a delete and an addition all reach the file."""
    cache = ZoneCache(tmp_path / "dns-zone.json", "/reg")
    cache.save(TABLE)
    first, *rest = list(TABLE)
    changed = TABLE.replace([first.with_endpoints(()), Service("late", ports=(ServicePort(80),),
                                                                 cluster_ips=("10.96.9.9",))],
                            deletes=[rest[0].key])  # fmt: skip
    cache.save(changed)
    got = ZoneCache(tmp_path / "dns-zone.json", "/reg").load()
    assert got is not None and {s.key for s in got} == {s.key for s in changed}
    assert got.get(first.namespace, first.name).endpoints == ()


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", json.dumps({"version": 0, "registry": "/reg", "services": []}).encode(),
    json.dumps({"version": 1, "registry": "/reg", "services": [{"name": "Bad_Name"}]}).encode(),
    json.dumps({"version": 1, "registry": "/reg", "services": "x"}).encode(),
    json.dumps({"version": 1, "registry": "/reg"}).encode(), b"[" * 100_000,
])  # fmt: skip
def test_a_corrupt_or_old_zone_file_is_ignored_with_a_warning(tmp_path, caplog, content):
    (tmp_path / "dns-zone.json").write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert ZoneCache(tmp_path / "dns-zone.json", "/reg").load() is None
    assert any(r.levelno == logging.WARNING and "ignoring the last known zone" in r.getMessage() for r in caplog.records)


def test_a_zone_file_of_another_registry_or_none_is_not_used(tmp_path, caplog):
    assert ZoneCache(tmp_path / "absent.json", "/reg").load() is None
    ZoneCache(tmp_path / "dns-zone.json", "/reg").save(TABLE)
    assert ZoneCache(tmp_path / "dns-zone.json", "/other").load() is None


def test_writes_are_batched_to_one_per_interval_and_the_last_is_kept(tmp_path):
    cache = ZoneCache(tmp_path / "dns-zone.json", "/reg", interval=0.3)
    writes = []
    save = cache.save
    cache.save = lambda table: (writes.append(table.revision), save(table))  # type: ignore[method-assign]
    cache.start()
    table = TABLE
    for i in range(50):
        table = table.replace(revision=100 + i)
        cache.offer(table)
    cache.stop()
    assert writes and len(writes) <= 2 and writes[-1] == 149, writes
    assert ZoneCache(tmp_path / "dns-zone.json", "/reg").load().revision == 149  # type: ignore[union-attr]


def test_where_the_zone_is_kept():
    assert str(cache_path("/var/lib/svcdns/registry")) == "/var/lib/svcdns/registry/.svcdns/dns-zone.json"
    assert str(cache_path("etcd://10.0.0.1:2379/svcdns", {"STATE_DIRECTORY": "/var/lib/svcdns"})) == \
        "/var/lib/svcdns/dns-zone.json"  # fmt: skip
    assert cache_path("etcd://10.0.0.1:2379/svcdns", {}) is None
