"""Both dataplanes (nftables, iptables) with real packets, in namespaces of the test's own: what a user
would check.

World: a node namespace, pods 1-3 behind veths. Pods 1 and 2 serve TCP 8080 and UDP 5353 and answer
with their own address; pod 3 is a client (and serves too, for the hairpin case). `svcdns sync
--once --dataplane X` runs inside the node namespace, as the agent would. Every behaviour test runs
once per backend; the tests of one backend's own machinery pin ``world`` to it.
"""

import subprocess
import sys
import threading
import time

import pytest

from svcdns.testing.lab import wait_for

PY = [sys.executable, "-m"]


@pytest.fixture(params=["nftables", "iptables"])
def world(request, make_lab, cli):
    backend = request.param
    lab = make_lab(pods=3)
    env, svcdns = cli.env, cli
    for pod in lab.pod_list:
        lab.serve(pod, 8080, "tcp")
        lab.serve(pod, 5353, "udp")
        lab.serve(pod, 8080, "tcp", family=6)

    def sync():
        out = lab.node.run([*PY, "svcdns", "sync", "--once", "--dataplane", backend], env=env)
        return out.stdout

    def ask(vip, port, proto="tcp", count=1, ns=None, timeout=2.0):
        ns = ns or lab.node
        out = ns.run([*PY, "svcdns.testing.podserver", "--client", vip, str(port), "--proto", proto,
                      "--count", str(count), "--timeout", str(timeout)], check=False, env=env)  # fmt: skip
        return out.stdout.split()

    lab.svcdns, lab.sync, lab.ask, lab.env, lab.backend = svcdns, sync, ask, env, backend
    svcdns("service", "add", "web", "--vip", "10.96.0.10", "--port", "http:80:8080/tcp", "--port", "dns:53:5353/udp")
    p1, p2, p3 = lab.pod_list
    svcdns("endpoint", "add", "web", str(p1.ipv4))
    svcdns("endpoint", "add", "web", str(p2.ipv4))
    svcdns("endpoint", "add", "web", str(p3.ipv4), "--not-ready")
    sync()
    # the backend asked for is the one in the kernel (a test must not pass on the other one's rules)
    nat = lab.node.run(["iptables-save", "-t", "nat"]).stdout
    tables = lab.node.run(["nft", "list", "tables"]).stdout
    assert ("SVCDNS-SERVICES" in nat) == (backend == "iptables") and ("svcdns" in tables) == (backend == "nftables")
    return lab


def test_vip_reaches_every_ready_endpoint_and_no_other(world):
    p1, p2, p3 = world.pod_list
    got = world.ask("10.96.0.10", 80, count=60)
    assert set(got) == {str(p1.ipv4), str(p2.ipv4)}  # from the node itself: the output hook
    got = world.ask("10.96.0.10", 80, count=40, ns=p3.ns)
    assert set(got) == {str(p1.ipv4), str(p2.ipv4)}  # from a pod: routed through the node (prerouting)


def test_removing_an_endpoint_moves_new_connections(world):
    p1, p2, _ = world.pod_list
    world.svcdns("endpoint", "rm", "web", str(p1.ipv4))
    world.sync()
    assert set(world.ask("10.96.0.10", 80, count=30)) == {str(p2.ipv4)}


def test_no_endpoint_and_unknown_port_are_refused_at_once(world):
    world.svcdns("service", "add", "empty", "--vip", "10.96.0.11", "--port", "http:80/tcp", "--port", "dns:53/udp")
    world.sync()
    pod = world.pod_list[2].ns
    cases = [("10.96.0.11", 80, "tcp"), ("10.96.0.11", 53, "udp"), ("10.96.0.10", 81, "tcp"), ("10.96.0.10", 54, "udp")]
    for ns in (pod, world.node):  # routed through the node (forward hook), and from the node (output hook)
        for vip, port, proto in cases:
            start = time.monotonic()
            said = " ".join(world.ask(vip, port, proto, timeout=5, ns=ns)).lower()
            # a TCP reset or an ICMP port unreachable ("refused"); the node's own UDP socket is told
            # at once by its local stack ("not permitted")
            assert "refused" in said or (ns is world.node and proto == "udp" and "not permitted" in said), (
                vip,
                port,
                said,
            )
            assert time.monotonic() - start < 4, f"{vip}:{port}/{proto} timed out instead of being refused"


