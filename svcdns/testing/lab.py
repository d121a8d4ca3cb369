"""A throwaway network lab: a "node" namespace and "pod" namespaces joined by veth pairs.

The integration tests, the benchmarks and the README demo (examples/demo.py) all build their world with this module, so
there is one way to do it and one teardown. Everything lives in network namespaces this module
creates (named ``svcdns-<tag>-<pid>-...``); nothing is added to the namespace the caller runs in.

Addressing (inside the lab's own namespaces only):

- pod *i* (1-based): ``10.244.<i>.2/24`` and ``fd00:244:<i>::2/64``; the node's side ``.1`` / ``::1``;
  pods route everything via the node;
- the node has an uplink ``svd0`` (``10.243.0.1``, ``fd00:243::1``) carrying the default routes, so
  traffic to a VIP (an address on no interface) is routed and meets the DNAT rules, as on a real host.

``Lab`` is a context manager; on exit it kills the processes it started (by PID) and deletes its
namespaces, whatever happened.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

_counter = itertools.count(1)


def run(cmd: list[str] | str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run(cmd, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@dataclass
class Netns:
    name: str

    def exec_args(self, cmd: list[str] | str) -> list[str]:
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: list[str] | str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(self.exec_args(cmd), check=check, **kw)

    def popen(self, cmd: list[str] | str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.exec_args(cmd), start_new_session=True, **kw)


@dataclass
class Pod:
    index: int
    ns: Netns
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address

    def address(self, family: int = 4) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self.ipv4 if family == 4 else self.ipv6


@dataclass
class Lab:
    """A node namespace plus pods. ``Lab(pods=2)`` builds nothing until entered."""

    pods: int = 2
    tag: str = "lab"
    node: Netns = field(init=False)
    pod_list: list[Pod] = field(init=False, default_factory=list)
    _namespaces: list[Netns] = field(init=False, default_factory=list)
    _procs: list[subprocess.Popen] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.prefix = f"svcdns-{self.tag}-{os.getpid()}-{next(_counter)}"

    # ---- building -----------------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.node = self._add_ns(f"{self.prefix}-node")
            self._sysctls(self.node)
            # the "uplink": a veth whose peer stays down, so nothing leaves through it (no dummy module
            # is needed); it carries the node's own address and the default routes
            self.node.run("ip link add svd0 type veth peer name svd1")
            self.node.run("ip addr add 10.243.0.1/32 dev svd0")
            self.node.run("ip addr add fd00:243::1/128 dev svd0 nodad")
            self.node.run("ip link set svd0 up")
            self.node.run("ip route add default dev svd0")
            self.node.run("ip -6 route add default dev svd0")
            for _ in range(self.pods):
                self.add_pod()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, name: str) -> Netns:
        run(["ip", "netns", "add", name])
        ns = Netns(name)
        self._namespaces.append(ns)
        ns.run("ip link set lo up")
        return ns

    @staticmethod
    def _sysctls(ns: Netns) -> None:
        for key, value in (
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.conf.all.route_localnet", "1"),
        ):
            ns.run(["sysctl", "-qw", f"{key}={value}"])

    def add_pod(self) -> Pod:
        i = len(self.pod_list) + 1
        ns = self._add_ns(f"{self.prefix}-pod{i}")
        host_if, pod_if = f"vp{i}", f"veth{i}"
        self.node.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if, "netns", ns.name])
        ns.run(["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])
        ns.run(["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"])
        self.node.run(["ip", "addr", "add", f"10.244.{i}.1/24", "dev", host_if])
        self.node.run(["ip", "addr", "add", f"fd00:244:{i}::1/64", "dev", host_if, "nodad"])
        self.node.run(["ip", "link", "set", host_if, "up"])
        ns.run(["ip", "addr", "add", f"10.244.{i}.2/24", "dev", pod_if])
        ns.run(["ip", "addr", "add", f"fd00:244:{i}::2/64", "dev", pod_if, "nodad"])
        ns.run(["ip", "link", "set", pod_if, "up"])
        ns.run(["ip", "route", "add", "default", "via", f"10.244.{i}.1"])
        ns.run(["ip", "-6", "route", "add", "default", "via", f"fd00:244:{i}::1"])
        pod = Pod(i, ns, ipaddress.IPv4Address(f"10.244.{i}.2"), ipaddress.IPv6Address(f"fd00:244:{i}::2"))
        self.pod_list.append(pod)
        return pod

    # ---- processes ----------------------------------------------------------------------------------------

    def spawn(self, ns: Netns, cmd: list[str] | str, **kw) -> subprocess.Popen:
        """Start a process inside ``ns``; it is killed (by PID) when the lab closes."""
        proc = ns.popen(cmd, **kw)
        self._procs.append(proc)
        return proc

    def serve(self, pod: Pod, port: int = 8080, proto: str = "tcp", family: int = 4) -> subprocess.Popen:
        """Start an echo server in ``pod`` that answers every TCP connection / UDP datagram with its
        own address, and wait until it listens."""
        addr = "::" if family == 6 else "0.0.0.0"
        proc = self.spawn(
            pod.ns,
            [sys.executable, "-m", "svcdns.testing.podserver", "--proto", proto, "--listen", addr, "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        line = proc.stdout.readline() if proc.stdout else b""
        if b"listening" not in line:
            raise RuntimeError(f"pod server in {pod.ns.name} did not start: {line!r}")
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream:
                stream.close()

    def close(self) -> None:
        for proc in reversed(self._procs):
            self.stop(proc)
        self._procs.clear()
        for ns in reversed(self._namespaces):
            # deleting the namespace removes its veths, dummies and netfilter tables with it
            run(["ip", "netns", "delete", ns.name], check=False)
        self._namespaces.clear()


def link(a: Netns, b: Netns, a_addr: str, b_addr: str, name: str = "svl0") -> None:
    """Join two namespaces of labs (two "nodes") with a veth pair: ``a_addr``/``b_addr`` with prefix."""
    a.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name, "netns", b.name])
    for ns, addr in ((a, a_addr), (b, b_addr)):
        ns.run(["ip", "addr", "add", addr, "dev", name])
        ns.run(["ip", "link", "set", name, "up"])


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def stale_namespaces(prefix: str = "svcdns-") -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
