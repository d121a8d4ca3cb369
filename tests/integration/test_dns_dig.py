"""`svcdns dns` checked the way users check it: with `dig`, inside a network namespace of the test's own.

The server listens on the node namespace's loopback and on the node's address towards a pod; a stub
upstream resolver (dnslib) runs on another loopback address of the same namespace.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from svcdns.testing.lab import wait_for


@pytest.fixture
def dns(make_lab, cli):
    world = make_lab(pods=1)
    registry, env, svcdns = cli.registry, cli.env, cli

    svcdns("service", "add", "web", "--port", "http:80:8080/tcp", "--vip", "10.96.0.10")
    svcdns("service", "add", "db", "--headless", "--port", "pg:5432/tcp")
    for i in range(1, 4):
        svcdns("endpoint", "add", "db", f"10.244.9.{i}", "--hostname", f"db-{i - 1}")
    svcdns("service", "add", "ext", "--external-name", "example.org")
    # a Service with 200 endpoints, written in one go as an orchestrator would
    doc = {"name": "big", "type": "Headless", "ports": [{"port": 80}],
           "endpoints": [f"10.245.{i // 250}.{i % 250 + 1}" for i in range(200)]}  # fmt: skip
    (registry / "default" / "big.json").write_text(json.dumps(doc))
    stub = world.spawn(world.node, [sys.executable, "-m", "svcdns.testing.upstream"], env=env)
    assert b"listening" in stub.stdout.readline()
    server = world.spawn(
        world.node,
        [sys.executable, "-m", "svcdns", "dns", "--registry", str(registry), "--listen", "127.0.0.1:53",
         "--listen", "[::1]:53", "--listen", "10.244.1.1:53", "--upstream", "127.0.0.2:53", "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip

    def dig(*args, ns=None, server="127.0.0.1"):
        ns = ns or world.node
        return ns.run(["dig", "+time=2", "+tries=2", f"@{server}", *args], check=False).stdout

    wait_for(lambda: "status: NOERROR" in dig("web.default.svc.cluster.local"), 20, what="svcdns dns to answer")
    assert server.poll() is None
    dig.svcdns = svcdns
    dig.world = world
    return dig


def records(out):
    """The resource records dig printed, whitespace normalised."""
    return [" ".join(line.split()) for line in out.splitlines() if line.strip() and not line.startswith(";")]


def test_a_srv_ptr_cname_over_udp_and_tcp(dns):
    for proto in ("+notcp", "+tcp"):
        assert dns("+short", proto, "web.default.svc.cluster.local") == "10.96.0.10\n"
        srv = records(dns(proto, "_http._tcp.web.default.svc.cluster.local", "SRV"))
        assert "_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local." in srv
        assert "web.default.svc.cluster.local. 5 IN A 10.96.0.10" in srv  # the additional section
        assert dns("+short", proto, "-x", "10.96.0.10") == "web.default.svc.cluster.local.\n"
        assert "ext.default.svc.cluster.local. 5 IN CNAME example.org." in records(
            dns(proto, "ext.default.svc.cluster.local")
        )
    assert sorted(dns("+short", "db.default.svc.cluster.local").split()) == ["10.244.9.1", "10.244.9.2", "10.244.9.3"]
    assert dns("+short", "db-1.db.default.svc.cluster.local") == "10.244.9.2\n"


def test_mixed_case_is_echoed(dns):
    answers = [line.split() for line in dns("+noall", "+answer", "WeB.Default.SVC.cluster.local").splitlines()]
    assert answers == [["WeB.Default.SVC.cluster.local.", "5", "IN", "A", "10.96.0.10"]]


def test_nxdomain_and_nodata_carry_the_soa(dns):
    out = dns("nope.default.svc.cluster.local")
    assert "status: NXDOMAIN" in out and "AUTHORITY: 1" in out and "SOA" in out
    out = dns("web.default.svc.cluster.local", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out and "SOA" in out


def test_truncation_then_tcp_retry(dns):
    out = dns("+notcp", "+ignore", "big.default.svc.cluster.local")
    assert " tc" in out.split("flags:")[1].split(";")[0]
    out = dns("big.default.svc.cluster.local")  # dig retries over TCP by itself
    assert "ANSWER: 200" in out


def test_forwarding_for_allowed_clients_only(dns):
    assert dns("+short", "example.org") == "192.0.2.1\n"  # loopback: allowed
    # an ExternalName's target is resolved for clients that may recurse
    assert records(dns("+short", "ext.default.svc.cluster.local")) == ["example.org.", "192.0.2.1"]
    pod = dns.world.pod_list[0]
    out = dns("example.org", ns=pod.ns, server="10.244.1.1")  # a pod: not in the allowed networks
    assert "status: REFUSED" in out
    assert dns("+short", "web.default.svc.cluster.local", ns=pod.ns, server="10.244.1.1") == "10.96.0.10\n"
    assert records(dns("+short", "ext.default.svc.cluster.local", ns=pod.ns, server="10.244.1.1")) == ["example.org."]


def test_registry_changes_are_visible_without_restart(dns):
    dns.svcdns("service", "add", "late", "--port", "80", "--vip", "10.96.0.77")
    wait_for(lambda: dns("+short", "late.default.svc.cluster.local") == "10.96.0.77\n", 10, what="the new Service")
    dns.svcdns("service", "rm", "late")
    wait_for(lambda: "NXDOMAIN" in dns("late.default.svc.cluster.local"), 10, what="the Service to go")


BURST = textwrap.dedent(
    """
    import json, random, socket, sys
    from dnslib import DNSRecord
    names = [("web.default.svc.cluster.local", "A"), ("WEB.default.svc.CLUSTER.local", "A"), ("db.default.svc.cluster.local", "A"),
             ("_pg._tcp.db.default.svc.cluster.local", "SRV"), ("nope.default.svc.cluster.local", "A"),
             ("db-1.db.default.svc.cluster.local", "A"), ("web.default.svc.cluster.local", "AAAA")]
    rng = random.Random(int(sys.argv[2]))
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(16)]
    sent = {}
    for n in range(40):  # every socket sends 40 queries before anything is read: the server's queue fills
        for k, s in enumerate(socks):
            name, qtype = rng.choice(names)
            q = DNSRecord.question(name, qtype)
            q.header.id = rng.randrange(65536)
            sent[k, q.header.id] = (name, qtype)
            s.sendto(q.pack(), (sys.argv[1], 53))
    got = []
    for k, s in enumerate(socks):
        s.settimeout(5)
        for _ in range(40):
            a = DNSRecord.parse(s.recv(4096))
            name, qtype = sent.pop((k, a.header.id))  # an answer to a query this very socket sent
            got.append([str(a.q.qname), name + ".", qtype, a.header.rcode, sorted(str(r.rdata) for r in a.rr)])
    print(json.dumps(got))
    """
)


BURST_ANSWERS = {
    ("web.default.svc.cluster.local.", "A"): (0, ["10.96.0.10"]),
    ("web.default.svc.cluster.local.", "AAAA"): (0, []),  # NODATA
    ("nope.default.svc.cluster.local.", "A"): (3, []),  # NXDOMAIN
    ("db-1.db.default.svc.cluster.local.", "A"): (0, ["10.244.9.2"]),
    ("db.default.svc.cluster.local.", "A"): (0, ["10.244.9.1", "10.244.9.2", "10.244.9.3"]),  # rotates: not cached
    ("_pg._tcp.db.default.svc.cluster.local.", "SRV"): (
        0,
        [f"0 33 5432 db-{i}.db.default.svc.cluster.local." for i in range(3)],
    ),
}


def test_bursts_from_many_clients_each_get_their_own_answers(dns):
    """Queued queries are answered in batches; every client gets the answer to its own question,
    with its ID and its case, whether the answer came from the cache or not, over IPv4 and IPv6."""
    for server, seed in (("127.0.0.1", 1), ("127.0.0.1", 2), ("::1", 3)):
        out = dns.world.node.run(
            [sys.executable, "-c", BURST, server, str(seed)], env=dict(os.environ, PYTHONPATH=os.getcwd())
        )
        got = json.loads(out.stdout)
        assert len(got) == 16 * 40
        for qname, sent_name, qtype, rcode, rdata in got:
            assert qname == sent_name  # the question comes back as sent, case included
            assert (rcode, rdata) == BURST_ANSWERS[sent_name.lower(), qtype], (sent_name, qtype)
    assert dns("+short", "web.default.svc.cluster.local", server="::1") == "10.96.0.10\n"


def test_an_oversized_datagram_gets_formerr(dns):
    """A datagram longer than any query (here 5,000 bytes) is answered FORMERR, with its ID."""
    script = (
        "import socket, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
        "s.sendto(struct.pack('!HHHHHH', 4242, 0x0100, 1, 0, 0, 0) + bytes(5000), ('127.0.0.1', 53))\n"
        "a = s.recv(4096); print(list(struct.unpack('!HH', a[:4])))\n"
    )
    out = dns.world.node.run([sys.executable, "-c", script])
    ident, flags = json.loads(out.stdout)
    assert ident == 4242 and flags & 0x8000 and flags & 0xF == 1  # a response, FORMERR


def test_forwarding_off_means_refused(dns, tmp_path):
    world = dns.world
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    world.spawn(world.node, [sys.executable, "-m", "svcdns", "dns", "--registry", str(tmp_path / "registry"),
                             "--listen", "127.0.0.3:53", "--no-forward", "--workers", "1"], env=env)  # fmt: skip
    wait_for(lambda: "status:" in dns("cluster.local", "SOA", server="127.0.0.3"), 20, what="the second server")
    assert "status: REFUSED" in dns("example.org", server="127.0.0.3")


FUZZ = textwrap.dedent(
    """
    import random, socket, struct, sys
    from dnslib import DNSRecord
    rng = random.Random(7)
    seeds = [bytes(DNSRecord.question(n, t).pack()) for n, t in
             [("web.default.svc.cluster.local", "A"), ("db.default.svc.cluster.local", "SRV"), ("example.org", "A")]]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            j = rng.randrange(len(data))
            data[j] = rng.randrange(256)
        if i % 10 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 700)))
        udp.sendto(bytes(data), ("127.0.0.1", 53))
    for i in range(50):  # garbage over TCP: bad lengths, half messages, closed early
        t = socket.create_connection(("127.0.0.1", 53), timeout=2)
        t.sendall(struct.pack("!H", rng.randrange(65536)) + bytes(rng.randrange(256) for _ in range(rng.randrange(200))))
        t.close()
    print("sent")
    """
)


def test_fuzzed_packets_leave_the_server_answering(dns):
    out = dns.world.node.run([sys.executable, "-c", FUZZ], env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert "sent" in out.stdout
    # the flood may still be draining (forwarded garbage waits on the upstream): answers come back
    for proto in ("+notcp", "+tcp"):
        wait_for(lambda p=proto: records(dns("+short", p, "web.default.svc.cluster.local")) == ["10.96.0.10"], 15,
                 what=f"an answer {proto} after the flood")  # fmt: skip