def test_udp_moves_to_the_new_endpoint_after_the_old_one_goes(world):
    p1, p2, p3 = world.pod_list
    world.svcdns("endpoint", "rm", "web", str(p2.ipv4))
    world.sync()
    client = "from svcdns.testing.podserver import ask; import sys; print(ask('10.96.0.10', 53, 'udp', source_port=40000))"
    first = p3.ns.run([sys.executable, "-c", client], env=world.env).stdout.strip()
    assert first == str(p1.ipv4)
    world.svcdns("endpoint", "add", "web", str(p2.ipv4))
    world.svcdns("endpoint", "rm", "web", str(p1.ipv4))
    world.sync()
    again = p3.ns.run([sys.executable, "-c", client], env=world.env).stdout.strip()
    assert again == str(p2.ipv4)  # same client port: conntrack would have pinned it to pod 1


def test_zero_to_one_endpoint_udp(world):
    _, p2, p3 = world.pod_list
    world.svcdns("service", "add", "late", "--vip", "10.96.0.12", "--port", "dns:53:5353/udp")
    world.sync()
    client = "from svcdns.testing.podserver import ask; print(ask('10.96.0.12', 53, 'udp', source_port=40001, timeout=1))"
    assert p3.ns.run([sys.executable, "-c", client], env=world.env, check=False).returncode != 0
    world.svcdns("endpoint", "add", "late", str(p2.ipv4))
    world.sync()
    assert p3.ns.run([sys.executable, "-c", client], env=world.env).stdout.strip() == str(p2.ipv4)


def test_hairpin_a_pod_reaches_itself_through_its_service(world):
    p1 = world.pod_list[0]
    world.svcdns("service", "add", "self", "--vip", "10.96.0.13", "--port", "80:8080/tcp")
    world.svcdns("endpoint", "add", "self", str(p1.ipv4))
    world.sync()
    assert world.ask("10.96.0.13", 80, count=5, ns=p1.ns) == [str(p1.ipv4)] * 5


def test_ipv6(world):
    p1, p2, p3 = world.pod_list
    world.svcdns("service", "add", "six", "--ip-family", "ipv6", "--vip", "fd00:96::10", "--port", "80:8080/tcp",
                 "--service-cidr", "10.96.0.0/12", "--service-cidr", "fd00:96::/108")  # fmt: skip
    world.svcdns("endpoint", "add", "six", str(p1.ipv6))
    world.svcdns("endpoint", "add", "six", str(p2.ipv6))
    world.sync()
    assert set(world.ask("fd00:96::10", 80, count=40, ns=p3.ns)) == {str(p1.ipv6), str(p2.ipv6)}


def test_repeated_syncs_keep_a_connection_stream_and_an_open_connection_going(world):
    import socket

    p3 = world.pod_list[2]
    code = (
        "import socket, time\n"
        "s = socket.create_connection(('10.96.0.10', 80), timeout=5)\n"
        "s.recv(100)\n"
        "ok = 0\n"
        "for i in range(40):\n"
        "    s.sendall(b'ping\\n'); assert s.recv(100) == b'ping\\n'; ok += 1; time.sleep(0.1)\n"
        "print('held', ok)\n"
    )
    held = p3.ns.popen([sys.executable, "-c", code], env=world.env, stdout=subprocess.PIPE, text=True)
    failures = []
    stop = threading.Event()

    def stream():
        while not stop.is_set():
            out = world.ask("10.96.0.10", 80, count=5, ns=p3.ns)
            failures.extend(x for x in out if x.startswith("error"))

    t = threading.Thread(target=stream)
    t.start()
    for _ in range(5):  # every `sync --once` is a fresh process: a full convergence of the live table
        world.sync()
    stop.set()
    t.join(30)
    out, _ = held.communicate(timeout=30)
    assert held.returncode == 0 and "held 40" in out
    assert failures == []
    del socket


@pytest.mark.parametrize("world", ["nftables"], indirect=True)
def test_cleanup_leaves_nothing_of_ours(world):
    world.node.run(["nft", "add", "table", "inet", "someone-else"])
    world.node.run([*PY, "svcdns", "cleanup"], env=world.env)
    tables = world.node.run(["nft", "list", "tables"]).stdout
    assert "svcdns" not in tables
    assert "someone-else" in tables  # only ours


@pytest.mark.parametrize("world", ["nftables"], indirect=True)
def test_the_conntrack_mark_is_borrowed_for_vip_connections_only(world):
    """The draw writes a new VIP connection's ct mark between dstnat and srcnat and sets it back to 0;
    a mark someone else gives other connections stays (README: the conntrack mark)."""
    p1, _, p3 = world.pod_list
    world.node.run(["nft", "-f", "-"], input="table inet someone-else {\n chain pre { type filter hook prerouting "
                   "priority -150; ct state new ct mark set 0x42; }\n}\n")  # fmt: skip
    assert len(world.ask("10.96.0.10", 80, count=10, ns=p3.ns)) == 10  # routed through the node
    assert len(world.ask("10.96.0.10", 80, count=10)) == 10  # from the node itself
    assert len(world.ask(str(p1.ipv4), 8080, ns=p3.ns)) == 1  # straight to a pod, no VIP
    to_vip = world.node.run(["conntrack", "-L", "-d", "10.96.0.10"]).stdout.splitlines()
    to_pod = world.node.run(["conntrack", "-L", "-d", str(p1.ipv4)]).stdout.splitlines()
    assert len(to_vip) >= 20 and all("mark=0 " in line for line in to_vip), to_vip
    assert to_pod and all("mark=66 " in line for line in to_pod), to_pod


