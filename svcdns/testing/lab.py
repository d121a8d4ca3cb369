"""A throwaway network lab: a "node" namespace and "pod" namespaces joined by veth pairs.

The integration tests, the benchmarks and the README demo (examples/demo.py) all build their world with this module, so
there is one way to do it and one teardown. Everything lives in network namespaces this module
creates (named ``svcdns-<tag>-<pid>-...``); nothing is added to the namespace the caller runs in.

Addressing (inside the lab's own namespaces only):

- routed pod *i* (1-based, counting every pod): ``10.244.<i>.2/24`` and ``fd00:244:<i>::2/64`` on a
  veth pair of its own, the node's side ``.1`` / ``::1``; pods route everything via the node;
- bridged pod *k* (1-based, counting the bridged pods): ``10.244.0.<k+1>/24`` and
  ``fd00:244::<k+1>/64`` on a veth whose node side is a port of the bridge ``svbr0`` (the common
  container set-up), which holds the node's ``10.244.0.1`` / ``fd00:244::1``: the pods' gateway;
  br_netfilter is off on it unless a test turns it on (``set_br_netfilter``);
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
BRIDGE = "svbr0"  # the node's bridge for bridged pods


class NoBrNetfilter(RuntimeError):
    """The host has no br_netfilter module loaded (loading one is host-wide: the lab never does)."""


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
    host_if: str = ""  # the node's side of the pod's veth pair (a port of BRIDGE for a bridged pod)
    bridged: bool = False

    def address(self, family: int = 4) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self.ipv4 if family == 4 else self.ipv6


@dataclass
class Lab:
    """A node namespace plus pods. ``Lab(pods=2, bridged=2)`` builds nothing until entered."""

    pods: int = 2
    bridged: int = 0
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
            for _ in range(self.bridged):
                self.add_pod(bridged=True)
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

    def add_pod(self, bridged: bool = False) -> Pod:
        """A routed pod (a veth pair of its own), or with ``bridged`` a pod on the bridge BRIDGE."""
        i = len(self.pod_list) + 1
        ns = self._add_ns(f"{self.prefix}-pod{i}")
        host_if, pod_if = (f"vb{i}" if bridged else f"vp{i}"), f"veth{i}"
        self.node.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if, "netns", ns.name])
        ns.run(["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])
        ns.run(["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"])
        if bridged:
            self._bridge()
            k = sum(p.bridged for p in self.pod_list) + 1
            v4, v6, gw4, gw6 = f"10.244.0.{k + 1}", f"fd00:244::{k + 1:x}", "10.244.0.1", "fd00:244::1"
            self.node.run(["ip", "link", "set", host_if, "master", BRIDGE])
        else:
            v4, v6, gw4, gw6 = f"10.244.{i}.2", f"fd00:244:{i}::2", f"10.244.{i}.1", f"fd00:244:{i}::1"
            self.node.run(["ip", "addr", "add", f"{gw4}/24", "dev", host_if])
            self.node.run(["ip", "addr", "add", f"{gw6}/64", "dev", host_if, "nodad"])
        self.node.run(["ip", "link", "set", host_if, "up"])
        ns.run(["ip", "addr", "add", f"{v4}/24", "dev", pod_if])
        ns.run(["ip", "addr", "add", f"{v6}/64", "dev", pod_if, "nodad"])
        ns.run(["ip", "link", "set", pod_if, "up"])
        ns.run(["ip", "route", "add", "default", "via", gw4])
        ns.run(["ip", "-6", "route", "add", "default", "via", gw6])
        pod = Pod(i, ns, ipaddress.IPv4Address(v4), ipaddress.IPv6Address(v6), host_if, bridged)
        self.pod_list.append(pod)
        return pod

    def _bridge(self) -> None:
        """The node's bridge, made with the first bridged pod; its ports forward at once (no STP)."""
        if self.node.run(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
            return
        self.node.run(["ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        self.node.run(["ip", "addr", "add", "10.244.0.1/24", "dev", BRIDGE])
        self.node.run(["ip", "addr", "add", "fd00:244::1/64", "dev", BRIDGE, "nodad"])
        self.node.run(["ip", "link", "set", BRIDGE, "up"])
        try:  # deterministic: off, whatever the module's default (on) where it is loaded
            self.set_br_netfilter(False)
        except NoBrNetfilter:
            pass

    def set_br_netfilter(self, on: bool) -> None:
        """Whether the node's bridge hands IPv4/IPv6 frames to netfilter (the node namespace's own
        ``bridge-nf-call-ip*tables``). Needs the br_netfilter module, which only the host can load:
        NoBrNetfilter when it is not there."""
        if self.node.run(["test", "-d", "/proc/sys/net/bridge"], check=False).returncode != 0:
            raise NoBrNetfilter("br_netfilter is not loaded on this machine (no /proc/sys/net/bridge)")
        for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
            self.node.run(["sysctl", "-qw", f"{key}={1 if on else 0}"])

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
