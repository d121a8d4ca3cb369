"""Benchmark svcdns's DNS server against dnsmasq and unbound serving the same names, with dnsperf.

    python bench/dns.py [--sizes 1000,10000] [--seconds 10] [--rounds 3] [--baseline DIR]
    python bench/dns.py --abuse [--seconds 10] [--rounds 1]

``--abuse`` measures instead svcdns's answers per second (1,000 names, 1 worker on core 0, dnsperf
and the abuser on core 1) while it is under each abuse of issue 12, side by side with the same run
without abuse: 8 TCP clients that pipeline queries and never read, 700 slowloris connections plus
300 idle ones from 14 addresses (each opened again when closed), and a flood of 2,000 forwarded
queries a second to an upstream that never answers.

Needs root; installs Debian's dnsperf, dnsmasq-base and unbound if missing (``examples/setup.sh bench``). Everything runs inside one network
namespace this script creates (the servers listen on its loopback addresses, never the host's
port 53) and deletes. For each zone size, in the same run: each server pinned to core 0 (svcdns with
one worker), then svcdns with a worker per core; dnsperf (on core 1: one client, 100 queries in flight) asks
for every Service name in turn. The servers take turns, ``--rounds`` times, so that the machine's
drift hits them alike; the table gives the median of the rounds: queries per second, average latency,
queries lost (all rounds), and the server's CPU time per query on core 0. ``--baseline DIR`` adds
the one-worker svcdns of another checkout (``git worktree add DIR main``), taking its turns with the rest.

On a 2-core machine dnsperf on its one core saturates at about the same rate as the servers, so the
queries per second partly measure the client. The CPU time per query on the server's core does not:
it is the server's own cost (user, system and softirq time on core 0 over the run, divided by the
queries answered), and its inverse is what the server would answer with that core to itself.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svcdns.testing.lab import Lab, wait_for  # noqa: E402

SVCDNS = """
import ipaddress, signal, sys, threading
from svcdns.dns.server import DNSServer
from svcdns.model import Service, ServicePort
from svcdns.table import ServiceTable
n, workers = int(sys.argv[1]), int(sys.argv[2])
base = 167772160 + 6291456 + 256  # 10.96.1.0
t = ServiceTable.of([Service(f"s{i}", namespace="bench", ports=(ServicePort(80),),
                             cluster_ips=(str(ipaddress.ip_address(base + i)),)) for i in range(n)])
dead = sys.argv[3:]  # an upstream that never answers, for the abuse runs
srv = DNSServer([("127.0.0.1", 53)], workers=workers, forward=bool(dead), upstreams=dead or None)
srv.start(); srv.update(t)
print("ready", flush=True)
stop = threading.Event(); signal.signal(signal.SIGTERM, lambda *a: stop.set()); stop.wait()
srv.stop()
"""


# the abusers of --abuse (from the node namespace's loopback, other addresses than dnsperf's)
NON_READERS = """
import socket, struct, threading
from dnslib import DNSRecord
q = bytes(DNSRecord.question("s1.bench.svc.cluster.local").pack())
frame = struct.pack("!H", len(q)) + q
def hog():
    while True:
        try:
            s = socket.socket(); s.bind(("127.0.0.2", 0)); s.connect(("127.0.0.1", 53))
            while True:
                s.send(frame * 64)
        except OSError:
            pass
for _ in range(8):
    threading.Thread(target=hog, daemon=True).start()
threading.Event().wait()
"""
FLOOD = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.5", 0)); s.setblocking(False)
from dnslib import DNSRecord
qs = [bytes(DNSRecord.question(f"n{i}.example.org").pack()) for i in range(2000)]
while True:
    start = time.monotonic()
    for q in qs:
        try:
            s.sendto(q, ("127.0.0.1", 53))
        except OSError:
            pass
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
    time.sleep(max(0.0, 1 - (time.monotonic() - start)))
"""
BLACKHOLE = """
import socket, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.4", 53))
t = socket.socket(); t.bind(("127.0.0.4", 53)); t.listen(1)
threading.Event().wait()
"""
ABUSES = [("none", None), ("8 TCP clients that never read", ["-c", NON_READERS]),
          ("700 slowloris + 300 idle TCP", ["-m", "svcdns.testing.abuse"]),
          ("2,000 forwards/s to a dead upstream", ["-c", FLOOD])]  # the abuser's python arguments


