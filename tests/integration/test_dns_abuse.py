"""`svcdns dns` under abuse, inside a network namespace of the test's own: TCP clients that never
read their answers, slowloris and idle TCP connections, and a flood of queries forwarded to an
upstream that never answers."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from svcdns.testing.lab import wait_for

# 8 TCP clients (from 127.0.0.2) pipeline queries for 6 s and never read; meanwhile a well-behaved
# client asks 80 questions over UDP and 10 over TCP (from 127.0.0.1), each with a 2 s timeout.
NON_READERS = textwrap.dedent(
    """
    import json, socket, struct, threading, time
    from dnslib import DNSRecord
    q = bytes(DNSRecord.question("big.default.svc.cluster.local").pack())
    frame = struct.pack("!H", len(q)) + q
    pushed = [0]
    stop = threading.Event()
    def hog():
        s = socket.socket(); s.bind(("127.0.0.2", 0)); s.connect(("127.0.0.1", 53)); s.settimeout(0.5)
        while not stop.is_set():
            try:
                pushed[0] += s.send(frame * 64)
            except (TimeoutError, OSError):
                if stop.is_set():
                    break
                try:
                    s = socket.socket(); s.bind(("127.0.0.2", 0)); s.connect(("127.0.0.1", 53)); s.settimeout(0.5)
                except OSError:
                    time.sleep(0.1)
    hogs = [threading.Thread(target=hog) for _ in range(8)]
    for t in hogs:
        t.start()
    time.sleep(1)
    udp = tcp = 0
    slowest = 0.0
    for i in range(90):
        start = time.monotonic()
        try:
            a = DNSRecord.parse(DNSRecord.question("web.default.svc.cluster.local").send("127.0.0.1", 53, tcp=i >= 80, timeout=2))
            if [str(r.rdata) for r in a.rr] == ["10.96.0.10"]:
                udp, tcp = (udp + 1, tcp) if i < 80 else (udp, tcp + 1)
                slowest = max(slowest, time.monotonic() - start)
        except Exception:
            pass
        time.sleep(0.05)
    stop.set()
    for t in hogs:
        t.join()
    print(json.dumps({"udp": udp, "tcp": tcp, "pushed": pushed[0], "slowest": slowest}))
    """
)

# 700 slowloris connections (half a length prefix, then a byte every 2 s: a query that never ends)
# and 300 idle ones, from 14 addresses (so the per-client cap alone cannot stop them), each one
# opened again as soon as the server closes it, for as long as a well-behaved client asks 40
# questions, alternating UDP and TCP, each with a 2 s timeout.
SLOWLORIS = textwrap.dedent(
    """
    import json, time
    from dnslib import DNSRecord
    from svcdns.testing.abuse import start as attack
    attacker = attack(700, 300)
    pump = attacker.pump
    pump(time.monotonic() + 3)  # the slots fill up
    answered = {"udp": 0, "tcp": 0}
    slowest = 0.0
    for i in range(40):
        tcp = i % 2 == 1
        start = time.monotonic()
        try:
            a = DNSRecord.parse(DNSRecord.question("web.default.svc.cluster.local").send("127.0.0.1", 53, tcp=tcp, timeout=2))
            if [str(r.rdata) for r in a.rr] == ["10.96.0.10"]:
                answered["tcp" if tcp else "udp"] += 1
                slowest = max(slowest, time.monotonic() - start)
        except Exception:
            pass
        pump(time.monotonic() + 0.1)
    print(json.dumps({**answered, "slowest": slowest, "opened": attacker.opened, "open": len(attacker.state)}))
    """
)

# An upstream that never answers: a UDP socket nobody reads, and a TCP listener nobody accepts on.
BLACKHOLE = textwrap.dedent(
    """
    import socket, time
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.3", 53))
    t = socket.socket(); t.bind(("127.0.0.3", 53)); t.listen(1)
    print("listening", flush=True)
    time.sleep(3600)
    """
)

# 20,000 forwarded queries as fast as they go, then the time until an in-zone answer and a
# forwarded answer (SERVFAIL while the queue is full, at once) come back.
FLOOD = textwrap.dedent(
    """
    import json, random, socket, time
    from dnslib import DNSRecord
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(20000):
        s.sendto(DNSRecord.question(f"n{i}.example.org").pack(), ("127.0.0.1", 53))
    def timed(name):
        start = time.monotonic()
        try:
            a = DNSRecord.parse(DNSRecord.question(name).send("127.0.0.1", 53, timeout=10))
            return time.monotonic() - start, a.header.rcode
        except Exception:
            return None, None
    inzone = timed("web.default.svc.cluster.local")
    forwarded = timed("late.example.org")
    print(json.dumps({"inzone": inzone, "forwarded": forwarded}))
    """
)


def workers(pid: int) -> list[int]:
    """The server's worker processes: its children started by multiprocessing's spawn_main."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    return sorted(c for c in children if b"spawn_main" in open(f"/proc/{c}/cmdline", "rb").read())


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.fixture
def served(make_lab, cli):
    world = make_lab(pods=1)
    cli("service", "add", "web", "--port", "80", "--vip", "10.96.0.10")
    doc = {"name": "big", "type": "Headless", "ports": [{"port": 80}],
           "endpoints": [f"10.245.{i // 250}.{i % 250 + 1}" for i in range(200)]}  # fmt: skip
    (cli.registry / "default" / "big.json").write_text(json.dumps(doc))
    hole = world.spawn(world.node, [sys.executable, "-c", BLACKHOLE], env=cli.env)
    assert b"listening" in hole.stdout.readline()
    server = world.spawn(world.node, [sys.executable, "-m", "svcdns", "dns", "--registry", str(cli.registry),
                                      "--listen", "127.0.0.1:53", "--workers", "2", "--upstream", "127.0.0.3:53"],
                         env=cli.env, stdout=subprocess.DEVNULL)  # fmt: skip
    dig = ["dig", "+short", "+time=1", "+tries=1", "@127.0.0.1", "web.default.svc.cluster.local"]
    wait_for(lambda: world.node.run(dig, check=False).stdout == "10.96.0.10\n", 20, what="svcdns dns to answer")
    return world, server


