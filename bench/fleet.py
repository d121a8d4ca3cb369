"""Benchmark a fleet: N agents ("hosts") on one 3-member etcd cluster.

    python bench/fleet.py [--sizes 10,50,100] [--changes 20] [--kills 3] [--ttl 3]   # as root

Every host is a network namespace of its own (svcdns.testing.lab) running one agent with one DNS
worker; the hosts reach etcd over veths on a bridge in a "hub" namespace, where the 3 etcd members
(Debian's etcd-server, throwaway data) listen on 10.240.0.1. A poller process in the hub reaches
into every host (sockets opened in the host's namespace with setns): it asks the host's agent's DNS
on 127.0.0.1:53 and connects to the VIP from inside the host (the kernel's DNAT, to a listener the
poller holds there on the pod network 10.250.0.0/16, local on every host). For each size:

- a new Service (one endpoint): write -> every host's DNS answers and its VIP connects;
- a pod's readiness flipped (its record's ``ready``), both ways: write -> every host's VIP
  connects (or refuses) and its headless name answers the pod (or not);
- a host killed (kill -9 of its agent and DNS worker): -> every other host's headless name drops
  its pod and the VIP selecting it refuses, against the lease TTL + 1 s;
- idle: etcd's CPU (user+sys of the 3 members), keep-alives and watch events per second and its
  watchers (etcd's /metrics), and each agent's RSS (with its DNS worker) and CPU;
- baseline, side by side: as many bare aetcd watchers as agents, in one process, watching the same
  prefix: when the last of them saw each write (etcd's own fan-out floor).

Sizes that would not fit in memory (per-agent RSS measured at the first size) are refused, saying so.
The bench deletes every namespace and kills every process it started, by PID, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svcdns.testing.fleet import Costs, estimate, everywhere, percentile, plan_sizes  # noqa: E402

ROOT = str(Path(__file__).resolve().parent.parent)
HUB = "10.240.0.1"
NS = "bench"
POD_NET = "10.250.0.0/16"
CHANGE_POD, FLIP_POD, VICTIM_POD = "10.250.0.1", "10.250.1.{}", "10.250.2.{}"
NEW_VIP, FLIP_VIP, VICTIM_VIP = "10.100.{}.{}", "10.101.{}.{}", "10.102.{}.{}"


def poll_interval(hosts: int) -> float:
    """Seconds between two checks of one host: 2 ms, longer past 20 hosts, so that the poller's
    own load (on a 2-CPU machine, beside the agents it measures) stays bounded."""
    return max(0.002, hosts * 0.0001)


def vip(pattern: str, k: int) -> str:
    return pattern.format(k // 250, k % 250 + 1)


def host_addr(i: int) -> str:
    return f"10.240.{1 + i // 250}.{i % 250 + 1}"


# ---- the poller (a child process, in the hub namespace) -----------------------------------------------------

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


class Poller:
    """Sockets in each host's namespace, opened from the hub: the calling thread enters the host's
    namespace only for the ``socket()`` call (a socket keeps the namespace it was made in), so no
    other code ever runs outside the hub."""

    def __init__(self, url: str, hosts: list[str]) -> None:
        self.hub = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self.hosts = [os.open(f"/run/netns/{h}", os.O_RDONLY) for h in hosts]
        self.url = url
        self.dns = [self.socket(i, socket.SOCK_DGRAM) for i in range(len(hosts))]
        for s in self.dns:
            s.connect(("127.0.0.1", 53))
            s.setblocking(False)
        self.listeners = []
        for i in range(len(hosts)):
            s = self.socket(i, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", 8080))
            s.listen(4096)
            s.setblocking(False)
            self.listeners.append(s)
        self.alive = set(range(len(hosts)))
        self.queries: dict[str, bytes] = {}  # name -> its query, but for the ID
        self.gaps: list[float] = []  # the poller's resolution: last failed check -> first success

    def socket(self, i: int, kind: int) -> socket.socket:
        _setns(self.hosts[i])
        try:
            return socket.socket(socket.AF_INET, kind)
        finally:
            _setns(self.hub)

    async def answer(self, i: int, name: str, ip: str) -> bool | None:
        """Whether host ``i``'s DNS answers ``name`` with ``ip`` among its records; None on no answer.
        The query is packed once per name and the reply only scanned (no parse): the poller must
        cost less than what it measures."""
        loop, s = asyncio.get_running_loop(), self.dns[i]
        if name not in self.queries:
            from dnslib import DNSRecord

            self.queries[name] = DNSRecord.question(name).pack()[2:]
        qid = random.getrandbits(16).to_bytes(2, "big")
        query = qid + self.queries[name]
        await loop.sock_sendall(s, query)
        try:
            async with asyncio.timeout(0.2):
                while True:
                    reply = await loop.sock_recv(s, 4096)
                    if reply[:2] == qid:
                        answers = int.from_bytes(reply[6:8], "big")
                        return answers > 0 and socket.inet_aton(ip) in reply[len(query) :]
        except (TimeoutError, OSError):
            return None

    async def connect(self, i: int, addr: str, port: int = 80) -> str:
        """ "ok", "refused" or "timeout": a TCP connection from inside host ``i``."""
        loop, s = asyncio.get_running_loop(), self.socket(i, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            async with asyncio.timeout(0.3):
                await loop.sock_connect(s, (addr, port))
            return "ok"
        except ConnectionRefusedError:
            return "refused"
        except (TimeoutError, OSError):
            return "timeout"
        finally:
            s.close()

    async def http(self, i: int, path: str) -> str:
        loop, s = asyncio.get_running_loop(), self.socket(i, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            async with asyncio.timeout(2):
                await loop.sock_connect(s, ("127.0.0.1", 10256))
                await loop.sock_sendall(s, f"GET {path} HTTP/1.0\r\n\r\n".encode())
                return (await loop.sock_recv(s, 65536)).decode(errors="replace")
        except (TimeoutError, OSError):
            return ""
        finally:
            s.close()

    async def until(self, check, timeout: float, every: float) -> float | None:
        """The monotonic time ``check()`` first held, None if not within ``timeout``."""
        deadline = last = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await check():
                now = time.monotonic()
                self.gaps.append(now - last)  # the change took effect within this last interval
                return now
            last = time.monotonic()
            await asyncio.sleep(every)
        return None

    async def everywhere(self, checks, t0: float, timeout: float, every: float = 0) -> list[float | None]:
        """Delays from ``t0`` until each check held on each host; ``checks(i)`` gives its checks."""
        every = every or poll_interval(len(self.hosts))
        tasks = [self.until(c, timeout, every) for i in sorted(self.alive) for c in checks(i)]
        return [None if t is None else t - t0 for t in await asyncio.gather(*tasks)]

    def accept(self) -> None:
        for s in self.listeners:
            with contextlib.suppress(BlockingIOError):
                while True:
                    s.accept()[0].close()


def serve_watchers(url: str, count: int, out: str) -> None:
    """The baseline: ``count`` bare aetcd watchers of the registry's prefix, each on a gRPC channel
    of its own, in this one process; every event's key and arrival time appended to ``out``."""
    import aetcd

    from svcdns.registry.etcd.keys import Keys
    from svcdns.registry.etcd.url import parse_url

    options = parse_url(url)
    members, prefix = options.endpoints, Keys(options.prefix).root
    log = open(out, "a", buffering=1)

    async def one(k: int) -> None:
        host, port = members[k % len(members)]
        client = aetcd.Client(host, port)
        async for event in await client.watch_prefix(prefix):
            log.write(f"{event.kv.key.decode()} {time.monotonic()}\n")

    async def main() -> None:
        tasks = [asyncio.create_task(one(k)) for k in range(count)]
        await asyncio.sleep(3)  # every watch created
        print("ready", flush=True)
        await asyncio.gather(*tasks)

    asyncio.run(main())


