"""Benchmark the nftables dataplane against the nft CLI and kube-proxy's iptables shape.

    python bench/dataplane.py [--sizes 1000,10000] [--endpoints 10] [--changes 50] [--iptables-sizes 1000]
                              [--base /path/to/another/checkout] [--no-anchors]

Needs root: everything runs in network namespaces this script creates and deletes (svcdns.testing.lab).
For each size, N Services with E endpoints each, measured side by side in one run:

- full sync from empty: svcdns over netlink vs ``nft -f`` of the same ruleset (svcdns's own
  rendering) vs ``iptables-restore`` of kube-proxy's iptables shape (KUBE-SERVICES / KUBE-SVC-* with
  statistic probabilities / KUBE-SEP-* DNAT chains), each into an empty namespace;
- one change (one endpoint added to one Service): svcdns's incremental sync, median and p99 of
  --changes, and its median CPU time (user + kernel, the commit included: what a busy machine's
  other load does not inflate), vs the ``nft`` CLI making the same change (it reads the kernel's
  state first);
- connect() to the last VIP, median over 2000 connections, vs the same with 1 Service;
- peak RSS of the process that ran svcdns's syncs.

With ``--base DIR`` (a clone of an earlier commit), the same svcdns rows are measured with DIR's
code too, in the same run, each size's two sides back to back: a before/after table.
``--no-anchors`` leaves out the ``nft -f`` and ``iptables-restore`` loads; the latter is measured up
to 10k Services only (kube-proxy's shape loads superlinearly: minutes at 100k).

Then svcdns's iptables backend (``--iptables-sizes``, IPv4; empty to skip): its first sync, an
endpoint replaced and a new Service (medians of 5; only the changed chains are written), and a full
resync (iptables-save, then every chain rewritten).
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = str(Path(__file__).resolve().parent.parent)
# the child measures the code of the checkout it is given (--base), this one by default
sys.path.insert(0, os.environ.get("SVCDNS_BENCH_CODE") or HERE)

from svcdns.testing.lab import Lab  # noqa: E402

CHILD = "--child"
# kube-proxy's shape loads superlinearly (29 s at 10k on this machine): beyond this size it is left out
IPTABLES_ANCHOR_MAX = 10_000


def table(n: int, endpoints: int, live: str):
    """N Services; the last one's endpoints are the live pod (so connect() can be timed)."""
    from svcdns.model import Endpoint, Service, ServicePort
    from svcdns.table import ServiceTable

    base, pods = int(ipaddress.ip_address("10.96.0.0")), int(ipaddress.ip_address("10.128.0.0"))
    out = []
    for i in range(n):
        if i == n - 1:
            eps = (Endpoint(live),)
        else:
            eps = tuple(Endpoint(ipaddress.ip_address(pods + i * 16 + k + 1)) for k in range(endpoints))
        out.append(Service(f"s{i}", namespace="bench", ports=(ServicePort(80, target_port=8080),),
                           cluster_ips=(ipaddress.ip_address(base + 256 + i),), endpoints=eps))  # fmt: skip
    return ServiceTable.of(out)