def test_tcp_clients_that_never_read_cost_only_their_own_connections(served):
    """Before: 0 of 80 UDP queries answered while 8 such clients pushed 37 MB."""
    world, server = served
    result = json.loads(world.node.run([sys.executable, "-c", NON_READERS], timeout=60).stdout)
    summary = (f"{result['udp']} of 80 UDP and {result['tcp']} of 10 TCP queries answered while 8 clients that "
               f"never read pushed {result['pushed'] / 1e6:.1f} MB; slowest answer {result['slowest']:.3f} s")  # fmt: skip
    print(summary)
    assert server.poll() is None, summary
    assert result["udp"] == 80 and result["tcp"] == 10 and result["slowest"] < 1.0, summary


def test_slowloris_and_idle_connections_never_lock_out_a_client(served):
    """Before: 700 slowloris connections held every TCP slot (2 workers x 256), and all TCP queries
    failed for as long as the trickle went on."""
    world, server = served
    result = json.loads(world.node.run([sys.executable, "-c", SLOWLORIS], timeout=120).stdout)
    summary = (f"{result['udp']} of 20 UDP and {result['tcp']} of 20 TCP queries answered under 700 slowloris and "
               f"300 idle connections from 14 addresses; slowest answer {result['slowest']:.3f} s; the attacker "
               f"opened {result['opened']} connections in all ({result['opened'] - 1000} again after the server "
               f"closed them)")  # fmt: skip
    print(summary)
    assert server.poll() is None, summary
    assert result["udp"] == 20 and result["tcp"] == 20 and result["slowest"] < 1.0, summary


def test_a_flood_of_forwards_to_a_dead_upstream_is_bounded(served):
    """Before: no forwarded answer within 20 s after the flood, and the worker grew from 19 to 85 MB."""
    world, server = served
    before = {pid: rss_mb(pid) for pid in workers(server.pid)}
    result = json.loads(world.node.run([sys.executable, "-c", FLOOD], timeout=120).stdout)
    after = {pid: rss_mb(pid) for pid in workers(server.pid)}
    inzone, forwarded = result["inzone"], result["forwarded"]
    summary = (f"after 20,000 forwards to a dead upstream: in-zone answer in {inzone[0]} s, a forwarded query "
               f"got rcode {forwarded[1]} in {forwarded[0]} s; worker RSS {before} -> {after} MB")  # fmt: skip
    print(summary)
    assert inzone[0] is not None and inzone[0] < 1.0, summary
    assert forwarded[0] is not None and forwarded[0] < 3.0 and forwarded[1] == 2, summary  # SERVFAIL, soon
    assert all(after[pid] - before.get(pid, after[pid]) < 20 for pid in after), summary