def serve_writer(url: str) -> None:
    """The registry writes, in a process of their own (in the poller's they waited for its polling
    loop): one JSON command a line, answered with the write's start (monotonic) and duration."""
    from dataclasses import replace

    from svcdns.registry import open_registry
    from svcdns.registry.documents import from_document, pod_from_document

    reg = open_registry(url)
    ports = [{"port": 80, "targetPort": 8080}]

    def service(name: str, ip: str, **spec) -> None:
        reg.create(from_document({"name": name, "namespace": NS, "clusterIP": ip, "ports": ports, **spec}))

    def pod(name: str, ip: str, **spec) -> None:
        reg.put_pod(pod_from_document({"name": name, "namespace": NS, "labels": {"app": name}, "podIPs": [ip], **spec}))

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        t0 = time.monotonic()
        if cmd["op"] == "setup":  # the Services and pods the measurements change, before the agents start
            for k in range(cmd["flips"]):
                service(f"f{k}", vip(FLIP_VIP, k), selector={"app": f"flip{k}"})
                service(f"f{k}-h", "None", selector={"app": f"flip{k}"})
                pod(f"flip{k}", FLIP_POD.format(k + 1), ready=False)
            for k, host in enumerate(cmd["victims"]):
                service(f"v{k}", vip(VICTIM_VIP, k), selector={"app": f"v{k}"})
                service(f"v{k}-h", "None", selector={"app": f"v{k}"})
                pod(f"v{k}", VICTIM_POD.format(k + 1), nodeName=f"h{host}", ready=True)
            key = ""
        elif cmd["op"] == "service":  # a new Service, one endpoint
            k = cmd["k"]
            service(f"new{k}", vip(NEW_VIP, k), endpoints=[CHANGE_POD])
            key = reg.keys.service((NS, f"new{k}")).decode()
        else:  # "flip": pod flip{k}'s record, ready -> cmd["ready"]
            k = cmd["k"]
            reg.update_pod(NS, f"flip{k}", lambda p, r=cmd["ready"]: replace(p, ready=r))
            key = reg.keys.pod((NS, f"flip{k}")).decode()
        print(json.dumps({"t0": t0, "wrote": time.monotonic() - t0, "key": key}), flush=True)


