"""etcd-only behaviour: URLs, adoption races, watch resume, compaction, outages, a member lost."""

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from svcdns.errors import RegistryAuthFailed, RegistryUnavailable, UsageError
from svcdns.model import Service, ServicePort
from svcdns.registry import open_registry
from svcdns.registry.etcd import parse_url
from svcdns.testing.etcd import EtcdServer
from svcdns.testing.lab import wait_for


def test_url_parsing():
    opts = parse_url("etcd://a:1,b/pre/fix?cacert=/ca.pem&username=u&password=p")
    assert opts.endpoints == (("a", 1), ("b", 2379))
    assert opts.prefix == "/pre/fix" and opts.ca_file == "/ca.pem" and opts.username == "u"
    assert parse_url("etcd://127.0.0.1:2379").prefix == "/svcdns"
    with pytest.raises(UsageError, match="unknown option"):
        parse_url("etcd://h/p?tls=1")
    assert parse_url("etcd://[::1]:2380,[fd00::2],fd00::3,10.0.0.1:7/p").endpoints == (
        ("::1", 2380), ("fd00::2", 2379), ("fd00::3", 2379), ("10.0.0.1", 7))  # fmt: skip
    for bad in ("h:xx", "h:0", "h:70000", "[::1]x", ":80"):
        with pytest.raises(UsageError, match=f"bad host or port in '{re.escape(bad)}'"):
            parse_url(f"etcd://{bad}/p")
    with pytest.raises(UsageError, match="cert=/c.pem needs key="):
        parse_url("etcd://h/p?cert=/c.pem")
    with pytest.raises(UsageError, match="timeout='soon' is not a positive number"):
        parse_url("etcd://h/p?timeout=soon")
    with pytest.raises(UsageError, match="timeout='0' is not"):
        parse_url("etcd://h/p?timeout=0")
    assert parse_url("etcd://h/p?timeout=2.5").timeout == 2.5


def svc(name):
    return Service(name, ports=(ServicePort(80),))


