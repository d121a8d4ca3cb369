"""Benchmark the prober: N probed pods (TCP or HTTP) on one agent, default period 10 s.

    python bench/probes.py [--sizes 1000,10000] [--kinds tcp,http] [--kill 20] [--no-baseline]   # as root

Everything runs in a network namespace the bench makes (and deletes): the targets are N real
listeners on 10.244.0.2 (an address on that namespace's lo), ports 20000 and up, served by one
child process; the prober is svcdns's ``Prober`` on a file registry of N pod files, in a child
process of its own, so its figures are its own:

- CPU: user+sys of the prober's process over two periods, as a share of one core;
- peak RSS (VmHWM) of that process;
- detection: ``--kill`` listeners are closed at random; the delay until each pod's status says not
  ready, p50 / p99, against the bound failureThreshold x periodSeconds + timeoutSeconds + 1 s;
- baseline, side by side: a bare asyncio loop making the same connections (and GETs) at the same
  rate, with no state machine, registry or metrics: the floor of the I/O itself.

The machine may be shared: its load average is printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ADDRESS = "10.244.0.2"
BASE_PORT = 20000
PERIOD, TIMEOUT, FAILURES = int(os.environ.get("SVCDNS_BENCH_PERIOD", "10")), 1, 3  # Kubernetes' defaults
BOUND = FAILURES * PERIOD + TIMEOUT + 1
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


# ---- child: the targets ------------------------------------------------------------------------------------


def serve(n: int, kind: str) -> None:
    """Listen on N ports; print "ready"; then read lines "close P ..." and close those listeners."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    accepted = [0]

    class Target(asyncio.Protocol):
        def connection_made(self, transport):  # type: ignore[override]
            accepted[0] += 1
            self.transport = transport
            if kind == "tcp":
                transport.close()

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                self.transport.write(HTTP_OK)
                self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = {}
        for i in range(n):
            servers[BASE_PORT + i] = await loop.create_server(Target, ADDRESS, BASE_PORT + i, backlog=64)
        print("ready", flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            if line.startswith(b"count"):
                print(json.dumps({"accepted": accepted[0]}), flush=True)
                continue
            ports = [int(p) for p in line.split()[1:]]
            for p in ports:
                servers.pop(p).close()
            print(json.dumps({"closed": time.monotonic()}), flush=True)

    asyncio.run(main())


# ---- child: the prober, or the bare baseline -----------------------------------------------------------------


def run_prober(registry: str) -> None:
    from svcdns.probe import Prober
    from svcdns.probe.metrics import ProbeMetrics
    from svcdns.registry import open_registry

    prober = Prober(open_registry(registry, []), "", every_node=True, metrics=ProbeMetrics())
    signal.signal(signal.SIGTERM, lambda *_: prober._loop.call_soon_threadsafe(prober._stop.set))  # type: ignore[union-attr]
    print("started", flush=True)
    asyncio.run(prober.run())


def run_bare(n: int, kind: str) -> None:
    """The same connections (and GETs) at the same rate, nothing else."""

    async def one(port: int) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.random() * PERIOD)
        while True:
            started = loop.time()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(TIMEOUT):
                    await loop.sock_connect(sock, (ADDRESS, port))
                    if kind == "http":
                        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        await loop.sock_recv(sock, 4096)
            except (OSError, TimeoutError):
                pass
            finally:
                sock.close()
            await asyncio.sleep(max(0.0, started + PERIOD - loop.time()))

    async def main() -> None:
        await asyncio.gather(*(one(BASE_PORT + i) for i in range(n)))

    print("started", flush=True)
    asyncio.run(main())