def checks(p: Poller, cmd: dict):
    """What "host i has the change" means for ``cmd``: (in its kernel, in its DNS), as coroutines."""
    kind, k = cmd["kind"], cmd["k"]
    if kind == "service":  # the name answers the VIP, the VIP connects
        ip, name = vip(NEW_VIP, k), f"new{k}.{NS}.svc.cluster.local"
        return (lambda i: p.connect(i, ip), "ok"), (lambda i: p.answer(i, name, ip), True)
    if kind == "flip":  # the VIP connects (refuses), the headless name answers the pod (does not)
        ready = cmd["ready"]
        ip, pod_ip, name = vip(FLIP_VIP, k), FLIP_POD.format(k + 1), f"f{k}-h.{NS}.svc.cluster.local"
        return (lambda i: p.connect(i, ip), "ok" if ready else "refused"), (lambda i: p.answer(i, name, pod_ip), ready)
    # "kill": the dead host's pod leaves the VIP (it refuses: no endpoint left) and the headless answer
    ip, pod_ip, name = vip(VICTIM_VIP, k), VICTIM_POD.format(k + 1), f"v{k}-h.{NS}.svc.cluster.local"
    return (lambda i: p.connect(i, ip), "refused"), (lambda i: p.answer(i, name, pod_ip), False)


async def watch_host(p: Poller, i: int, pair, timeout: float, every: float) -> tuple[float | None, float | None]:
    """When host ``i`` first had the change in its kernel, then in its DNS (monotonic; None: never)."""
    (kernel, want_k), (dns, want_d) = pair

    async def k_ok() -> bool:
        return await kernel(i) == want_k

    async def d_ok() -> bool:
        return await dns(i) == want_d

    return await p.until(k_ok, timeout, every), await p.until(d_ok, timeout, every)