def child(args) -> None:
    """Runs inside the node namespace: svcdns's syncs, then the nft CLI's change, then connect()."""
    import resource

    from svcdns.dataplane import open_dataplane
    from svcdns.model import Endpoint

    t = table(args.n, args.endpoints, args.live)
    dp = open_dataplane(families=("IPv4",))
    full = dp.sync(t).duration
    # as the agent does after its first full sync (svcdns.agent.Agent.sync): the changes' collector
    # passes then walk what they made, not the whole table
    gc.collect()
    gc.freeze()
    last_vip = str(list(t)[-1].cluster_ips[0])
    connect = connect_us(last_vip)
    times, cpu, current = [], [], t
    for j in range(args.changes):
        svc = list(current)[(j * 7919) % (args.n - 1)]
        nxt = current.replace([svc.with_endpoints(svc.endpoints + (Endpoint(f"10.250.{j // 250}.{j % 250 + 1}"),))])
        start = time.thread_time()
        times.append(dp.sync(nxt).duration)
        cpu.append(time.thread_time() - start)
        current = nxt
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the same change with the nft CLI: the port's count one more, the new endpoint's element (a
    # --base checkout of the earlier shape: its chain's draw rewritten instead)
    svc = list(current)[1]
    vip, n = str(svc.cluster_ips[0]), len(svc.endpoints) + 1
    if "@counts" in subprocess.run(["nft", "list", "chain", "ip", "svcdns", "services"], capture_output=True, text=True).stdout:
        step = [f"delete element ip svcdns counts {{ {vip} . tcp . 80 }}",
                f"add element ip svcdns counts {{ {vip} . tcp . 80 : {n} }}"]  # fmt: skip
    else:
        from svcdns.dataplane.nftables.objects import chain_name

        chain = chain_name(svc, "TCP", 80)
        step = [f"flush chain ip svcdns {chain}", f"add rule ip svcdns {chain} ct mark set numgen random mod {n} offset 1"]
    script = "\n".join([
        *step,
        f"add element ip svcdns endpoints {{ {vip} . tcp . 80 . {n} : 10.251.0.1 . 8080 }}",
        "add element ip svcdns hairpin { 10.251.0.1 . 10.251.0.1 }",
    ])  # fmt: skip
    start = time.perf_counter()
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
    nft_change = time.perf_counter() - start
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else 0.0
    print(json.dumps({"full": full, "change": statistics.median(times) if times else 0.0, "change_p99": p99,
                      "change_cpu": statistics.median(cpu) if cpu else 0.0,
                      "nft_change": nft_change, "rss": rss, "connect_us": connect}))  # fmt: skip


def child_iptables(args) -> None:
    """Runs inside the node namespace: the iptables backend's syncs."""
    from svcdns.dataplane import open_dataplane
    from svcdns.model import Endpoint, Service, ServicePort

    t = table(args.n, args.endpoints, args.live)
    dp = open_dataplane("iptables", families=("IPv4",))
    first = dp.sync(t).duration
    services = sorted(t, key=lambda s: s.key)
    replaced, added = [], []
    for i in range(5):
        svc = services[(i * 97) % (args.n - 1)]
        t = t.replace([svc.with_endpoints((*svc.endpoints[1:], Endpoint(f"10.250.{i}.1")))])
        replaced.append(dp.sync(t).duration)
    for i in range(5):
        t = t.replace([Service(f"new{i}", namespace="bench", ports=(ServicePort(80, target_port=8080),),
                               cluster_ips=(f"10.97.0.{i + 1}",), endpoints=(Endpoint("10.250.9.1"),))])  # fmt: skip
        added.append(dp.sync(t).duration)
    full = dp.sync(t, full=True).duration
    print(json.dumps({"first": first, "replaced": statistics.median(replaced), "added": statistics.median(added),
                      "full": full}))  # fmt: skip


def connect_us(vip: str, count: int = 2000) -> float:
    import socket

    samples = []
    for _ in range(count):
        s = socket.socket()
        start = time.perf_counter_ns()
        s.connect((vip, 80))
        samples.append((time.perf_counter_ns() - start) / 1000)
        s.close()
    return statistics.median(samples)


def nft_text(n: int, endpoints: int, live: str) -> str:
    from svcdns.dataplane.nftables.ruleset import build, render

    return render(build(table(n, endpoints, live)))


def iptables_text(n: int, endpoints: int) -> str:
    """kube-proxy's iptables shape (nat table) for the same Services."""
    lines = ["*nat", ":KUBE-SERVICES - [0:0]", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             "-A PREROUTING -j KUBE-SERVICES", "-A OUTPUT -j KUBE-SERVICES"]  # fmt: skip
    body = []
    base, pods = int(ipaddress.ip_address("10.96.0.0")), int(ipaddress.ip_address("10.128.0.0"))
    for i in range(n):
        svc = f"KUBE-SVC-{i:016d}"
        lines.append(f":{svc} - [0:0]")
        body.append(f"-A KUBE-SERVICES -d {ipaddress.ip_address(base + 256 + i)}/32 -p tcp --dport 80 -j {svc}")
        for k in range(endpoints):
            sep = f"KUBE-SEP-{i:012d}{k:04d}"
            ep = ipaddress.ip_address(pods + i * 16 + k + 1)
            lines.append(f":{sep} - [0:0]")
            left = endpoints - k
            prob = f"-m statistic --mode random --probability {1 / left:.11f} " if left > 1 else ""
            body.append(f"-A {svc} {prob}-j {sep}")
            body.append(f"-A {sep} -s {ep}/32 -j MARK --set-xmark 0x4000/0x4000")
            body.append(f"-A {sep} -p tcp -j DNAT --to-destination {ep}:8080")
    return "\n".join(lines + body + ["COMMIT", ""])


def timed(ns, argv: list[str], stdin: str) -> float:
    start = time.perf_counter()
    ns.run(argv, input=stdin)
    return time.perf_counter() - start


def measure(n: int, endpoints: int, changes: int, root: str | None = None, svcdns_only: bool = False) -> dict:
    """The row of ``n`` Services; svcdns's code from ``root`` (default: this checkout)."""
    env = dict(os.environ, PYTHONPATH=root or HERE, SVCDNS_BENCH_CODE=root or HERE)
    with Lab(pods=1, tag="bench") as lab:
        lab.serve(lab.pod_list[0], 8080)
        live = str(lab.pod_list[0].ipv4)
        out = lab.node.run([sys.executable, __file__, CHILD, "--n", str(n), "--endpoints", str(endpoints),
                            "--changes", str(changes), "--live", live], env=env)  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
    if svcdns_only:
        return result
    with Lab(pods=0, tag="bench") as lab:
        result["nft_f"] = timed(lab.node, ["nft", "-f", "-"], nft_text(n, endpoints, "10.244.1.2"))
    if n <= IPTABLES_ANCHOR_MAX:
        with Lab(pods=0, tag="bench") as lab:
            result["iptables"] = timed(lab.node, ["iptables-restore"], iptables_text(n, endpoints))
    return result


def measure_iptables(n: int, endpoints: int) -> dict:
    env = dict(os.environ, PYTHONPATH=HERE, SVCDNS_BENCH_CODE=HERE)
    with Lab(pods=0, tag="bench") as lab:
        out = lab.node.run([sys.executable, __file__, CHILD, "--iptables", "--n", str(n), "--endpoints", str(endpoints),
                            "--live", "10.244.1.2"], env=env)  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--no-anchors", action="store_true", help="skip the nft -f and iptables-restore loads")
    ap.add_argument("--base", help="another checkout of svcdns (e.g. a clone of an earlier commit) for a before column")
    ap.add_argument("--iptables-sizes", default="1000", help="Services for the iptables backend's rows ('' to skip)")
    ap.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--iptables", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--live", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_iptables(args) if args.iptables else child(args)
        return
    if os.geteuid() != 0:
        sys.exit("bench/dataplane.py: needs root (it builds network namespaces)")
    sizes = [1] + [int(x) for x in args.sizes.split(",")]
    rows, base = {}, {}
    for n in sizes[1:]:
        if args.base:
            base[n] = measure(n, args.endpoints, args.changes, root=args.base, svcdns_only=True)
        rows[n] = measure(n, args.endpoints, args.changes, svcdns_only=args.no_anchors)
    one = measure(2, args.endpoints, 1)  # the baseline for connect(): (almost) nothing else loaded
    head = ["Services", "svcdns full", "nft -f", "iptables-restore", "svcdns 1 change, median", "p99",
            "nft CLI 1 change", "connect last VIP", "vs 2 Services", "peak RSS"]  # fmt: skip
    print(f"{args.endpoints} endpoints per Service; times in seconds unless marked")
    print(" | ".join(head))
    for n, r in rows.items():
        print(" | ".join([
            f"{n:,}", f"{r['full']:.2f}", f"{r['nft_f']:.2f}" if "nft_f" in r else "-",
            f"{r['iptables']:.2f}" if "iptables" in r else "-",
            f"{r['change'] * 1000:.2f} ms", f"{r['change_p99'] * 1000:.2f} ms", f"{r['nft_change'] * 1000:.0f} ms",
            f"{r['connect_us']:.1f} us", f"{r['connect_us'] / one['connect_us']:.2f}x", f"{r['rss']:.0f} MB",
        ]))  # fmt: skip
    print(f"(2 Services: connect {one['connect_us']:.1f} us)")
    if base:
        print(f"\nbefore ({args.base}) and after (this checkout), measured in this run")
        print(" | ".join(["Services", "full sync before", "after", "1 change median before", "after", "p99 before",
                          "after", "CPU median before", "after", "peak RSS before", "after"]))  # fmt: skip
        for n, b in base.items():
            r = rows[n]
            print(" | ".join([f"{n:,}", f"{b['full']:.2f}", f"{r['full']:.2f}", f"{b['change'] * 1000:.2f} ms",
                              f"{r['change'] * 1000:.2f} ms", f"{b['change_p99'] * 1000:.2f} ms",
                              f"{r['change_p99'] * 1000:.2f} ms", f"{b['change_cpu'] * 1000:.2f} ms",
                              f"{r['change_cpu'] * 1000:.2f} ms", f"{b['rss']:.0f} MB", f"{r['rss']:.0f} MB"]))  # fmt: skip
    ipt = {n: measure_iptables(n, args.endpoints) for n in (int(x) for x in args.iptables_sizes.split(",") if x)}
    if ipt:
        print("\nsvcdns --dataplane iptables (" + os.path.realpath("/usr/sbin/iptables").rsplit("/", 1)[-1] + ")")
        print(" | ".join(["Services", "first sync", "endpoint replaced", "new Service", "full resync"]))
        for n, r in ipt.items():
            print(" | ".join([f"{n:,}", f"{r['first']:.2f}", f"{r['replaced'] * 1000:.0f} ms",
                              f"{r['added'] * 1000:.0f} ms", f"{r['full']:.2f}"]))  # fmt: skip


if __name__ == "__main__":
    main()
