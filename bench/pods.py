"""Benchmark endpoints derived from pods: 10k Services each selecting 10 pods (100k pods).

    python bench/pods.py [--services 10000] [--pods-per-service 10] [--changes 300] [--no-kernel] [--plain-gc]

Two rows measured side by side in one run, each in a fresh child process (so its peak RSS is its
own): 10k Services with selectors and 100k pods, and the baseline, 10k selector-less Services with
100k explicit endpoints (today's way to get the same table). The registry is the etcd registry's
state machine (``EtcdState``: what an agent runs per watch event, with no etcd I/O); the kernel is
nftables in a network namespace this script creates and deletes (svcdns.testing.lab; needs root,
else ``--no-kernel`` is implied). Per row:

- the full read: every Service and pod value decoded, every Service's endpoints derived (the values
  are made before the clock starts), then the first full dataplane sync;
- one change, a pod's readiness flipped (baseline: one explicit endpoint's ``ready`` flipped in its
  Service's value), p50 / p99 over --changes, taken the agent's whole way: the key applied, the
  expiry and rebuild of the table, the pending-VIP check the watch makes, the Snapshot, the changed
  keys, the nftables delta planned, encoded and committed over netlink (the DNS zone's update, which
  the agent makes after the commit, is not in it); and the same change up to the Snapshot only (the
  registry's part);
- the peak RSS of that child, which held the registry state and the dataplane.

The cyclic collector is handled as the agent does (svcdns.agent.Agent.sync): paused for the full
read and the first sync, then a collection and ``gc.freeze()``, so that its older-generation passes
no longer walk the 100k pods' objects (they were the tail of a change: in-process, p99 5.3 -> 1.7
ms). ``--plain-gc`` leaves Python's default instead, to see what that saves.

Each change turns a pod (endpoint) not ready and the next turns it ready again, so every change
changes the kernel; the last one is checked in the kernel (``nft get element``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, HERE)

from svcdns.registry.etcd.state import EtcdState, Keys  # noqa: E402

CHILD = "--child"


def _ip(i: int, j: int) -> str:
    n = i * 16 + j
    return f"10.{128 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def _vip(i: int) -> str:
    return f"10.96.{i >> 8}.{i & 255}"


def _ns(i: int) -> str:
    return f"ns-{i % 50}"


def _service(i: int, selector: bool, pods: int, not_ready: int = -1) -> bytes:
    doc: dict = {"name": f"svc-{i}", "namespace": _ns(i), "clusterIP": _vip(i), "clusterIPs": [_vip(i)],
                 "ports": [{"name": "http", "port": 80, "targetPort": "http" if selector else 8080}]}  # fmt: skip
    if selector:
        doc["selector"] = {"app": f"svc-{i}"}
    else:
        doc["endpoints"] = [{"address": _ip(i, j), "ready": j != not_ready} for j in range(pods)]
    return json.dumps(doc).encode()


def _pod(i: int, j: int, ready: bool = True) -> bytes:
    return json.dumps({"name": f"svc-{i}-{j}", "namespace": _ns(i), "labels": {"app": f"svc-{i}", "tier": "x"},
                       "podIPs": [_ip(i, j)], "ports": [{"containerPort": 8080, "name": "http"}],
                       "ready": ready}).encode()  # fmt: skip


def _values(n: int, per: int, selector: bool) -> list[tuple[bytes, bytes]]:
    keys = Keys("/b")
    out = []
    for i in range(n):
        out.append((keys.service((_ns(i), f"svc-{i}")), _service(i, selector, per)))
        out.append((keys.vip(ipaddress.ip_address(_vip(i))), f"{_ns(i)}/svc-{i}".encode()))
        if selector:
            out.extend((keys.pod((_ns(i), f"svc-{i}-{j}")), _pod(i, j)) for j in range(per))
    return out


def _change(keys: Keys, c: int, n: int, per: int, selector: bool) -> tuple[int, int, bool, bytes, bytes]:
    """The c-th change: pod (i, j) turns not ready (c even), then ready again (c odd)."""
    i, j = ((c // 2) * 7919) % n, (c // 2) % per
    ready = c % 2 == 1
    if selector:
        return i, j, ready, keys.pod((_ns(i), f"svc-{i}-{j}")), _pod(i, j, ready)
    return i, j, ready, keys.service((_ns(i), f"svc-{i}")), _service(i, False, per, -1 if ready else j)


def child(n: int, per: int, changes: int, selector: bool, kernel: bool, plain_gc: bool) -> dict:
    import gc

    from svcdns.table import changed_keys

    keys = Keys("/b")
    state = EtcdState(keys)
    values = _values(n, per, selector)
    plan = [_change(keys, c, n, per, selector) for c in range(changes)]
    if not plain_gc:
        gc.disable()  # as cmd_agent does until the first full sync
    start = time.perf_counter()
    state.begin_full_read()
    for key, value in values:
        state.apply_put(key, value, 1)
    state.end_full_read()
    state.rebuild(1)
    snap = state.current()
    full = time.perf_counter() - start
    del values
    assert snap.table.endpoint_count() == n * per, snap.table.endpoint_count()
    dp, sync = None, 0.0
    if kernel:
        from svcdns.dataplane import open_dataplane

        dp = open_dataplane(families=("IPv4",))
        sync = dp.sync(snap.table).duration
    if not plain_gc:  # what the agent's first full sync does then
        gc.collect()
        gc.freeze()
        gc.enable()
    applied = snap.table
    registry, whole = [], []
    for c, (i, j, ready, key, value) in enumerate(plan):
        t0 = time.perf_counter()
        state.apply_put(key, value, 2 + c)
        state.expire(time.time())  # what the watch does per batch of events, then the agent
        state.rebuild()
        state.pending(state.rebuilt)
        snap = state.current()
        desired = snap.table
        t1 = time.perf_counter()
        if changed_keys(applied, desired) and dp is not None:
            dp.sync(desired)
        applied = desired
        whole.append(time.perf_counter() - t0)
        registry.append(t1 - t0)
        assert desired.get(_ns(i), f"svc-{i}").endpoints[j].ready == ready
    if dp is not None and plan:  # the last change, as the kernel holds it: the port's count of usable endpoints
        i, j, ready, *_ = plan[-1]
        count = per if ready else per - 1
        out = subprocess.run(["nft", "get", "element", "ip", "svcdns", "counts", f"{{ {_vip(i)} . tcp . 80 }}"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        held = int(out.split(":")[-1].split("}")[0].strip(), 0)
        # the mark is the kernel's 4 bytes in host order, which nft prints as a big-endian number
        assert held in (count, int.from_bytes(count.to_bytes(4, sys.byteorder), "big")), f"the kernel counts {held} endpoints for {_vip(i)}:80, expected {count}:\n{out}"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"full": full, "sync": sync, "registry": _pcts(registry), "whole": _pcts(whole) if dp else None, "rss": rss}


def _pcts(samples: list[float]) -> tuple[float, float]:
    if not samples:
        return (0.0, 0.0)
    samples = sorted(samples)
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def measure(n: int, per: int, changes: int, selector: bool, kernel: bool, plain_gc: bool) -> dict:
    argv = [sys.executable, __file__, CHILD, "--services", str(n), "--pods-per-service", str(per),
            "--changes", str(changes), *(["--selector"] if selector else []), *([] if kernel else ["--no-kernel"]),
            *(["--plain-gc"] if plain_gc else [])]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=HERE)
    if not kernel:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
        return json.loads(out.strip().splitlines()[-1])
    from svcdns.testing.lab import Lab

    with Lab(pods=0, tag="bench") as lab:
        return json.loads(lab.node.run(argv, env=env).stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--pods-per-service", type=int, default=10)
    ap.add_argument("--changes", type=int, default=300)
    ap.add_argument("--no-kernel", action="store_true", help="the registry's part only (no root needed)")
    ap.add_argument("--plain-gc", action="store_true", help="Python's default collector, not the agent's handling (see above)")
    ap.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--selector", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    n, per = args.services, args.pods_per_service
    kernel = not args.no_kernel
    if args.child:
        print(json.dumps(child(n, per, args.changes, args.selector, kernel, args.plain_gc)))
        return
    if kernel and os.geteuid() != 0:
        print("bench/pods.py: not root, so no network namespace: the registry's part only (--no-kernel)")
        kernel = False
    rows = [("", "full read + derive", "first sync", "change -> kernel p50", "p99", "change -> snapshot p50", "p99",
             "peak RSS")]  # fmt: skip
    for label, selector in ((f"{n:,} selector Services, {n * per:,} pods", True),
                            (f"{n:,} Services, {n * per:,} explicit endpoints (baseline)", False)):  # fmt: skip
        r = measure(n, per, args.changes, selector, kernel, args.plain_gc)
        whole = r["whole"] or (0.0, 0.0)
        rows.append((label, f"{r['full']:.2f} s", f"{r['sync']:.2f} s" if kernel else "-",
                     f"{whole[0] * 1e3:.2f} ms" if kernel else "-", f"{whole[1] * 1e3:.2f} ms" if kernel else "-",
                     f"{r['registry'][0] * 1e3:.2f} ms", f"{r['registry'][1] * 1e3:.2f} ms", f"{r['rss']:.0f} MiB"))  # fmt: skip
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    print(f"one change: a pod's (an endpoint's) readiness flipped, {args.changes} changes"
          f"{'; nftables in a lab namespace' if kernel else ''}{'; plain gc' if args.plain_gc else ''}")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