async def serve_poller(url: str, hosts: list[str]) -> None:
    p = Poller(url, hosts)
    loop = asyncio.get_running_loop()
    for s in p.listeners:
        loop.add_reader(s.fileno(), p.accept)

    def reply(obj) -> None:
        gaps = [g for g in p.gaps if g >= 0]
        p.gaps.clear()
        print(json.dumps({**obj, "gap": percentile(gaps, 50) if gaps else None}), flush=True)

    reply({"ready": True})
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        if cmd["op"] == "ready":  # every agent ready, and every victim's pod in every host's answers
            t0 = time.monotonic()

            async def readyz(i: int) -> bool:
                return "ok" in await p.http(i, "/readyz")

            delays = await p.everywhere(lambda i: [lambda i=i: readyz(i)], t0, cmd["timeout"], every=0.5)
            for k in range(cmd["victims"]):
                name, ip = f"v{k}-h.{NS}.svc.cluster.local", VICTIM_POD.format(k + 1)

                async def has(i: int, name=name, ip=ip) -> bool:
                    return bool(await p.answer(i, name, ip))

                left = max(1.0, t0 + cmd["timeout"] - time.monotonic())  # one deadline for the whole wait
                delays += await p.everywhere(lambda i: [lambda i=i: has(i)], t0, left, every=0.1)
            reply({"ok": all(d is not None for d in delays), "took": max((d or 0) for d in delays)})
            continue
        # "arm": poll every live host until it has the change about to be made; answer "armed" at
        # once, then the times (monotonic) each host had it in its kernel and in its DNS. The kernel
        # first, then DNS: one check in flight per host halves the poller's load (DNS's time is then
        # never earlier than the kernel's; both come from the same sync).
        if cmd["kind"] == "kill":
            p.alive.discard(cmd["host"])
        pair, every = checks(p, cmd), cmd.get("every") or poll_interval(len(p.hosts))
        waits = asyncio.ensure_future(
            asyncio.gather(*(watch_host(p, i, pair, cmd["timeout"], every) for i in sorted(p.alive)))
        )
        reply({"armed": time.monotonic()})
        got = await waits
        reply({"kernel": [k for k, _ in got], "dns": [d for _, d in got]})


# ---- the parent: the fleet's namespaces, etcd and agents ------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user+sys of a process so far, in seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_children(pid: int) -> list[int]:
    """The agent and its DNS worker(s)."""
    try:
        kids = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        kids = []
    return [pid, *kids]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


METRICS = {
    "keepalives": r'^grpc_server_started_total\{grpc_method="LeaseKeepAlive"[^}]*\} (\S+)',
    "keepalive_msgs": r'^grpc_server_msg_received_total\{grpc_method="LeaseKeepAlive"[^}]*\} (\S+)',
    "watch_msgs": r'^grpc_server_msg_sent_total\{grpc_method="Watch"[^}]*\} (\S+)',
    "watchers": r"^etcd_debugging_mvcc_watcher_total (\S+)",
    "watch_streams": r"^etcd_debugging_mvcc_watch_stream_total (\S+)",
}


