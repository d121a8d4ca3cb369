"""Benchmark the agent end to end: network programming latency and memory.

    python bench/agent.py [--sizes 1000,10000,30000] [--changes 100] [--etcd]

Needs root; everything runs in lab namespaces. For each size, N Services (10 endpoints each) are
written to a registry directory, the agent starts in a node namespace, and:
- start: seconds from the agent's start to /readyz (every rule and name in place), and the agent
  process's CPU seconds by then (user + system; robust to a loaded machine, where the wall time is not);
- RSS: the agent process's peak RSS (VmHWM), and with its DNS worker processes;
- at 10k Services (else the largest size), ``--changes`` new Services, one after the other: each is
  written as a file (rename into place) by a prober inside the node namespace, which then asks DNS
  for its name until it answers and connects to the VIP; the time from the write to that
  connection, p50 and p99. Then the common change: ``--changes`` Services whose one endpoint
  turns ready (its VIP rejected connections until then); the time from the write to the first
  connection that goes through, p50 and p99. Then a burst: ``--burst`` new Services written one
  after the other as fast as the prober can; the number of syncs the agent made for them (its
  /metrics) and the time from the last write to that Service's name answering and VIP connecting.
With ``--base DIR`` (a clone of an earlier commit), every files row is measured with DIR's code too,
in the same run, back to back: a before/after table.
With ``--etcd``: the same registry in etcd (10k Services), two agents on two node namespaces, the
time to ready, and one change's propagation (written to etcd -> both agents answer), p50/p99.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svcdns.testing.etcd import EtcdServer  # noqa: E402
from svcdns.testing.lab import Lab, link, wait_for  # noqa: E402

ROOT = str(Path(__file__).resolve().parent.parent)
PODS = int(ipaddress.ip_address("10.128.0.0"))  # endpoint i*16+k+1 of Service i: 10 per Service
ENV = dict(os.environ, PYTHONPATH=ROOT)


def env_for(code: str | None) -> dict:
    """The environment that runs the agent of checkout ``code`` (default: this one)."""
    return dict(os.environ, PYTHONPATH=code or ROOT)


PROBER = r"""
import json, os, re, socket, statistics, subprocess, sys, time
from dnslib import DNSRecord
mode, target, servers, changes = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
burst = int(sys.argv[5]) if len(sys.argv) > 5 else 0

def answer(server, name):
    q = DNSRecord.question(name)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
    try:
        s.sendto(q.pack(), (server, 53)); r = DNSRecord.parse(s.recv(4096))
        return str(r.rr[0].rdata) if r.rr else None
    except OSError:
        return None
    finally:
        s.close()

def write(i, name="probe", ready=True):
    doc = {"name": f"{name}{i}", "namespace": "bench", "ports": [{"port": 80, "targetPort": 8080}],
           "endpoints": [{"address": os.environ["LIVE"], "ready": ready}]}
    if mode == "files":
        tmp = os.path.join(target, f".{name}{i}.tmp"); path = os.path.join(target, f"{name}{i}.json")
        with open(tmp, "w") as f: json.dump(doc, f)
        os.rename(tmp, path)
    else:
        from svcdns.registry import open_registry
        from svcdns.registry.documents import from_document
        global REG
        REG = globals().get("REG") or open_registry(target)
        REG.create(from_document(doc))

def resolve(name):
    for server in servers:
        while True:
            vip = answer(server, f"{name}.bench.svc.cluster.local")
            if vip:
                break
            time.sleep(0.001)
    return vip

def pct(lat):
    lat = sorted(lat)
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]

lat = []
for i in range(changes):
    t0 = time.perf_counter(); write(i)
    vip = resolve(f"probe{i}")
    c = socket.create_connection((vip, 80), timeout=2); c.close()
    lat.append(time.perf_counter() - t0)
out = dict(zip(("p50", "p99"), pct(lat)))
if mode == "files":  # an endpoint becoming ready in an existing Service: the common change
    lat = []
    for i in range(changes):
        write(i, "ep", ready=False)
        vip = resolve(f"ep{i}")  # the Service is in place, its port rejects at once
        t0 = time.perf_counter(); write(i, "ep", ready=True)
        while True:
            try:
                c = socket.create_connection((vip, 80), timeout=2); c.close(); break
            except ConnectionRefusedError:
                time.sleep(0.001)
        lat.append(time.perf_counter() - t0)
    out.update(zip(("ep50", "ep99"), pct(lat)))

def syncs():
    text = subprocess.run(["curl", "-s", "http://127.0.0.1:10256/metrics"], capture_output=True, text=True).stdout
    return sum(float(v) for v in re.findall(r'^svcdns_sync_duration_seconds_count\{[^}]*\} (\S+)', text, re.M))

if burst:
    before = syncs()
    for i in range(burst):
        write(i, "burst")
    t0 = time.perf_counter()
    vip = resolve(f"burst{burst - 1}")
    c = socket.create_connection((vip, 80), timeout=2); c.close()
    out["burst_last"] = time.perf_counter() - t0
    time.sleep(1)  # a sync still to come would count too
    out["burst_syncs"] = syncs() - before