def run_abuse(seconds: int, rounds: int, tmp: Path) -> list[tuple[str, dict]]:
    """svcdns (1 worker, core 0) under each abuse (the abuser and dnsperf on core 1), in turns."""
    n = 1000
    pairs = names(n)
    queries = tmp / "queries-abuse"
    queries.write_text("".join(f"{name} A\n" for name, _ in pairs))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    pin = ["taskset", "-c", "1"] if (os.cpu_count() or 1) > 1 else []
    runs: dict[str, list[dict]] = {}
    with Lab(pods=0, tag="benchabuse") as lab:
        hole = lab.spawn(lab.node, [sys.executable, "-c", BLACKHOLE], env=env)
        server = lab.spawn(lab.node, ["taskset", "-c", "0", sys.executable, "-P", "-c", SVCDNS, str(n), "1", "127.0.0.4:53"],
                           env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "abuse.log", "a"))  # fmt: skip
        try:
            wait_for(lambda: ready(lab, "127.0.0.1", pairs[-1][0]), 60, 0.2, "svcdns to answer")
            for _ in range(rounds):
                for label, script in ABUSES:
                    abuser = None
                    if script is not None:
                        abuser = lab.spawn(lab.node, [*pin, sys.executable, *script], env=env,
                                           stdout=subprocess.DEVNULL, stderr=open(tmp / "abuse.log", "a"))  # fmt: skip
                        time.sleep(2)  # the abuse takes hold (the slots fill, the queue of forwards grows)
                    try:
                        runs.setdefault(label, []).append(dnsperf(lab, "127.0.0.1", queries, seconds))
                    finally:
                        if abuser is not None:
                            lab.stop(abuser)
        finally:
            lab.stop(server)
            lab.stop(hole)
    return [(label, {k: statistics.median(r[k] for r in results) for k in ("qps", "latency_ms", "lost")})
            for label, results in runs.items()]  # fmt: skip


def names(n: int) -> list[tuple[str, str]]:
    return [(f"s{i}.bench.svc.cluster.local", str(ipaddress.ip_address(int(ipaddress.ip_address("10.96.0.0")) + 256 + i)))
            for i in range(n)]  # fmt: skip


def core0() -> tuple[int, int]:
    """Core 0's busy and total time so far (clock ticks; steal time excluded from both)."""
    for line in open("/proc/stat"):
        if line.startswith("cpu0 "):
            user, nice, system, idle, iowait, irq, softirq = map(int, line.split()[1:8])
            busy = user + nice + system + irq + softirq
            return busy, busy + idle + iowait
    raise RuntimeError("no cpu0 line in /proc/stat")


def dnsperf(lab, server: str, queries: Path, seconds: int) -> dict:
    pin = ["taskset", "-c", "1"] if (os.cpu_count() or 1) > 1 else []  # the servers have core 0
    busy0, total0 = core0()
    start = time.monotonic()
    out = lab.node.run([*pin, "dnsperf", "-s", server, "-d", str(queries), "-l", str(seconds),
                        "-c", "1", "-q", "100"]).stdout  # fmt: skip
    wall = time.monotonic() - start
    busy1, total1 = core0()

    def grab(label: str) -> float:
        m = re.search(rf"{label}:\s+([\d.]+)", out)
        return float(m.group(1)) if m else float("nan")

    answered = grab("Queries completed")
    busy = (busy1 - busy0) / max(total1 - total0, 1)  # core 0's busy share over the run
    return {"qps": grab("Queries per second"), "latency_ms": grab(r"Average Latency \(s\)") * 1000,
            "lost": int(grab("Queries lost")), "cpu_us": busy * wall / answered * 1e6 if answered else float("nan")}  # fmt: skip


def ready(lab, server: str, name: str) -> bool:
    """The server answers the name (dig +short prints its errors on stdout too: ";; ...")."""
    out = lab.node.run(["dig", "+short", "+time=1", "+tries=1", f"@{server}", name], check=False).stdout.strip()
    return bool(out) and not out.startswith(";")