class Fleet:
    """The hub (etcd's namespace, a bridge), ``n`` host namespaces with an agent each, the poller."""

    def __init__(self, n: int, ttl: int, tmp: Path, stack: contextlib.ExitStack) -> None:
        from svcdns.dataplane.guard import GUARD_ENV, host_netns_inode
        from svcdns.testing.etcd import EtcdServer
        from svcdns.testing.lab import Lab

        self.n, self.ttl, self.tmp = n, ttl, tmp
        self.hub = stack.enter_context(Lab(pods=0, tag="fleethub"))
        self.hub.node.run("ip link add fbr0 type bridge stp_state 0 forward_delay 0")
        self.hub.node.run(f"ip addr add {HUB}/16 dev fbr0")
        self.hub.node.run("ip link set fbr0 up")
        self.hosts = []
        for i in range(n):
            lab = stack.enter_context(Lab(pods=0, tag=f"fleet{i}"))
            self.hub.node.run(
                ["ip", "link", "add", f"fh{i}", "type", "veth", "peer", "name", "up0", "netns", lab.node.name]
            )
            self.hub.node.run(["ip", "link", "set", f"fh{i}", "master", "fbr0", "up"])
            lab.node.run(["ip", "addr", "add", f"{host_addr(i)}/16", "dev", "up0"])
            lab.node.run(["ip", "link", "set", "up0", "up"])
            lab.node.run(["ip", "route", "add", "local", POD_NET, "dev", "lo"])  # every pod is "on" every host
            self.hosts.append(lab)
        # etcd's own default timing (the tests' 50/500 ms loses its leader on a loaded 2-CPU machine)
        self.etcd = EtcdServer(tmp / "etcd", members=3, host=HUB, netns=self.hub.node,
                               args=("--heartbeat-interval", "100", "--election-timeout", "1000"))  # fmt: skip
        self.etcd.data_root.mkdir()
        stack.callback(self.etcd.stop)
        self.etcd.start()
        self.url = self.etcd.url.rsplit("/", 1)[0] + "/fleet"
        self.env = dict(os.environ, PYTHONPATH=ROOT, **{GUARD_ENV: str(host_netns_inode())})
        self.agents: dict[int, subprocess.Popen] = {}
        self.poller = self.hub.spawn(self.hub.node, [sys.executable, __file__, "--poller", self.url,
                                                     *(h.node.name for h in self.hosts)],
                                     env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(tmp / "poller.log", "wb"), text=True)  # fmt: skip
        self.writer = self.hub.spawn(self.hub.node, [sys.executable, __file__, "--writer", self.url],
                                     env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(tmp / "writer.log", "wb"), text=True)  # fmt: skip
        self.reply(self.poller)  # {"ready": true}
        self.reply(self.writer)

    def ask(self, proc: subprocess.Popen | None = None, **cmd) -> dict:
        proc = proc or self.poller
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(cmd) + "\n")
        proc.stdin.flush()
        return self.reply(proc)

    def reply(self, proc: subprocess.Popen | None = None) -> dict:
        proc = proc or self.poller
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            what = "poller" if proc is self.poller else "writer"
            raise RuntimeError(f"the {what} died: {(self.tmp / f'{what}.log').read_text()[-2000:]}")
        return json.loads(line)

    def agents_cpu(self) -> float:
        return sum(cpu_seconds(p) for proc in self.agents.values() for p in with_children(proc.pid))

    def leases_lost(self) -> int:
        """Leases the live agents found gone (expired while they lived: refreshed too late)."""
        return sum(
            (self.tmp / f"agent{i}.log").read_text(errors="replace").count("is gone (expired") for i in self.agents
        )

    def start_watchers(self, count: int) -> None:
        self.watched = self.tmp / "watchers.log"
        proc = self.hub.spawn(self.hub.node, [sys.executable, __file__, "--watchers", self.url, str(count), str(self.watched)],
                              env=self.env, stdout=subprocess.PIPE, stderr=open(self.tmp / "watchers.err", "wb"))  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the bare watchers did not start: {(self.tmp / 'watchers.err').read_text()[-2000:]}")

    def baseline(self, key: str, t0: float, count: int) -> float | None:
        """When the last of ``count`` bare watchers saw ``key`` change after ``t0``."""
        deadline = time.monotonic() + 5
        while True:
            times = [float(t) for k, t in (line.split() for line in self.watched.read_text().splitlines()) if k == key]
            times = [t for t in times if t >= t0]
            if len(times) >= count:
                return max(times) - t0
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def start_agents(self) -> None:
        for i, lab in enumerate(self.hosts):
            log = open(self.tmp / f"agent{i}.log", "wb")
            self.agents[i] = lab.spawn(lab.node, [
                sys.executable, "-m", "svcdns", "agent", "--registry", self.url, "--node-name", f"h{i}",
                "--node-lease-ttl", str(self.ttl), "--dns-listen", "127.0.0.1:53", "--dns-workers", "1",
            ], env=self.env, stdout=log, stderr=log)  # fmt: skip
            log.close()

    def kill(self, i: int) -> float:
        proc = self.agents.pop(i)
        os.killpg(proc.pid, signal.SIGKILL)  # the agent and its DNS worker: a dead host
        at = time.monotonic()
        proc.wait()
        return at

    def etcd_cpu(self, window: float) -> float:
        pids = [p.pid for p in self.etcd._procs.values()]
        e0 = sum(cpu_seconds(p) for p in pids)
        time.sleep(window)
        return (sum(cpu_seconds(p) for p in pids) - e0) / window

    def idle(self, window: float) -> dict:
        """etcd's and the agents' cost over ``window`` seconds with nothing changing."""
        etcd_pids = [p.pid for p in self.etcd._procs.values()]
        agent_pids = {i: with_children(p.pid) for i, p in self.agents.items()}
        m0, e0 = self.metrics(), sum(cpu_seconds(p) for p in etcd_pids)
        a0 = {i: sum(cpu_seconds(p) for p in pids) for i, pids in agent_pids.items()}
        time.sleep(window)
        m1, e1 = self.metrics(), sum(cpu_seconds(p) for p in etcd_pids)
        cpu = [(sum(cpu_seconds(p) for p in pids) - a0[i]) / window for i, pids in agent_pids.items()]
        rss = [sum(rss_mb(p) for p in pids) for pids in agent_pids.values()]
        etcd_rss = sum(rss_mb(p) for p in etcd_pids)
        rate = {k: (m1[k] - m0[k]) / window for k in ("keepalives", "keepalive_msgs", "watch_msgs")}
        return {"etcd_cpu": (e1 - e0) / window, "etcd_rss": etcd_rss, **rate, "watchers": m1["watchers"],
                "watch_streams": m1["watch_streams"], "agent_cpu": sum(cpu) / len(cpu), "agent_cpu_max": max(cpu),
                "agent_rss": sum(rss) / len(rss), "agent_rss_max": max(rss)}  # fmt: skip

    def metrics(self) -> dict[str, float]:
        out = dict.fromkeys(METRICS, 0.0)
        for port in self.etcd.client_ports:
            text = self.hub.node.run(
                ["curl", "-s", "--max-time", "5", f"http://{HUB}:{port}/metrics"], check=False
            ).stdout
            for key, pattern in METRICS.items():
                out[key] += sum(float(v) for v in re.findall(pattern, text, re.M))
        return out