def test_creates_in_a_crowded_cidr_never_share_a_vip(etcd_url):
    """A create first tries a random VIP without reading the held ones; where that collides (often,
    in a /26 filling up) it reads them and allocates: every Service still gets its own VIP."""
    writers = [open_registry(etcd_url, ["10.97.0.0/26"]) for _ in range(3)]
    made = []

    def create(w, names):
        made.extend(w.create(svc(n)) for n in names)

    threads = [threading.Thread(target=create, args=(w, [f"c{i}-{k}" for k in range(14)])) for i, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    vips = [s.cluster_ips[0] for s in made]
    assert len(made) == 42 and len(set(vips)) == 42
    held = open_registry(etcd_url).snapshot().table
    assert sorted(str(s.cluster_ips[0]) for s in held) == sorted(str(v) for v in vips)


class SlowStart:
    """A loopback TCP relay to etcd that holds etcd's first bytes (its HTTP/2 SETTINGS) for ``delay``
    seconds: what a client sees from a busy etcd or a loaded host."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.delay), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        with src, dst:
            try:
                while data := src.recv(65536):
                    time.sleep(delay)
                    delay = 0.0
                    dst.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def test_a_slow_connection_handshake_is_waited_for_not_failed(etcd_url):
    """CLI commands run in bursts (one process each) against a busy etcd; a handshake that takes 0.6 s
    is well inside the call timeout and must not be reported as "etcd unreachable"."""
    host_port, prefix = etcd_url.removeprefix("etcd://").split("/", 1)
    host, port = host_port.rsplit(":", 1)
    relay = SlowStart((host, int(port)), 0.6)
    try:
        reg = open_registry(f"etcd://127.0.0.1:{relay.port}/{prefix}")
        made = reg.create(svc("slow"))
        assert open_registry(etcd_url).get("default", "slow").cluster_ips == made.cluster_ips
        reg.close()
    finally:
        relay.close()


def test_two_hosts_adopting_at_once_agree_on_one_vip(etcd_url):
    writer = open_registry(etcd_url)
    for i in range(20):
        value = json.dumps({"name": f"s{i}", "ports": [{"port": 80}]}).encode()
        writer.client.run(writer.client.put(writer.keys.service(("default", f"s{i}")), value))
    hosts = [open_registry(etcd_url) for _ in range(4)]
    results = [None] * len(hosts)

    def adopt(i):
        results[i] = hosts[i].snapshot().table

    threads = [threading.Thread(target=adopt, args=(i,)) for i in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    final = open_registry(etcd_url).snapshot().table
    vips = [s.cluster_ips for s in final]
    assert len(final) == 20 and len(set(vips)) == 20  # one VIP per Service, never shared
    for table in results:  # every host saw either nothing yet or the agreed VIP
        for s in table:
            assert s.cluster_ips == final.get(*s.key).cluster_ips
    for h in hosts + [writer]:
        h.close()


def test_watch_resumes_after_an_etcd_restart_and_sees_changes_made_while_down(tmp_path):
    with EtcdServer(tmp_path / "etcd") as server:
        reg = open_registry(server.url)
        reg.create(svc("before"))
        watcher = open_registry(server.url).watch(retry_interval=0.05)
        try:
            watcher.start()
            server.stop()
            wait_for(lambda: not watcher.healthy, 10, what="the watch to notice etcd is gone")
            assert ("default", "before") in watcher.registry.state.table.services  # nothing forgotten
            server.start()
            other = open_registry(server.url)
            other.create(svc("during"))
            wait_for(lambda: ("default", "during") in watcher.registry.state.table.services, 20, what="the resumed watch")
            assert watcher.healthy
            other.close()
        finally:
            watcher.close()
            reg.close()


def test_compaction_past_the_watch_revision_takes_a_fresh_snapshot(etcd_url):
    reg = open_registry(etcd_url)
    reg.create(svc("keep"))
    reg.create(svc("gone"))
    watcher = open_registry(etcd_url).watch(retry_interval=0.05)
    try:
        watcher.start()
        # break the watch, change things, and compact the history the watch would resume from
        watcher.close()
        reg.delete("default", "gone")
        reg.create(svc("new"))
        for _ in range(5):
            reg.update("default", "keep", lambda s: s)
        head, _ = reg.client.run(reg.client.range(reg.keys.root, keys_only=True))
        reg.client.run(reg.client.compact(head.revision))
        keep_before = watcher.registry.state.table.get("default", "keep")
        watcher.resume()  # from the old revision: compacted
        wait_for(lambda: ("default", "new") in watcher.registry.state.table.services, 20, what="the fresh snapshot")
        table = watcher.registry.state.table
        assert ("default", "gone") not in table.services
        assert table.get("default", "keep") == keep_before  # unchanged Services are not flapped
    finally:
        watcher.close()
        reg.close()


def wipe(server, *args):
    """Stop etcd, delete its data, start it again on the same ports (with more flags: ``args``)."""
    server.stop()
    shutil.rmtree(server.data_root / "m0")
    server.args = args
    server.start()


def test_a_wiped_etcd_is_read_again_not_resumed(tmp_path, caplog):
    """etcd wiped and started again counts from revision 1: a watch resumed at its old revision would
    wait for revisions far ahead and miss every write until then, healthy all along. The revision
    going back is seen when the watch is created: everything is read again and the view converges."""
    caplog.set_level(logging.WARNING, logger="svcdns.registry.etcd.watch")
    with EtcdServer(tmp_path / "etcd") as server:
        reg = open_registry(server.url)
        reg.create(svc("before"))
        for _ in range(10):
            reg.update("default", "before", lambda s: s)
        watcher = open_registry(server.url).watch(retry_interval=0.05)
        try:
            watcher.start()
            wipe(server)
            other = open_registry(server.url)
            other.create(svc("after"))
            wait_for(lambda: ("default", "after") in watcher.registry.state.table.services, 20, what="the new write")
            assert ("default", "before") not in watcher.registry.state.table.services  # gone with the wipe
            assert "etcd's revision went back from 13 to " in caplog.text and "reading everything again" in caplog.text
            other.create(svc("later"))  # and the watch follows the new history
            wait_for(lambda: ("default", "later") in watcher.registry.state.table.services, 20, what="the watch after")
            assert watcher.healthy
            other.close()
        finally:
            watcher.close()
            reg.close()


def test_another_cluster_at_the_same_address_is_read_again(tmp_path, caplog):
    """A different cluster answers at the address (another cluster token: another cluster ID), its
    revision already past the watch's: only the cluster ID tells it apart."""
    caplog.set_level(logging.WARNING, logger="svcdns.registry.etcd.watch")
    with EtcdServer(tmp_path / "etcd") as server:
        reg = open_registry(server.url)
        reg.create(svc("before"))
        for _ in range(10):
            reg.update("default", "before", lambda s: s)
        watcher = open_registry(server.url).watch(retry_interval=0.05)
        try:
            watcher.start()
            held = watcher.registry.state.revision
            watcher.close()
            wipe(server, "--initial-cluster-token", "another")
            other = open_registry(server.url)
            other.create(svc("after"))  # at a revision below the watch's
            while other.client.run(other.client.range(b"/pad"))[0].revision <= held + 2:
                other.client.run(other.client.put(b"/pad", b"x"))
            watcher.resume()
            wait_for(lambda: ("default", "after") in watcher.registry.state.table.services, 20, what="the re-read")
            assert ("default", "before") not in watcher.registry.state.table.services
            assert "etcd's cluster ID changed from " in caplog.text
            other.close()
        finally:
            watcher.close()
            reg.close()


@pytest.fixture
def cluster(tmp_path):
    """Three members; a writer, and a watch that has seen a first Service, both on member 0."""
    with EtcdServer(tmp_path / "cluster", members=3) as cluster:  # stopping thaws a paused member
        reg = open_registry(cluster.url)
        watcher = open_registry(cluster.url).watch(retry_interval=0.05)
        try:
            watcher.start()
            reg.create(svc("a"))
            wait_for(lambda: ("default", "a") in watcher.registry.state.table.services, 10, what="the watch stream")
            assert cluster.member(watcher.registry.endpoint) == 0 == cluster.member(reg.endpoint)
            yield cluster, reg, watcher
        finally:
            watcher.close()
            reg.close()


def test_a_three_member_cluster_survives_losing_a_member(cluster):
    cluster, reg, watcher = cluster
    cluster.stop(0)
    reg.create(svc("b"))
    wait_for(lambda: ("default", "b") in watcher.registry.state.table.services, 30, what="the watch on another member")
    assert reg.get("default", "a").cluster_ips


def test_a_hung_member_is_left_for_another(cluster):
    """A member that hangs (its host froze) keeps its TCP connections open and answers nothing: the
    watch on it must notice (keepalive pings go unanswered) and resume on another member, and a new
    client must not wait on it longer than the call timeout."""
    cluster, _, watcher = cluster
    cluster.pause(0)
    writer = open_registry(cluster.url)
    writer.create(svc("b"))  # waits up to the call timeout (5 s) on member 0, then member 1
    wait_for(lambda: ("default", "b") in watcher.registry.state.table.services, 40, what="the watch to move")
    assert watcher.healthy
    writer.close()


def test_a_member_without_quorum_ends_the_watch_and_says_so(cluster):
    """The two other members are gone: the one left has no leader and would keep an idle watch open
    forever, showing a frozen view as healthy. The watch asks for a leader, so the member ends it
    and the agent's health says etcd is unreachable; with quorum back, changes flow again."""
    cluster, reg, watcher = cluster
    cluster.stop(1)
    cluster.stop(2)
    said = f"etcd at {cluster.host}:{cluster.client_ports[0]} unreachable (etcdserver: no leader)"  # among others
    wait_for(lambda: said in (watcher.problem or ""), 30, what="the watch to report that etcd lost quorum")
    assert ("default", "a") in watcher.registry.state.table.services  # the last known Services stay
    cluster.start(1)
    cluster.start(2)
    reg.create(svc("b"))
    wait_for(lambda: ("default", "b") in watcher.registry.state.table.services, 30, what="the resumed watch")
    assert watcher.healthy


def test_an_etcd_on_an_ipv6_address(tmp_path):
    """etcd://[::1]:port: the brackets go to gRPC as well (a bare "::1:port" is no target)."""
    with EtcdServer(tmp_path / "etcd6", host="::1") as server:
        assert server.url.startswith("etcd://[::1]:")
        reg = open_registry(server.url)
        made = reg.create(svc("v6"))
        snap = open_registry(server.url).snapshot()
        assert snap.synced and snap.table.get("default", "v6").cluster_ips == made.cluster_ips
        assert reg.endpoint.startswith("[::1]:")
        reg.close()


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    """An etcd that takes TLS clients with a certificate of its CA only (--client-cert-auth)."""
    with EtcdServer(tmp_path_factory.mktemp("etcd-tls"), tls=True) as server:
        yield server


def test_tls_with_a_client_certificate_writes_reads_and_watches(tls_etcd):
    reg = open_registry(tls_etcd.url)
    watcher = open_registry(tls_etcd.url).watch(retry_interval=0.05)
    try:
        watcher.start()
        made = reg.create(svc("secure"))
        wait_for(lambda: ("default", "secure") in watcher.registry.state.table.services, 10, what="the watch over TLS")
        assert watcher.registry.state.table.get("default", "secure").cluster_ips == made.cluster_ips
    finally:
        watcher.close()
        reg.close()


def test_tls_refusals_are_reported(tls_etcd):
    """Without TLS, or with the CA but no client certificate, etcd refuses the client: the registry
    says it cannot reach etcd, with gRPC's reason; a missing file names itself."""
    plain = tls_etcd.url.split("?")[0]
    ca_only = f"{plain}?cacert={tls_etcd.tls_files['cacert']}"
    for url in (plain, ca_only):
        reg = open_registry(url)
        with pytest.raises(RegistryUnavailable, match=r"etcd at 127\.0\.0\.1:\d+ is unreachable: Connection"):
            reg.snapshot()
        reg.close()
    missing = tls_etcd.url.replace(str(tls_etcd.tls_files["key"]), "/nonexistent/client.key")
    with pytest.raises(UsageError, match="etcd TLS file /nonexistent/client.key: No such file"):
        open_registry(missing).snapshot()


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory):
    """An etcd with authentication on, whose tokens expire after 1 s idle (the default is 5 min)."""
    with EtcdServer(tmp_path_factory.mktemp("etcd-auth"), auth=True, args=("--auth-token-ttl", "1")) as server:
        yield server


