"""A throwaway network lab: a "node" namespace and "pod" namespaces joined by veth pairs.

The integration tests, the benchmarks and the README demo all build their world with this module, so
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

import functools
import ipaddress
import itertools
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

GUARD_ENV = "SVCDNS_FORBID_NETNS"  # inode of a namespace the kernel shells must refuse to program
_counter = itertools.count(1)


def netns_inode(pid: str | int = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def host_netns_inode() -> int:
    """The host's own namespace, which tests must never program: PID 1's where it can be read (some
    sandboxes hide it), else the caller's own (the test runner starts in the host namespace)."""
    try:
        return netns_inode(1)
    except OSError:
        return netns_inode()


def check_netns_guard(what: str) -> None:
    """Raise if this process is in the namespace named by ``$SVCDNS_FORBID_NETNS``.

    The test harness sets the variable to the host namespace's inode; every kernel shell (nftables,
    iptables, conntrack) calls this before it programs anything, so a test that forgot to enter its
    namespace fails loudly instead of touching the host."""
    forbidden = os.environ.get(GUARD_ENV)
    if forbidden and str(netns_inode()) == forbidden.strip():
        raise RuntimeError(
            f"refusing to {what} in the host network namespace (inode {forbidden}); "
            f"run inside a namespace of the lab (svcdns.lab) or unset {GUARD_ENV} outside tests"
        )


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
            [sys.executable, "-m", "svcdns.podserver", "--proto", proto, "--listen", addr, "--port", str(port)],
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


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EtcdServer:
    """A throwaway etcd on loopback ports with its own data directory (Debian's etcd-server), for
    tests and benchmarks. ``members`` > 1 starts a cluster; ``stop(i)`` / ``start(i)`` one member.
    ``tls``: clients must speak TLS and show a certificate of the cluster's own CA (etcd's
    ``--client-cert-auth``); ``tls_files`` are then the CA, a client certificate and its key.
    ``auth``: etcd's authentication is on, user ``root`` with password ``PASSWORD`` (in ``url``);
    ``args``: more etcd flags (say ``--auth-token-ttl``)."""

    PASSWORD = "svcdns-test"

    data_root: Path
    members: int = 1
    host: str = "127.0.0.1"  # listen address (a namespace's own address when ``netns`` is given)
    netns: Netns | None = None  # run inside this lab namespace instead of the caller's
    tls: bool = False
    auth: bool = False
    args: tuple[str, ...] = ()
    _procs: dict[int, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client_ports = [free_port() for _ in range(self.members)]
        self.peer_ports = [free_port() for _ in range(self.members)]
        self.cluster = ",".join(f"m{i}=http://{self._at(p)}" for i, p in enumerate(self.peer_ports))
        self.tls_files: dict[str, Path] = {}
        self._auth_on = False

    @property
    def url(self) -> str:
        hosts = ",".join(self._at(p) for p in self.client_ports)
        options = {**self.tls_files, **({"username": "root", "password": self.PASSWORD} if self.auth else {})}
        query = "?" + "&".join(f"{k}={v}" for k, v in options.items()) if options else ""
        return f"etcd://{hosts}/svcdns-test{query}"

    def _make_certs(self) -> None:
        """A CA, and one certificate (for the members and for clients) valid for ``host``."""
        d = self.data_root / "tls"
        d.mkdir(parents=True, exist_ok=True)
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = functools.partial(subprocess.run, check=True, capture_output=True, cwd=d)
        run(["openssl", "req", "-x509", *key, "-days", "2", "-subj", "/CN=svcdns-test-ca",
             "-keyout", "ca.key", "-out", "ca.pem"])  # fmt: skip
        run(["openssl", "req", *key, "-subj", "/CN=svcdns-test", "-keyout", "node.key", "-out", "node.csr"])
        (d / "ext").write_text(f"subjectAltName=IP:{self.host}\nextendedKeyUsage=serverAuth,clientAuth\n")
        run(["openssl", "x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "ext", "-out", "node.pem"])  # fmt: skip
        self.tls_files = {"cacert": d / "ca.pem", "cert": d / "node.pem", "key": d / "node.key"}

    def _cmd(self, i: int) -> list[str]:
        binary = "/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else "etcd"
        client = f"{'https' if self.tls else 'http'}://{self._at(self.client_ports[i])}"
        peer = f"http://{self._at(self.peer_ports[i])}"
        tls = ["--trusted-ca-file", str(self.tls_files["cacert"]), "--cert-file", str(self.tls_files["cert"]),
               "--key-file", str(self.tls_files["key"]), "--client-cert-auth"] if self.tls else []  # fmt: skip
        return [
            binary, "--name", f"m{i}", "--data-dir", str(self.data_root / f"m{i}"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.cluster, "--initial-cluster-state", "new",
            "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error", *tls, *self.args,
        ]  # fmt: skip

    def start(self, i: int | None = None) -> None:
        if self.tls and not self.tls_files:
            self._make_certs()
        for k in range(self.members) if i is None else [i]:
            if k in self._procs and self._procs[k].poll() is None:
                continue
            log = open(self.data_root / f"m{k}.log", "ab")
            cmd = self.netns.exec_args(self._cmd(k)) if self.netns else self._cmd(k)
            self._procs[k] = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
            log.close()
        self.wait_ready(i)
        if self.auth and not self._auth_on:
            self._enable_auth()
            self._auth_on = True

    def _enable_auth(self) -> None:
        """User ``root`` (role ``root``), then authentication on: what ``etcdctl user add root`` and
        ``etcdctl auth enable`` do (over plain text: not with ``tls``). Once: members keep it in their data."""
        import asyncio

        import grpc.aio
        from aetcd import rpc

        async def enable() -> None:
            async with grpc.aio.insecure_channel(self._at(self.client_ports[0])) as channel:
                stub = rpc.AuthStub(channel)
                await stub.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=5)
                await stub.UserAdd(rpc.AuthUserAddRequest(name="root", password=self.PASSWORD), timeout=5)
                await stub.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=5)
                await stub.AuthEnable(rpc.AuthEnableRequest(), timeout=5)

        asyncio.run(enable())

    def wait_ready(self, i: int | None = None, timeout: float = 30.0) -> None:
        """Wait until the member(s) answer etcd's /health with true (a leader elected, quorum)."""
        f = self.tls_files
        tls = ["--cacert", str(f["cacert"]), "--cert", str(f["cert"]), "--key", str(f["key"])] if self.tls else []
        for k in range(self.members) if i is None else [i]:

            def healthy(port=self.client_ports[k]) -> bool:
                url = f"{'https' if self.tls else 'http'}://{self._at(port)}/health"
                cmd = ["curl", "-sg", "--max-time", "1", *tls, url]
                if self.netns is not None:
                    return '"true"' in self.netns.run(cmd, check=False).stdout
                return '"true"' in subprocess.run(cmd, capture_output=True, text=True).stdout

            wait_for(healthy, timeout, 0.05, f"etcd member m{k} on port {self.client_ports[k]} to be healthy")

    def stop(self, i: int | None = None, sig: int = signal.SIGTERM) -> None:
        for k in list(self._procs) if i is None else [i]:
            proc = self._procs.pop(k, None)
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, sig)  # its own session: inside a namespace it runs under `ip netns exec`
            os.killpg(proc.pid, signal.SIGCONT)  # a paused member must run to act on it
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def member(self, endpoint: str) -> int:
        """The index of the member serving clients at ``endpoint`` (``host:port``)."""
        return [self._at(p) for p in self.client_ports].index(endpoint)

    def _at(self, port: int) -> str:
        from .registry.etcd import hostport

        return hostport(self.host, port)

    def pause(self, i: int, paused: bool = True) -> None:
        """Freeze member ``i`` (SIGSTOP), or thaw it: a hung host. Its sockets stay open and the kernel
        still accepts connections, but nothing answers on them."""
        os.killpg(self._procs[i].pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def __enter__(self) -> EtcdServer:
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