def measure(n: int, args: argparse.Namespace) -> dict:
    kills = min(args.kills, n - 1)
    victims = list(range(n - kills, n))
    with tempfile.TemporaryDirectory(prefix="svcdns-bench-fleet-") as tmp, contextlib.ExitStack() as stack:
        t = time.monotonic()
        fleet = Fleet(n, args.ttl, Path(tmp), stack)
        built = time.monotonic() - t
        fleet.ask(fleet.writer, op="setup", flips=args.changes, victims=victims)
        floor = fleet.etcd_cpu(args.idle)  # etcd with no agent: its members' heartbeats
        t = time.monotonic()
        fleet.start_agents()
        r = fleet.ask(op="ready", victims=kills, timeout=max(120, 3 * n))
        if not r["ok"]:
            dead = [i for i, a in fleet.agents.items() if a.poll() is not None]
            raise RuntimeError(f"{n} agents: not all ready within {max(120, 3 * n)} s; exited: {dead or 'none'}")
        row: dict = {"agents": n, "built": built, "start": time.monotonic() - t, "etcd_floor": floor}
        time.sleep(2 * args.ttl)  # the start's writes settle; every lease refreshed at least once
        row.update(fleet.idle(args.idle))
        if args.baseline:
            fleet.start_watchers(n)
        timeout = 30
        etcd_pids = [p.pid for p in fleet.etcd._procs.values()]
        m0, e0, a0, gaps, wrote = fleet.metrics(), sum(cpu_seconds(p) for p in etcd_pids), fleet.agents_cpu(), [], []
        began = time.monotonic()

        def since(times: list, t0: float) -> float | None:
            return everywhere([None if t is None else t - t0 for t in times])

        for kind in ("service", "flip_up", "flip_down"):
            dns, kernel, base = [], [], []
            for k in range(args.changes):
                change = {"kind": kind.split("_")[0], "k": k, "ready": kind == "flip_up"}
                fleet.ask(op="arm", timeout=timeout, **change)
                w = fleet.ask(fleet.writer, op=change["kind"], **change)
                r = fleet.reply()
                dns.append(since(r["dns"], w["t0"]))
                kernel.append(since(r["kernel"], w["t0"]))
                base.append(fleet.baseline(w["key"], w["t0"], n) if args.baseline else None)
                gaps.append(r["gap"])
                wrote.append(w["wrote"])
                time.sleep(random.uniform(0.1, 0.3))
            row[kind] = {"dns": dns, "kernel": kernel, "baseline": base}
        changes = 3 * args.changes
        m1, took = fleet.metrics(), time.monotonic() - began
        row["per_change"] = {"watch_msgs": (m1["watch_msgs"] - m0["watch_msgs"]) / changes,
                             # over the whole phase (idle between changes included): CPU seconds per change
                             "etcd_cpu_ms": (sum(cpu_seconds(p) for p in etcd_pids) - e0) / changes * 1000,
                             "etcd_above_idle_ms": (sum(cpu_seconds(p) for p in etcd_pids) - e0 - row["etcd_cpu"] * took)
                             / changes * 1000,
                             "agents_cpu_ms": (fleet.agents_cpu() - a0 - row["agent_cpu"] * n * took) / changes * 1000,
                             "gap": percentile([g for g in gaps if g is not None], 50), "wrote": percentile(wrote, 50)}  # fmt: skip
        row["leases_lost"] = fleet.leases_lost()  # before the kills: their leases are meant to go
        deaths = []
        for k, host in enumerate(victims):
            assert "armed" in fleet.ask(op="arm", kind="kill", k=k, host=host, timeout=args.ttl + 15, every=0.02)
            at = fleet.kill(host)
            r = fleet.reply()
            deaths.append({"dns": since(r["dns"], at), "kernel": since(r["kernel"], at)})
        row["kill"] = deaths
        row["load"] = os.getloadavg()[0]
        return row


