"""Benchmark the embedded registry: VIP allocation and loading a directory of service files.

    python bench/registry.py [--services 10000] [--runs 3]

Each figure is the median of ``--runs`` runs, each in a fresh child process (so "peak RSS" is that
run's own). Baselines measured side by side in the same run:

- allocation at N and 5N: the ratio shows allocation stays linear (no scan of the CIDR per VIP);
- loading a directory: ``yaml.load`` of every file and nothing else (the floor any YAML registry
  pays) vs svcdns's full snapshot (parse + validate + allocate + persist), first and second read.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DOC = """name: svc-{i}
namespace: ns-{ns}
ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: dns, port: 53, protocol: UDP}}
endpoints:
{eps}"""


def make_registry(root: Path, n: int) -> None:
    for i in range(n):
        ns = i % 50
        eps = "".join(f"  - {{address: 10.{(i >> 8) & 255}.{i & 255}.{k + 1}, hostname: pod-{k}}}\n" for k in range(10))
        d = root / f"ns-{ns}"
        d.mkdir(exist_ok=True)
        (d / f"svc-{i}.yaml").write_text(DOC.format(i=i, ns=ns, eps=eps))


def _allocate(n: int) -> float:
    from svcdns.ipam import Allocator

    alloc = Allocator(["10.96.0.0/12", "fd00:96::/108"])
    t = time.perf_counter()
    for i in range(n):
        alloc.assign(f"ns/svc-{i}")
    return time.perf_counter() - t


def _yaml_floor(root: str) -> float:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    t = time.perf_counter()
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".yaml"):
                with open(os.path.join(dirpath, f), "rb") as fh:
                    yaml.load(fh.read(), Loader=loader)
    return time.perf_counter() - t


def _snapshot(root: str) -> float:
    from svcdns.registry import open_registry

    t = time.perf_counter()
    snap = open_registry(root).snapshot()
    elapsed = time.perf_counter() - t
    assert not snap.errors, list(snap.errors.items())[:3]
    return elapsed


def _cli_ops(root: str) -> float:
    """What one `svcdns service add`, `service get` and `endpoint add` cost in a large registry."""
    from svcdns.model import Endpoint, Service, ServicePort
    from svcdns.registry import open_registry

    name = f"new-{os.getpid()}"
    t = time.perf_counter()
    open_registry(root).create(Service(name, ports=(ServicePort(80),)))
    open_registry(root).get("default", name)
    open_registry(root).update("default", name, lambda s: s.with_endpoints((Endpoint("10.1.2.3"),)))
    elapsed = time.perf_counter() - t
    open_registry(root).delete("default", name)
    return elapsed


def _child(fn, args, q) -> None:
    seconds = fn(*args)
    q.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(fn, *args, runs: int) -> tuple[float, float]:
    times, peaks = [], []
    ctx = mp.get_context("fork")
    for _ in range(runs):
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(fn, args, q))
        p.start()
        seconds, peak = q.get()
        p.join()
        times.append(seconds)
        peaks.append(peak)
    return statistics.median(times), statistics.median(peaks)


def bench_etcd(n: int, changes: int) -> list[tuple[str, float, float, str]]:
    """n Services in a throwaway etcd: a snapshot's time, and one change's propagation to two
    watchers (two hosts' agents), p50 and p99 over ``changes`` changes."""
    import asyncio
    import threading

    from svcdns.registry import open_registry
    from svcdns.testing.etcd import EtcdServer

    rows = []
    data = Path(tempfile.mkdtemp(prefix="svcdns-bench-etcd-"))
    try:
        with EtcdServer(data) as server:
            writer = open_registry(server.url)
            writer.client.run(writer.ensure_cidrs())

            async def load() -> None:
                for start in range(0, n, 200):
                    await asyncio.gather(*(
                        writer.client.put(writer.keys.service((f"ns-{i % 50}", f"svc-{i}")), json.dumps({
                            "name": f"svc-{i}", "namespace": f"ns-{i % 50}",
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                            "endpoints": [{"address": f"10.{(i >> 8) & 255}.{i & 255}.{k + 1}"} for k in range(10)],
                        }).encode())
                        for i in range(start, min(n, start + 200))
                    ))  # fmt: skip

            writer.client.run(load(), timeout=600)
            t = time.perf_counter()
            snap = open_registry(server.url).snapshot()  # adopts: allocates and claims every VIP
            first = time.perf_counter() - t
            assert len(snap) == n, (len(snap), list(snap.errors.items())[:3])
            rows.append((f"etcd snapshot {n:,} Services, first (adopts)", first, 0.0, "-"))
            t = time.perf_counter()
            open_registry(server.url).snapshot()
            rows.append((f"etcd snapshot {n:,} Services, again", time.perf_counter() - t, 0.0, "-"))

            watchers = [open_registry(server.url).watch() for _ in range(2)]
            for w in watchers:
                w.start()
            seen: list[dict[int, float]] = [{}, {}]

            def follow(k: int) -> None:
                w = watchers[k]
                while len(seen[k]) < changes:
                    got = w.poll(30)
                    if got is None:
                        return
                    now = time.perf_counter()
                    svc = got.table.get("ns-0", "svc-0")
                    for e in svc.endpoints if svc else ():
                        mark = int(str(e.address).rsplit(".", 1)[1])
                        if str(e.address).startswith("10.250.") and mark not in seen[k]:
                            seen[k][mark] = now

            threads = [threading.Thread(target=follow, args=(k,)) for k in range(2)]
            for th in threads:
                th.start()
            sent: dict[int, float] = {}
            from svcdns.model import Endpoint

            for c in range(changes):
                sent[c] = time.perf_counter()
                writer.update(
                    "ns-0", "svc-0", lambda s, c=c: s.with_endpoints(s.endpoints + (Endpoint(f"10.250.0.{c}"),))
                )
                time.sleep(0.02)
            for th in threads:
                th.join(60)
            lat = sorted(max(seen[k].get(c, float("inf")) for k in range(2)) - sent[c] for c in range(changes))
            p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            rows.append((f"etcd change -> both watchers, p50 ({changes} changes)", p50, 0.0, "-"))
            rows.append((f"etcd change -> both watchers, p99 ({changes} changes)", p99, 0.0, "-"))
            for w in watchers:
                w.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    ap.add_argument("--etcd", action="store_true", help="also: the etcd registry (needs Debian's etcd-server)")
    ap.add_argument("--changes", type=int, default=100, help="with --etcd: changes whose propagation is timed")
    args = ap.parse_args()
    n = args.services
    rows: list[tuple[str, float, float, str]] = []

    a1, m1 = measure(_allocate, n, runs=args.runs)
    a5, m5 = measure(_allocate, 5 * n, runs=args.runs)
    rows.append((f"allocate {n:,} VIPs", a1, m1, "1.00"))
    rows.append((f"allocate {5 * n:,} VIPs", a5, m5, f"{a5 / a1:.2f} (linear: 5)"))

    root = Path(tempfile.mkdtemp(prefix="svcdns-bench-registry-"))
    try:
        make_registry(root, n)
        floor, mf = measure(_yaml_floor, str(root), runs=args.runs)
        rows.append((f"yaml.load {n:,} files (floor)", floor, mf, "1.00"))
        first, mfirst = measure(_snapshot, str(root), runs=1)  # allocates and persists every VIP
        rows.append((f"snapshot {n:,} files, first (allocates)", first, mfirst, f"{first / floor:.2f}"))
        again, magain = measure(_snapshot, str(root), runs=args.runs)
        rows.append((f"snapshot {n:,} files, again", again, magain, f"{again / floor:.2f}"))
        one, mone = measure(_cli_ops, str(root), runs=args.runs)
        rows.append((f"service add + get + endpoint add in {n:,}", one, mone, f"{one / floor:.4f}"))
    finally:
        shutil.rmtree(root)

    if args.etcd:
        rows += bench_etcd(n, args.changes)

    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'seconds':>8}  {'peak RSS MB':>11}  ratio to baseline")
    for what, sec, mem, ratio in rows:
        memtext = f"{mem:11.1f}" if mem else f"{'-':>11}"
        print(f"{what:<{width}}  {sec:8.3f}  {memtext}  {ratio}")
    if args.json:
        print(json.dumps([{"what": r[0], "seconds": r[1], "peak_rss_mb": r[2]} for r in rows]))


if __name__ == "__main__":
    main()