def run_size(n: int, seconds: int, rounds: int, tmp: Path, baseline: str = "") -> list[tuple[str, dict]]:
    runs: dict[str, list[dict]] = {}
    pairs = names(n)
    queries = tmp / f"queries-{n}"
    queries.write_text("".join(f"{name} A\n" for name, _ in pairs))
    hosts = tmp / f"hosts-{n}"
    hosts.write_text("".join(f"{ip} {name}\n" for name, ip in pairs))
    unbound = tmp / f"unbound-{n}.conf"
    unbound.write_text(
        "server:\n  interface: 127.0.0.3\n  port: 53\n  num-threads: 1\n  do-daemonize: no\n  username: \"\"\n"
        "  chroot: \"\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  access-control: 127.0.0.0/8 allow\n"
        "  local-zone: \"cluster.local.\" static\n"
        + "".join(f"  local-data: \"{name}. 5 IN A {ip}\"\n" for name, ip in pairs)
    )  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    probe = pairs[-1][0]
    servers = [
            ("svcdns, 1 worker, core 0", ["taskset", "-c", "0", sys.executable, "-P", "-c", SVCDNS, str(n), "1"], "127.0.0.1"),
            ("dnsmasq, core 0", ["taskset", "-c", "0", "dnsmasq", "-k", "--conf-file=/dev/null", "--listen-address=127.0.0.2",
                                 "--bind-interfaces", "--port=53", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
                                 "--cache-size=10000", "--user=root", "--pid-file="], "127.0.0.2"),
            ("unbound, core 0", ["taskset", "-c", "0", "unbound", "-d", "-c", str(unbound)], "127.0.0.3"),
            ("svcdns, 2 workers, all cores", [sys.executable, "-P", "-c", SVCDNS, str(n), "2"], "127.0.0.1"),
    ]  # fmt: skip
    # -P everywhere: the working directory is not put first on sys.path, where (run from a checkout)
    # it shadowed the baseline's PYTHONPATH: both rows measured this checkout
    if baseline:  # the same script, importing the other checkout's svcdns
        servers.insert(1, ("baseline, 1 worker, core 0", ["taskset", "-c", "0", "env", f"PYTHONPATH={baseline}",
                                                               sys.executable, "-P", "-c", SVCDNS, str(n), "1"], "127.0.0.1"))
    with Lab(pods=0, tag="benchdns") as lab:
        for _ in range(rounds):
            for label, cmd, server in servers:
                proc = lab.spawn(lab.node, cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{n}.log", "a"))
                try:
                    # a 100k-Service zone takes tens of seconds to read and compile before the first answer
                    wait_for(lambda server=server: ready(lab, server, probe), 60 + n // 400, 0.2, f"{label} to answer")
                    runs.setdefault(label, []).append(dnsperf(lab, server, queries, seconds))
                finally:
                    lab.stop(proc)
    rows = []
    for label, results in runs.items():
        row = {k: statistics.median(r[k] for r in results) for k in ("qps", "latency_ms", "cpu_us")}
        row["lost"] = sum(r["lost"] for r in results)
        rows.append((label, row))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=None, help="turns each server takes (the table gives medians; "
                    "default 3, with --abuse 1)")  # fmt: skip
    ap.add_argument("--baseline", metavar="DIR", default="", help="also the one-worker svcdns of this checkout")
    ap.add_argument("--abuse", action="store_true", help="svcdns's answers per second under each abuse instead")
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.abuse else 3)
    if os.geteuid() != 0:
        sys.exit("bench/dns.py: needs root (it builds a network namespace)")
    if not all(shutil.which(tool) for tool in ("dnsperf", "dnsmasq", "unbound")):
        print("bench/dns.py: installing dnsperf, dnsmasq-base and unbound (examples/setup.sh bench)", file=sys.stderr)
        subprocess.run(
            ["bash", str(Path(__file__).resolve().parent.parent / "examples" / "setup.sh"), "bench"], check=True
        )
    with tempfile.TemporaryDirectory(prefix="svcdns-bench-dns-") as tmp:
        if args.abuse:
            rows = run_abuse(args.seconds, rounds, Path(tmp))
            base = dict(rows)["none"]
            print(f"{'svcdns (1 worker, 1,000 names) under':<38} {'QPS':>9} {'vs none':>8} {'avg latency':>12} {'lost':>6}")
            for label, r in rows:
                print(f"{label:<38} {r['qps']:>9.0f} {r['qps'] / base['qps']:>7.2f}x {r['latency_ms']:>9.2f} ms"
                      f" {r['lost']:>6.0f}")  # fmt: skip
            return
        print(f"{'zone':>7}  {'server':<30} {'QPS':>9} {'vs dnsmasq':>10} {'avg latency':>12} {'lost':>6}"
              f"  {'core-0 CPU/query':>16} {'capacity':>10}")  # fmt: skip
        for n in (int(x) for x in args.sizes.split(",")):
            rows = run_size(n, args.seconds, rounds, Path(tmp), str(Path(args.baseline).resolve()) if args.baseline else "")
            base = dict(rows)["dnsmasq, core 0"]
            for label, r in rows:
                pinned = "core 0" in label  # the all-cores row shares core 0 with nothing to compare
                cpu = (
                    f"{r['cpu_us']:>13.2f} us {base['cpu_us'] / r['cpu_us']:>9.2f}x"
                    if pinned
                    else f"{'-':>16} {'-':>10}"
                )
                print(f"{n:>7,}  {label:<30} {r['qps']:>9.0f} {r['qps'] / base['qps']:>9.2f}x"
                      f" {r['latency_ms']:>9.2f} ms {r['lost']:>6}  {cpu}")  # fmt: skip


if __name__ == "__main__":
    main()
