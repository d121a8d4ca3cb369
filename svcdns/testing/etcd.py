"""A throwaway etcd server on loopback ports (Debian's etcd-server), for tests and benchmarks."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..addr import format_hostport
from .lab import Netns, free_port, wait_for


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
            # killed with the test run that started it, even when that run is killed and never gets to
            # stop it (the signal comes when the *thread* that started it ends: start from one that
            # outlives the server)
            cmd = ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
            self._procs[k] = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
            log.close()
        self.wait_ready(i)
        if self.auth and not self._auth_on:
            self._enable_auth()
            self._auth_on = True

    def _enable_auth(self) -> None:
        """User ``root`` (role ``root``), then authentication on: what ``etcdctl user add root`` and
        ``etcdctl auth enable`` do (over plain text: not with ``tls``). Once: members keep it in their
        data. With ``netns``, from inside it (the member listens there)."""
        target = self._at(self.client_ports[0])
        if self.netns is None:
            enable_auth(target, self.PASSWORD)
            return
        code = f"from svcdns.testing.etcd import enable_auth; enable_auth({target!r}, {self.PASSWORD!r})"
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        self.netns.run([sys.executable, "-c", code], env=env)

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
        return format_hostport(self.host, port)

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


def enable_auth(target: str, password: str) -> None:
    """Add user ``root`` with ``password`` and role ``root``, then turn authentication on."""
    import asyncio

    import grpc.aio
    from aetcd import rpc

    async def enable() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = rpc.AuthStub(channel)
            await stub.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=5)
            await stub.UserAdd(rpc.AuthUserAddRequest(name="root", password=password), timeout=5)
            await stub.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=5)
            await stub.AuthEnable(rpc.AuthEnableRequest(), timeout=5)

    asyncio.run(enable())