@pytest.mark.parametrize("world", ["iptables"], indirect=True)
def test_iptables_cleanup_leaves_nothing_of_ours_and_every_other_rule(world):
    others = [
        ["iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.0.0/16", "-j", "MASQUERADE"],
        ["iptables", "-w", "-t", "nat", "-N", "OTHER"],
        ["iptables", "-w", "-t", "nat", "-A", "OTHER", "-p", "tcp", "--dport", "9", "-j", "RETURN"],
        ["iptables", "-w", "-A", "FORWARD", "-s", "10.9.0.0/16", "-j", "ACCEPT"],
        ["ip6tables", "-w", "-A", "OUTPUT", "-d", "fd00:9::/64", "-j", "ACCEPT"],
    ]
    for cmd in others:
        world.node.run(cmd)
    saved = {cmd: world.node.run([cmd]).stdout for cmd in ("iptables-save", "ip6tables-save")}
    assert all("SVCDNS" in text for text in saved.values())  # both families had ours
    world.node.run([*PY, "svcdns", "cleanup", "--dataplane", "iptables"], env=world.env)
    for cmd, before in saved.items():
        after = world.node.run([cmd]).stdout
        assert "SVCDNS" not in after and "svcdns" not in after
        ours_gone = [line for line in before.splitlines() if "SVCDNS" not in line and not line.startswith("#")]
        assert [line for line in after.splitlines() if not line.startswith("#")] == ours_gone  # the rest untouched
    assert "OTHER" in saved["iptables-save"]
    again = world.node.run([*PY, "svcdns", "cleanup", "--dataplane", "iptables"], env=world.env)
    assert again.returncode == 0  # nothing left: a no-op


# per backend: code that makes the next sync's transaction fail in the kernel, and what its error says
SABOTAGE = {
    "iptables": (
        "from svcdns.dataplane.iptables import backend as iptables\n"
        "orig = iptables._restore\n"
        "def broken(family, table, text):\n"
        "    orig(family, table, text.replace('\\nCOMMIT\\n', '\\n-A SVCDNS-SERVICES -j SVCDNS-NO-SUCH-CHAIN\\nCOMMIT\\n'))\n"
        "iptables._restore = broken\n",
        ("SVCDNS-NO-SUCH-CHAIN", "previous rules stay"),
    ),
    "nftables": (
        "import dataclasses\n"
        "from svcdns.dataplane.nftables import encode\n"
        "orig = encode.Encoder._elements\n"
        "def broken(self, mtype, flags, decl, elements, verb):\n"
        "    wrong = dataclasses.replace(decl, name='no-such-map') if decl.name == 'counts' else decl\n"
        "    return orig(self, mtype, flags, wrong, elements, verb)\n"
        "encode.Encoder._elements = broken\n",
        ("No such file or directory", "no-such-map elements"),
    ),
}


def test_a_refused_sync_leaves_the_previous_rules(world):
    p1, p2, _ = world.pod_list
    sabotage, said = SABOTAGE[world.backend]
    code = (
        "from svcdns.dataplane import open_dataplane, DataplaneError\n"
        "from svcdns.registry import load_table\n"
        "import os\n"
        f"dp = open_dataplane({world.backend!r}); t = load_table(os.environ['SVCDNS_REGISTRY'])\n"
        "dp.sync(t)\n"
        + sabotage
        + "try:\n"
        "    web = t.get('default', 'web')\n"
        "    dp.sync(t.replace([web.with_endpoints(web.endpoints[:1])]))\n"
        "except DataplaneError as e:\n"
        "    print('refused:', e)\n"
    )
    out = world.node.run([sys.executable, "-c", code], env=world.env).stdout
    assert "refused:" in out and all(words in out for words in said), out
    assert set(world.ask("10.96.0.10", 80, count=30)) == {str(p1.ipv4), str(p2.ipv4)}