def test_an_expired_auth_token_is_renewed(auth_etcd):
    """A long-running agent goes quiet for longer than etcd's token TTL: its next write and the watch
    still work (the client authenticates again), where they used to fail with 'invalid auth token'."""
    reg = open_registry(auth_etcd.url)
    watcher = open_registry(auth_etcd.url).watch(retry_interval=0.05)
    try:
        watcher.start()
        reg.create(svc("first"))
        time.sleep(2.5)  # both clients' tokens expire
        made = reg.create(svc("after-quiet"))
        wait_for(lambda: ("default", "after-quiet") in watcher.registry.state.table.services, 10, what="the watch")
        assert watcher.registry.state.table.get("default", "after-quiet").cluster_ips == made.cluster_ips
        assert watcher.healthy
    finally:
        watcher.close()
        reg.close()


def test_a_wrong_password_is_named_and_the_watch_keeps_what_it_had(auth_etcd):
    wrong = auth_etcd.url.replace(f"password={auth_etcd.PASSWORD}", "password=not-it")
    message = "authentication as 'root' failed: etcdserver: authentication failed, invalid user ID or password"
    with pytest.raises(RegistryAuthFailed, match=message):
        open_registry(wrong).snapshot()
    watcher = open_registry(wrong).watch(retry_interval=0.05)
    try:
        assert len(watcher.start().table) == 0  # nothing known yet, nothing invented
        assert not watcher.healthy and message in watcher.problem
    finally:
        watcher.close()
    cli = subprocess.run([sys.executable, "-m", "svcdns", "service", "list", "--registry", wrong],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))  # fmt: skip
    assert cli.returncode == 1 and message in cli.stderr and "Traceback" not in cli.stderr


def test_a_watch_started_while_etcd_is_down_says_its_table_is_no_registry(tmp_path):
    """The stand-in snapshot of a watch that cannot reach etcd is marked unsynced (the agent applies
    nothing from it); the first real read is synced."""
    server = EtcdServer(tmp_path / "etcd")
    server.data_root.mkdir()
    watcher = open_registry(server.url).watch(retry_interval=0.05)
    try:
        first = watcher.start()
        assert not first.synced and len(first.table) == 0 and not watcher.healthy
        server.start()
        writer = open_registry(server.url)
        writer.create(svc("a"))
        snap = watcher.poll(30)
        while snap is not None and ("default", "a") not in snap.services:
            snap = watcher.poll(30)
        assert snap is not None and snap.synced
        writer.close()
    finally:
        watcher.close()
        server.stop()
