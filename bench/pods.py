"""Benchmark endpoints derived from pods: 10k Services each selecting 10 pods (100k pods).

    python bench/pods.py [--services 10000] [--pods-per-service 10] [--changes 300]

Measured on the etcd registry's state machine (``EtcdState``: what an agent runs per watch event,
no I/O), in a fresh child process so the peak RSS is that run's own:

- a full read: every Service and pod document decoded, and every Service's endpoints derived;
- one pod change (its readiness flipped) until the new table is built, p50 / p99, against the
  baseline measured side by side: one endpoint change of a Service with explicit endpoints, today's
  cost for the same effect.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svcdns.registry.etcd.state import EtcdState, Keys  # noqa: E402


def _ip(i: int, j: int) -> str:
    n = i * 16 + j
    return f"10.{128 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def _vip(i: int) -> str:
    return f"10.96.{i >> 8}.{i & 255}"


def _service(i: int, selector: bool, pods: int) -> bytes:
    doc: dict = {"name": f"svc-{i}", "namespace": f"ns-{i % 50}", "clusterIP": _vip(i), "clusterIPs": [_vip(i)],
                 "ports": [{"name": "http", "port": 80, "targetPort": "http" if selector else 8080}]}  # fmt: skip
    if selector:
        doc["selector"] = {"app": f"svc-{i}"}
    else:
        doc["endpoints"] = [{"address": _ip(i, j)} for j in range(pods)]
    return json.dumps(doc).encode()


def _pod(i: int, j: int, ready: bool = True) -> bytes:
    return json.dumps({"name": f"svc-{i}-{j}", "namespace": f"ns-{i % 50}", "labels": {"app": f"svc-{i}", "tier": "x"},
                       "podIPs": [_ip(i, j)], "ports": [{"containerPort": 8080, "name": "http"}],
                       "ready": ready}).encode()  # fmt: skip


def _run(n: int, per: int, changes: int, selector: bool, q) -> None:
    keys = Keys("/b")
    state = EtcdState(keys)
    start = time.perf_counter()
    state.begin_full_read()
    for i in range(n):
        state.apply_put(keys.service((f"ns-{i % 50}", f"svc-{i}")), _service(i, selector, per), 1)
        state.apply_put(keys.vip(ipaddress.ip_address(_vip(i))), f"ns-{i % 50}/svc-{i}".encode(), 1)
        if selector:
            for j in range(per):
                state.apply_put(keys.pod((f"ns-{i % 50}", f"svc-{i}-{j}")), _pod(i, j), 1)
    state.end_full_read()
    state.rebuild(1)
    full = time.perf_counter() - start
    assert state.table.endpoint_count() == n * per, state.table.endpoint_count()
    costs = []
    for c in range(changes):
        i, j = (c * 7919) % n, c % per
        ready = c % 2 == 1
        if selector:
            key, value = keys.pod((f"ns-{i % 50}", f"svc-{i}-{j}")), _pod(i, j, ready)
        else:
            doc = json.loads(_service(i, False, per))
            doc["endpoints"][j]["ready"] = ready
            key, value = keys.service((f"ns-{i % 50}", f"svc-{i}")), json.dumps(doc).encode()
        t = time.perf_counter()
        state.apply_put(key, value, 2 + c)
        state.rebuild()
        costs.append(time.perf_counter() - t)
        assert state.table.get(f"ns-{i % 50}", f"svc-{i}").endpoints[j].ready == ready
    costs.sort()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put((full, statistics.median(costs), costs[int(len(costs) * 0.99) - 1], rss))


def measure(n: int, per: int, changes: int, selector: bool) -> tuple[float, float, float, float]:
    q: mp.Queue = mp.Queue()
    p = mp.get_context("fork").Process(target=_run, args=(n, per, changes, selector, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--pods-per-service", type=int, default=10)
    ap.add_argument("--changes", type=int, default=300)
    args = ap.parse_args()
    n, per = args.services, args.pods_per_service
    rows = [("", "full read + derive", "one change p50", "one change p99", "peak RSS")]
    for label, selector in ((f"{n} selector Services, {n * per} pods", True),
                            (f"{n} Services, {n * per} explicit endpoints (today)", False)):  # fmt: skip
        full, p50, p99, rss = measure(n, per, args.changes, selector)
        rows.append((label, f"{full:.2f} s", f"{p50 * 1e3:.2f} ms", f"{p99 * 1e3:.2f} ms", f"{rss:.0f} MiB"))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
