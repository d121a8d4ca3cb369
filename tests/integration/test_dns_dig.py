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

from svcdns.lab import wait_for

STUB = textwrap.dedent(
    """
    import time
    from dnslib import RR, QTYPE, A
    from dnslib.server import BaseResolver, DNSServer
    class Stub(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            if str(request.q.qname).lower() == "example.org." and request.q.qtype == QTYPE.A:
                reply.add_answer(RR("example.org.", QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
            else:
                reply.header.rcode = 3
            return reply
    for tcp in (False, True):
        DNSServer(Stub(), address="127.0.0.2", port=53, tcp=tcp).start_thread()
    print("listening", flush=True)
    while True:
        time.sleep(3600)
    """
)


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
    stub = world.spawn(world.node, [sys.executable, "-c", STUB], env=env)
    assert b"listening" in stub.stdout.readline()
    server = world.spawn(
        world.node,
        [sys.executable, "-m", "svcdns", "dns", "--registry", str(registry), "--listen", "127.0.0.1:53",
         "--listen", "10.244.1.1:53", "--upstream", "127.0.0.2:53", "--workers", "2"],
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