def ms(values: list, q: float) -> str:
    got = [v for v in values if v is not None]
    missed = len(values) - len(got)
    return (f"{percentile(got, q) * 1000:.0f} ms" if got else "-") + (f" ({missed} missed)" if missed else "")


def report(rows: list[dict], args: argparse.Namespace, refused: list[str]) -> None:
    load = os.getloadavg()
    polls = ", ".join(f"{poll_interval(r['agents']) * 1000:.0f} ms at {r['agents']}" for r in rows)
    print(f"\nfleet on one 3-member etcd; node_lease_ttl {args.ttl} s (bound for a dead host: {args.ttl + 1} s); "
          f"{args.changes} changes of each kind, each host checked every "
          f"{polls}; load average {load[0]:.1f} on {os.cpu_count()} CPUs\n")  # fmt: skip
    for line in refused:
        print(line)
    print("| agents | start to ready | change | DNS everywhere p50 / p99 | kernel everywhere p50 / p99 "
          "| bare aetcd watchers, as many, in one process: p50 / p99 |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    names = {"service": "new Service", "flip_up": "pod turns ready", "flip_down": "pod turns not ready"}
    for r in rows:
        for kind, label in names.items():
            c = r[kind]
            base = f"{ms(c['baseline'], 50)} / {ms(c['baseline'], 99)}" if args.baseline else "-"
            print(f"| {r['agents']} | {r['start']:.0f} s | {label} | {ms(c['dns'], 50)} / {ms(c['dns'], 99)} | "
                  f"{ms(c['kernel'], 50)} / {ms(c['kernel'], 99)} | {base} |")  # fmt: skip
    print(
        "\n(from the write's start; the write itself, a VIP-claiming transaction, took "
        + ", ".join(f"{r['per_change']['wrote'] * 1000:.0f} ms at {r['agents']}" for r in rows)
        + " p50; the poller's resolution, last miss -> first hit on a host, "
        + ", ".join(f"{r['per_change']['gap'] * 1000:.0f} ms" for r in rows)
        + " p50)"
    )
    print("\n| agents | host killed -> its pod gone from every other host: DNS p50, max | kernel p50, max "
          "| within TTL + 1 s | live hosts' leases lost before |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in rows:
        d = [x["dns"] for x in r["kill"]]
        k = [x["kernel"] for x in r["kill"]]
        worst = max((math.inf if x is None else x for x in d + k), default=math.nan)
        print(f"| {r['agents']} | {ms(d, 50)}, {ms(d, 100)} | {ms(k, 50)}, {ms(k, 100)} | "
              f"{'yes' if worst <= args.ttl + 1 else 'no'} ({len(d)} kills) | {r['leases_lost']} |")  # fmt: skip
    print("\n| agents | etcd CPU idle: no agent -> with the agents | etcd RSS | lease refreshes/s | watchers "
          "| per change: watch messages, etcd CPU, all agents' CPU | agent CPU idle (mean / max) | agent + DNS worker RSS (mean / max) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["per_change"]
        print(f"| {r['agents']} | {r['etcd_floor'] * 100:.1f}% -> {r['etcd_cpu'] * 100:.1f}% of a core | "
              f"{r['etcd_rss']:.0f} MB | {max(r['keepalives'], r['keepalive_msgs']):.1f} | {r['watchers']:.0f} "
              f"({r['watch_streams']:.0f} streams) | {c['watch_msgs']:.0f}, {c['etcd_cpu_ms']:.0f} ms, "
              f"{c['agents_cpu_ms']:.0f} ms | "
              f"{r['agent_cpu'] * 100:.2f}% / {r['agent_cpu_max'] * 100:.2f}% | "
              f"{r['agent_rss']:.0f} / {r['agent_rss_max']:.0f} MB |")  # fmt: skip
    print("(per change: with the bare watchers on, etcd sends each event to twice as many watchers; its CPU is the"
          " whole phase's over the changes, idle included; the agents' is above their idle rate: on a 2-CPU machine"
          " it bounds how soon the last of the fleet can have a change)")  # fmt: skip
    if rows:
        r = rows[-1]
        costs = Costs(agents=r["agents"], etcd_floor=r["etcd_floor"], etcd_cpu=r["etcd_cpu"],
                      keepalives_per_s=max(r["keepalives"], r["keepalive_msgs"]), watchers=int(r["watchers"]),
                      change_cpu_ms=r["per_change"]["etcd_above_idle_ms"], change_watchers=int(round(r["per_change"]["watch_msgs"])))  # fmt: skip
        print(f"\nlinear estimate from {r['agents']} agents at TTL {args.ttl} s (the default 15 s refreshes "
              f"{15 / args.ttl:.0f}x less often):")  # fmt: skip
        for hosts in (1000, 5000):
            e = estimate(costs, hosts)
            print(f"- {hosts:,} hosts: {e.watchers:,} etcd watchers (one change = {e.watchers:,} watch messages), "
                  f"{e.keepalives_per_s:,.0f} lease refreshes/s ({e.keepalives_per_s * args.ttl / 15:,.0f}/s at 15 s), "
                  f"etcd idle {e.etcd_idle_cores:.2f} cores, one change "
                  + (f"~{e.change_cpu_ms:.0f} ms of etcd CPU" if e.change_cpu_ms > 0 else "not measurable above idle"))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--changes", type=int, default=20, help="changes of each kind per size")
    ap.add_argument("--kills", type=int, default=3, help="hosts killed per size, one after the other")
    ap.add_argument("--ttl", type=int, default=3, help="node_lease_ttl of every agent, seconds")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of the idle window")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false")
    ap.add_argument("--poller", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--watchers", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--writer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: every namespace and process goes
    if args.watchers:
        serve_watchers(args.watchers[0], int(args.watchers[1]), args.watchers[2])
        return 0
    if args.writer:
        serve_writer(args.writer)
        return 0
    if args.poller:
        asyncio.run(serve_poller(args.poller[0], args.poller[1:]))
        return 0
    if os.geteuid() != 0:
        print("bench/fleet.py needs root: it builds network namespaces", file=sys.stderr)
        return 2
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        print(f"bench/fleet.py: --sizes must be numbers separated by commas, not {args.sizes!r}", file=sys.stderr)
        return 2
    if min(sizes) < 2:
        print(f"bench/fleet.py: --sizes: each size must be at least 2 agents, not {min(sizes)}", file=sys.stderr)
        return 2
    rows: list[dict] = []
    refused: list[str] = []
    try:
        measure_all(sizes, args, rows, refused)
    except KeyboardInterrupt:
        refused.append("interrupted: the sizes measured so far")
    report(rows, args, refused)
    return 0


def measure_all(sizes: list[int], args: argparse.Namespace, rows: list[dict], refused: list[str]) -> None:
    for n in sizes:
        if rows:
            per_agent = max(r["agent_rss_max"] for r in rows)
            (fit,) = plan_sizes([n], per_agent, fixed_mb=rows[0]["etcd_rss"] * 4 + 500, available_mb=available_mb())
            if not fit.fits:
                refused.append(f"refused: {n} agents would need {fit.needed_mb:,.0f} MB ({per_agent:.0f} MB per agent "
                               f"measured), {available_mb():,.0f} MB available")  # fmt: skip
                print(refused[-1], file=sys.stderr, flush=True)
                continue
        print(f"measuring {n} agents ...", file=sys.stderr, flush=True)
        try:
            rows.append(measure(n, args))
        except (RuntimeError, TimeoutError, OSError) as err:  # the sizes measured so far are still reported
            refused.append(f"failed: {n} agents: {err}")
            print(refused[-1], file=sys.stderr, flush=True)
            break
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