print(json.dumps(out))
"""


def write_registry(root: Path, n: int) -> None:
    for i in range(n):
        eps = [str(ipaddress.ip_address(PODS + i * 16 + k + 1)) for k in range(10)]
        doc = {"name": f"s{i}", "namespace": "bench", "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
               "endpoints": eps}  # fmt: skip
        (root / f"s{i}.json").write_text(json.dumps(doc))


def rss(pid: int) -> tuple[float, float]:
    """(peak RSS of the agent process, current RSS of it and its DNS workers), MB."""

    def field(p: int, key: str) -> float:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return field(pid, "VmHWM:"), field(pid, "VmRSS:") + sum(field(int(c), "VmRSS:") for c in children)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (robust to load, where wall time is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_cmd(registry: str, *extra: str) -> list[str]:
    # -P: not the working directory first on sys.path (run from a checkout, it shadowed --base's code)
    return [sys.executable, "-P", "-m", "svcdns", "agent", "--registry", registry, "--dns-listen", "127.0.0.1:53",
            "--dns-workers", "1", *extra]  # fmt: skip


def ready(lab: Lab, timeout: float = 900) -> float:
    start = time.perf_counter()
    wait_for(lambda: "ok" in lab.node.run(["curl", "-s", "http://127.0.0.1:10256/readyz"], check=False).stdout,
             timeout, 0.2, "the agent to be ready")  # fmt: skip
    return time.perf_counter() - start


def bench_files(n: int, changes: int, burst: int = 0, code: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="svcdns-bench-agent-") as tmp, Lab(pods=1, tag="benchagent") as lab:
        registry = Path(tmp)
        write_registry(registry, n)
        lab.serve(lab.pod_list[0], 8080)
        proc = lab.spawn(
            lab.node, agent_cmd(str(registry)), env=env_for(code), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        out = {"start": ready(lab)}
        out["start_cpu"] = cpu_seconds(proc.pid)  # the agent's own thread(s), not its DNS workers
        # the agent's own PID: `ip netns exec` execs it, so the Popen's PID is the agent
        out["peak_rss"], out["total_rss"] = rss(proc.pid)
        if changes:
            env = dict(ENV, LIVE=str(lab.pod_list[0].ipv4))
            res = lab.node.run(
                [sys.executable, "-c", PROBER, "files", str(registry), "127.0.0.1", str(changes), str(burst)], env=env
            )
            out.update(json.loads(res.stdout.strip().splitlines()[-1]))
        return out


def bench_etcd(n: int, changes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="svcdns-bench-etcd-") as tmp, Lab(pods=1, tag="bea") as a, \
            Lab(pods=1, tag="beb") as b:  # fmt: skip
        link(a.node, b.node, "10.242.0.1/30", "10.242.0.2/30")
        etcd = EtcdServer(Path(tmp) / "etcd", host="10.242.0.1", netns=a.node)
        etcd.data_root.mkdir()
        etcd.start()
        try:
            url = etcd.url.rsplit("/", 1)[0] + "/bench"
            files = Path(tmp) / "files"
            files.mkdir()
            write_registry(files, n)
            load = ("import json, os, sys\nfrom svcdns.registry import open_registry\n"
                    "reg = open_registry(sys.argv[1]); d = sys.argv[2]\n"
                    "async def go():\n    c = reg.client\n    import asyncio\n"
                    "    names = sorted(os.listdir(d))\n"
                    "    for i in range(0, len(names), 200):\n"
                    "        await asyncio.gather(*(c.put(reg.keys.service(('bench', n[:-5])), open(os.path.join(d, n), 'rb').read()) for n in names[i:i+200]))\n"
                    "reg.client.run(reg.ensure_cidrs()); reg.client.run(go(), timeout=900)\n")  # fmt: skip
            a.node.run([sys.executable, "-c", load, url, str(files)], env=ENV)
            for lab in (a, b):
                lab.serve(lab.pod_list[0], 8080)
            start = time.perf_counter()
            for lab, addr in ((a, "10.242.0.1"), (b, "10.242.0.2")):
                lab.spawn(lab.node, agent_cmd(url, "--dns-listen", f"{addr}:53"), env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            ready(a)
            ready(b)
            out = {"start": time.perf_counter() - start}
            env = dict(ENV, LIVE=str(a.pod_list[0].ipv4))
            res = a.node.run([sys.executable, "-c", PROBER, "etcd", url, "127.0.0.1,10.242.0.2", str(changes)], env=env)
            out.update(json.loads(res.stdout.strip().splitlines()[-1]))
            return out
        finally:
            etcd.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,30000")
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--etcd", action="store_true")
    ap.add_argument("--burst", type=int, default=1000, help="Services written in one burst at the probed size")
    ap.add_argument("--base", help="another checkout of svcdns (e.g. a clone of an earlier commit) for a before row")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/agent.py: needs root (it builds network namespaces)")
    sizes = [int(x) for x in args.sizes.split(",")]
    probe_at = 10_000 if 10_000 in sizes else max(sizes)
    print("registry | Services | start to ready | CPU to ready | agent peak RSS | with DNS workers | new Service -> working name "
          "and VIP, p50 | p99 | endpoint ready -> VIP connects, p50 | p99 | burst: syncs | last write -> working")  # fmt: skip

    def ms(r, a, b):
        return f"{r[a] * 1000:.0f} ms | {r[b] * 1000:.0f} ms" if a in r else "- | -"

    def burst(r):
        return f"{r['burst_syncs']:.0f} | {r['burst_last'] * 1000:.0f} ms" if "burst_syncs" in r else "- | -"

    for n in sizes:
        for label, code in ([("before", args.base)] if args.base else []) + [("files", None)]:
            r = bench_files(n, args.changes if n == probe_at else 0, args.burst if n == probe_at else 0, code)
            print(f"{label} | {n:,} | {r['start']:.1f} s | {r['start_cpu']:.1f} s | {r['peak_rss']:.0f} MB | {r['total_rss']:.0f} MB | "
                  f"{ms(r, 'p50', 'p99')} | {ms(r, 'ep50', 'ep99')} | {burst(r)}")  # fmt: skip
    if args.etcd:
        r = bench_etcd(10_000, args.changes)
        print(f"etcd, 2 agents | 10,000 | {r['start']:.1f} s | - | - | - | {ms(r, 'p50', 'p99')} | - | -")


if __name__ == "__main__":
    main()