# ---- the parent ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int, which: slice = slice(11, 13)) -> float:
    """user+sys (or, with ``which``, one of them) of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[which]) / os.sysconf("SC_CLK_TCK")


def accepted(targets: subprocess.Popen) -> int:
    assert targets.stdin is not None and targets.stdout is not None
    targets.stdin.write("count\n")
    targets.stdin.flush()
    return json.loads(targets.stdout.readline())["accepted"]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_pods(root: Path, n: int, kind: str) -> None:
    folder = root / "pods" / "default"
    folder.mkdir(parents=True)
    for i in range(n):
        action = {"tcpSocket": {"port": BASE_PORT + i}} if kind == "tcp" else {"httpGet": {"port": BASE_PORT + i, "path": "/"}}
        doc = {"name": f"p{i}", "podIPs": [ADDRESS], "readinessProbe": {**action, "periodSeconds": PERIOD}}
        (folder / f"p{i}.json").write_text(json.dumps(doc))
    # their statuses stored ready, as after an agent restart: the prober resumes the verdicts, so the run
    # measures the steady state (from not ready, 10k pods mean 10k verdict changes before the window)
    from svcdns.pod import PodStatus
    from svcdns.registry.files import FileRegistry

    FileRegistry(root).set_pod_statuses({("default", f"p{i}"): PodStatus(True) for i in range(n)})


def not_ready(root: Path) -> set[int]:
    """The pods whose stored status says not ready (the status file, read once)."""
    from svcdns.registry.files.status import StatusFile

    statuses = StatusFile(root)
    statuses.load()
    return {int(name[1:]) for (_, name), s in statuses.statuses.items() if not s.ready}


def child(ns: str, args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, __file__, *args], text=True,
                            stdout=subprocess.PIPE, start_new_session=True, **kw)  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure(ns: str, n: int, kind: str, kill: int, baseline: bool) -> dict:
    from svcdns.registry import open_registry

    row: dict = {"pods": n, "kind": kind}
    targets = child(ns, ["--serve", str(n), "--kind", kind], stdin=subprocess.PIPE)
    assert targets.stdout is not None and targets.stdin is not None
    assert targets.stdout.readline().strip() == "ready"
    root = Path(tempfile.mkdtemp(prefix="svcdns-bench-probes-"))
    prober = None
    try:
        write_pods(root, n, kind)
        prober = child(ns, ["--probe", str(root)])
        assert prober.stdout is not None and prober.stdout.readline().strip() == "started"
        time.sleep(PERIOD + 2)  # listed, and every pod probed once
        if not_ready(root) or len(open_registry(str(root), []).pod_statuses()) != n:
            raise RuntimeError(f"{n} {kind}: a pod failed its probes before any listener was closed")
        victims = random.sample(range(n), kill)
        cpu0, sys0, count0, w0 = cpu_seconds(prober.pid), cpu_seconds(prober.pid, slice(12, 13)), accepted(targets), time.monotonic()
        targets.stdin.write("close " + " ".join(str(BASE_PORT + v) for v in victims) + "\n")
        targets.stdin.flush()
        closed = json.loads(targets.stdout.readline())["closed"]
        seen: dict[int, float] = {}
        window_end = w0 + 2 * PERIOD
        while time.monotonic() < max(window_end, closed + BOUND + 5) and (len(seen) < kill or time.monotonic() < window_end):
            if "cpu" not in row and time.monotonic() >= window_end:
                took = time.monotonic() - w0
                row["cpu"] = (cpu_seconds(prober.pid) - cpu0) / took
                row["sys"] = (cpu_seconds(prober.pid, slice(12, 13)) - sys0) / took
                row["rate"] = (accepted(targets) - count0) / took
            failing = not_ready(root)
            for v in victims:
                if v not in seen and v in failing:
                    seen[v] = time.monotonic() - closed
            time.sleep(0.05)
        if "cpu" not in row:
            raise RuntimeError("the CPU window did not end")
        row["rss"] = peak_rss_mb(prober.pid)
        delays = sorted(seen.values())
        row["detected"] = f"{len(delays)}/{kill}"
        row["p50"] = statistics.median(delays) if delays else float("nan")
        row["p99"] = delays[min(len(delays) - 1, int(len(delays) * 0.99))] if delays else float("nan")
    finally:
        if prober is not None:
            stop(prober)
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    if baseline:
        bare = child(ns, ["--bare", str(n), "--kind", kind])
        try:
            assert bare.stdout is not None and bare.stdout.readline().strip() == "started"
            time.sleep(PERIOD)  # every target reached once
            cpu0, count0, w0 = cpu_seconds(bare.pid), accepted(targets), time.monotonic()
            time.sleep(PERIOD)
            took = time.monotonic() - w0
            row["bare cpu"] = (cpu_seconds(bare.pid) - cpu0) / took
            row["bare rate"] = (accepted(targets) - count0) / took
        finally:
            stop(bare)
    stop(targets)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--kinds", default="tcp,http")
    parser.add_argument("--kill", type=int, default=20, help="listeners closed to measure detection")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="tcp", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.kind)
        return 0
    if args.probe:
        run_prober(args.probe)
        return 0
    if args.bare:
        run_bare(args.bare, args.kind)
        return 0
    if os.geteuid() != 0:
        print("bench/probes.py needs root: it makes a network namespace", file=sys.stderr)
        return 2
    ns = f"svcdns-bench-probes-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rows = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{ADDRESS}/32", "dev", "lo"], check=True)
        for n in (int(s) for s in args.sizes.split(",")):
            for kind in args.kinds.split(","):
                rows.append(measure(ns, n, kind, min(args.kill, n), not args.no_baseline))
                print(f"measured {n} {kind}: {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    load = os.getloadavg()
    print(f"\nprober, period {PERIOD} s, timeout {TIMEOUT} s, failureThreshold {FAILURES}: detection bound {BOUND} s "
          f"(load average {load[0]:.1f} on {os.cpu_count()} CPUs)\n")  # fmt: skip
    print("| pods | kind | needed probes/s | prober: CPU of one core (kernel), probes/s | bare asyncio: CPU, probes/s "
          "| peak RSS | detected | p50 | p99 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        bare = f"{r['bare cpu'] * 100:.1f}%, {r['bare rate']:.0f}" if "bare cpu" in r else "-"
        print(f"| {r['pods']:,} | {r['kind']} | {r['pods'] / PERIOD:.0f} | {r['cpu'] * 100:.1f}% ({r['sys'] * 100:.1f}%), "
              f"{r['rate']:.0f} | {bare} | {r['rss']:.0f} MiB | {r['detected']} | {r['p50']:.1f} s | {r['p99']:.1f} s (bound {BOUND} s) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