def test_client_ip_affinity_sticks_and_moves_when_its_endpoint_goes(world):
    p1, p2, p3 = world.pod_list
    world.svcdns("service", "add", "sticky", "--vip", "10.96.0.14", "--port", "80:8080/tcp",
                 "--session-affinity", "ClientIP", "--affinity-timeout", "60")  # fmt: skip
    world.svcdns("endpoint", "add", "sticky", str(p1.ipv4))
    world.svcdns("endpoint", "add", "sticky", str(p2.ipv4))
    world.sync()
    from_node = world.ask("10.96.0.14", 80, count=30)
    assert len(set(from_node)) == 1 and from_node[0] in (str(p1.ipv4), str(p2.ipv4))  # one client, one endpoint
    from_pod = world.ask("10.96.0.14", 80, count=30, ns=p3.ns)
    assert len(set(from_pod)) == 1
    world.sync()  # a full convergence (a restart): clients pick again, once, and stick again
    again = world.ask("10.96.0.14", 80, count=10)
    assert len(set(again)) == 1
    gone = again[0]
    world.svcdns("endpoint", "rm", "sticky", gone)
    world.sync()
    after = world.ask("10.96.0.14", 80, count=10)
    assert len(set(after)) == 1 and after[0] != gone


# what a second svcdns on an empty registry writes over ours: our Services' rules gone, its own stamp
FOREIGN = {
    "nftables": ["nft", "-f", "-"],
    "iptables": ["iptables-restore", "-w", "--noflush"],
}


def foreign_rewrite(backend: str) -> str:
    if backend == "iptables":
        return ('*nat\n:SVCDNS-SERVICES - [0:0]\n:SVCDNS-COMMIT - [0:0]\n'
                '-A SVCDNS-COMMIT -m comment --comment "svcdns pid 1 commit 1" -j RETURN\nCOMMIT\n')  # fmt: skip
    from svcdns.dataplane.nftables.ruleset import build, render
    from svcdns.table import ServiceTable

    return "flush table ip svcdns\n" + render(build(ServiceTable()))


def test_the_agent_refuses_unallocated_service_addresses_at_once_and_repairs_a_foreign_rewrite(world, tmp_path):
    """Issue 12 section 6: an address of the service CIDRs that no Service holds timed out (its
    packets left by the default route); now it is refused at once, from a pod and from the node,
    in both families, while VIPs and the cluster DNS address (inside the CIDR, on the node) work.
    Section 4: a second process that rewrote svcdns's table went unnoticed for 45 s; now the
    one-second check sees that svcdns's commit mark is not there and puts the rules back."""
    p1, p2, p3 = world.pod_list
    conf = tmp_path / "svcdns.toml"
    conf.write_text('service_cidrs = ["10.96.0.0/12", "fd00:96::/108"]\ncluster_dns = "10.96.0.53"\n')
    log = tmp_path / "agent.log"
    with log.open("w") as err:
        world.spawn(world.node, [*PY, "svcdns", "agent", "--config", str(conf), "--dns-listen", "127.0.0.1:53",
                                 "--dns-workers", "1", "--dataplane", world.backend],
                    env=world.env, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip

    def ready():
        out = world.node.run(["curl", "-s", "--max-time", "2", "http://127.0.0.1:10256/readyz"], check=False)
        return out.stdout.startswith("ok")

    wait_for(ready, 60, what="the agent to be ready")
    pods = {str(p1.ipv4), str(p2.ipv4)}
    for ns in (p3.ns, world.node):  # a pod (routed through the node) and the node itself
        for address, port, proto in [("10.96.5.5", 80, "tcp"), ("10.96.5.5", 53, "udp"), ("fd00:96::5:5", 80, "tcp")]:
            start = time.monotonic()
            said = " ".join(world.ask(address, port, proto, timeout=5, ns=ns)).lower()
            took = time.monotonic() - start
            assert "refused" in said or (ns is world.node and proto == "udp" and "not permitted" in said), (
                ns.name, address, port, proto, said)  # fmt: skip
            assert took < 1.0, f"{address}:{port}/{proto} from {ns.name}: {took:.2f} s, not at once"
        assert set(world.ask("10.96.0.10", 80, count=10, ns=ns)) == pods  # a VIP still works
        dig = ["dig", "+short", "+time=1", "+tries=2", "@10.96.0.53", "web.default.svc.cluster.local"]
        assert ns.run(dig, check=False).stdout.strip() == "10.96.0.10", f"the cluster DNS address from {ns.name}"

    world.node.run(FOREIGN[world.backend], input=foreign_rewrite(world.backend))
    start = time.monotonic()
    wait_for(lambda: set(world.ask("10.96.0.10", 80, count=4, ns=p3.ns, timeout=0.5)) == pods, 2.5,
             what="the VIP to work again after a foreign rewrite of svcdns's rules")  # fmt: skip
    repaired = time.monotonic() - start
    wait_for(lambda: "rewritten by another process" in log.read_text(), 5, what="the agent's warning")
    assert repaired < 2.5, repaired
