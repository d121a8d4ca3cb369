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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
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
    finally:
        shutil.rmtree(root)

    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'seconds':>8}  {'peak RSS MB':>11}  ratio to baseline")
    for what, sec, mem, ratio in rows:
        print(f"{what:<{width}}  {sec:8.3f}  {mem:11.1f}  {ratio}")
    if args.json:
        print(json.dumps([{"what": r[0], "seconds": r[1], "peak_rss_mb": r[2]} for r in rows]))


if __name__ == "__main__":
    main()
