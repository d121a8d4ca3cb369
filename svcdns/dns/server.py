"""The DNS server's supervisor: binds the listening sockets, runs the worker processes, publishes zones.

Each worker (:mod:`.worker`) is a process, so answers scale with cores despite the GIL. The
supervisor binds, per worker, one UDP socket and one TCP listener on every listen address (an
SO_REUSEPORT group, so the kernel spreads queries over the workers) and keeps them open itself.

``update(table)`` compiles the zone once, sends it to every worker and returns when all of them
answer from it: each worker swaps its zone in one assignment, so no answer ever mixes two tables.
Under systemd the sockets outlive the process (:mod:`.sockets`: the file-descriptor store), and
``preload(table)`` before ``start`` has the workers answer from the last known zone from their
first query, so a restart neither refuses nor SERVFAILs what arrives meanwhile.

Every exchange with the workers (a zone, a stats request) holds one lock from the first request to
the last reply, and replies carry the request's sequence number, so two threads never read each
other's replies. Whatever goes wrong on a worker's pipe is a :class:`~svcdns.errors.DNSError` here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import os
import pickle
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from ..addr import format_hostport, parse_hostport
from ..errors import DNSError
from ..table import ServiceTable
from .forward import DEFAULT_ALLOWED, default_upstreams
from .sockets import SocketName, SocketStore, bind_one
from .stats import add as _add
from .stats import zero as _zero
from .worker import Settings, worker_main
from .zone import DEFAULT_CLUSTER_DNS, Zone, ZoneCompiler, empty_zone

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds a worker may take to start
ZONE_TIMEOUT = 30.0  # seconds a worker may take to apply a zone
STATS_TIMEOUT = 5.0
CRASH_WINDOW = 5.0  # a worker that dies this soon after its start is crash-looping: back off
MAX_BACKOFF = 10.0
_PIPE_ERRORS = (OSError, EOFError, pickle.UnpicklingError)  # BrokenPipeError and ConnectionResetError are OSErrors

Sockets = list[tuple[socket.socket, socket.socket]]  # (UDP, TCP listener) per listen address


@dataclass
class _Slot:
    """One worker: its sockets (they outlive its processes), its process and its control pipe."""

    index: int
    sockets: Sockets
    proc: BaseProcess | None = None
    pipe: Connection | None = None
    live: bool = False  # started, and holds the current zone
    started: float = 0.0
    crashes: int = 0  # deaths in a row, each within CRASH_WINDOW of its start
    last_stats: dict[str, Any] = field(default_factory=dict)


class DNSServer:
    """The supervisor. ``problem`` says when fewer workers answer than were asked for; a worker that
    dies (``kill -9``, the OOM killer) is noticed at once by a thread waiting on the processes'
    sentinels, and replaced on the same sockets with the current zone."""

    def __init__(
        self,
        listen: list[tuple[str, int]],
        *,
        zone: str = "cluster.local",
        ttl: int = 5,
        upstreams: list[tuple[str, int]] | list[str] | None = None,
        allowed_networks: list[str] | None = None,
        forward: bool = True,
        workers: int | None = None,
        cluster_dns: str = DEFAULT_CLUSTER_DNS,
        store: SocketStore | None = None,
        on_update: Callable[[ServiceTable], None] | None = None,
        freebind: tuple[str, ...] = (),
    ) -> None:
        self.freebind = freebind  # listen addresses that may appear on the host only after the bind
        self.store = store  # systemd's file-descriptor store, or None: sockets die with the process
        self.on_update = on_update  # told each table the workers now answer from (the zone cache)
        self.settings = _settings(tuple((h, int(p)) for h, p in listen), zone, ttl, upstreams, allowed_networks,
                                  forward, cluster_dns)  # fmt: skip
        self.workers = workers or os.cpu_count() or 1
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()  # one exchange with the workers at a time
        self._seq = 0
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._monitor: threading.Thread | None = None
        self._restarts = 0
        self._retired: dict[str, Any] = _zero()  # the counts of workers that were replaced
        self.zone: Zone | None = None
        self.compiler: ZoneCompiler | None = None
        self.clients: frozenset[str] = frozenset()  # the pods' addresses, forwarded for (allow_clients)

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind every listen address, start the workers and wait until each answers."""
        self._stopping.clear()
        try:
            self._bind()
            for slot in self._slots:
                self._spawn(slot)
            for slot in self._slots:
                self._wait_ready(slot)
                slot.live = True
        except BaseException:
            self.stop()
            raise
        self._wake_r, self._wake_w = os.pipe()
        self._monitor = threading.Thread(target=self._supervise, name="svcdns-dns-supervisor", daemon=True)
        self._monitor.start()
        addrs = ", ".join(format_hostport(h, p) for h, p in self.settings.listen)
        log.info("dns: serving %s on %s (UDP and TCP, %d workers)", self.settings.zone, addrs, self.workers)

    def preload(self, table: ServiceTable) -> None:
        """Answer from ``table`` from the first query on (the last known zone, before the registry
        is read); call before :meth:`start`. The next :meth:`update` sends only what differs."""
        self.compiler = ZoneCompiler(self.settings.zone, self.settings.ttl, self.settings.cluster_dns)
        self.compiler.update(table)
        self.zone = self.compiler.zone

    def _bind(self) -> None:
        """Per worker, a UDP socket and a TCP listener on every listen address: taken back from the
        store when it holds them (not for port 0, a new port each run), bound otherwise."""
        listen = list(self.settings.listen)
        self._slots = [_Slot(i, []) for i in range(self.workers)]
        named: dict[str, socket.socket] = {}
        for n, (host, port) in enumerate(listen):
            for slot in self._slots:
                pair = []
                for proto in ("udp", "tcp"):
                    name = SocketName(proto, host, listen[n][1], slot.index)
                    sock = self.store.take(name) if self.store is not None and port else None
                    if sock is None:
                        sock = bind_one(proto, host, listen[n][1], freebind=host in self.freebind)
                    named[str(name)] = sock
                    pair.append(sock)
                    # port 0: every worker's sockets on the port the first one got
                    listen[n] = (host, sock.getsockname()[1])
                slot.sockets.append((pair[0], pair[1]))
        if listen != list(self.settings.listen):
            self.settings = replace(self.settings, listen=tuple(listen))
        if self.store is not None:
            self.store.publish(named if all(port for _, port in self.settings.listen) else {})

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The bound listen addresses (a port 0 given as the port the kernel chose)."""
        return self.settings.listen

    @property
    def problem(self) -> str | None:
        """Why DNS is not fully up (for /healthz), or None while every worker answers."""
        live = sum(slot.live for slot in self._slots)
        return None if live == self.workers else f"{live} of {self.workers} DNS workers answering"

    def pids(self) -> list[int]:
        """The workers' process IDs (for tests and for a person with ``ps``)."""
        return [slot.proc.pid for slot in self._slots if slot.proc is not None and slot.proc.pid is not None]

    def _spawn(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker_main, args=(self.settings, child, slot.sockets, slot.index, self.zone),
                                 name=f"svcdns-dns-{slot.index}", daemon=True)  # fmt: skip
        with _main_not_rerun():
            proc.start()
        child.close()
        slot.proc, slot.pipe, slot.started = proc, parent, time.monotonic()

    def _wait_ready(self, slot: _Slot) -> None:
        assert slot.pipe is not None
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while not slot.pipe.poll(0.2):
                if time.monotonic() > deadline:
                    raise DNSError(f"DNS worker {slot.index} did not start within {START_TIMEOUT:.0f} s")
                if self._stopping.is_set():
                    raise DNSError("the DNS server is stopping")
            ready = slot.pipe.recv()
        except _PIPE_ERRORS:
            raise DNSError(f"DNS worker {slot.index} exited while starting (see its error above)") from None
        if ready != (0, "ready"):
            raise DNSError(f"DNS worker {slot.index} sent {ready!r} instead of ready")

    # ---- supervision ----------------------------------------------------------------------------------

    def _supervise(self) -> None:
        """Wait on the workers' sentinels; replace each worker that exits while we are not stopping."""
        while not self._stopping.is_set():
            watched = {slot.proc.sentinel: slot for slot in self._slots if slot.proc is not None}
            for ready in wait([self._wake_r, *watched], timeout=5.0):
                if ready == self._wake_r or self._stopping.is_set():
                    continue
                slot = watched[ready]  # type: ignore[index]
                self._replace(slot)

    def _replace(self, slot: _Slot) -> None:
        with self._lock:
            slot.live = False
            proc = slot.proc
            code = proc.exitcode if proc is not None else None
            _end(slot)
            _add(self._retired, slot.last_stats)
            slot.last_stats = {}
            self._restarts += 1
            quick = time.monotonic() - slot.started < CRASH_WINDOW
            slot.crashes = slot.crashes + 1 if quick else 0
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        delay = min(MAX_BACKOFF, 0.5 * 2 ** (slot.crashes - 1)) if slot.crashes > 1 else 0.0
        log.error("dns: DNS worker %d (pid %s) died (%s); starting a new one%s", slot.index,
                  proc.pid if proc else "?", how, f" in {delay:.1f} s" if delay else "")  # fmt: skip
        while not self._stopping.wait(delay):
            try:
                self._spawn(slot)
                self._wait_ready(slot)
                with self._lock:
                    if self._stopping.is_set():
                        return
                    if self.zone is not None:
                        result = self._ask(slot, "zone", self.zone, ZONE_TIMEOUT)
                        if result != "ok":
                            raise DNSError(f"DNS worker {slot.index} did not take the zone")
                    if self.clients and self._ask(slot, "clients", (self.clients, ()), ZONE_TIMEOUT) != "ok":
                        raise DNSError(f"DNS worker {slot.index} did not take the pods' addresses")
                    slot.live = True
                log.info("dns: DNS worker %d replaced (pid %s)", slot.index, slot.proc.pid if slot.proc else "?")
                return
            except DNSError as err:
                _end(slot, kill=True)
                delay = min(MAX_BACKOFF, max(0.5, 2 * delay))
                log.error("dns: %s; trying again in %.1f s", err, delay)

    def reconfigure(
        self,
        table: ServiceTable | None,
        *,
        zone: str,
        ttl: int,
        upstreams: list[tuple[str, int]] | list[str] | None,
        allowed_networks: list[str] | None,
        forward: bool,
        cluster_dns: str = DEFAULT_CLUSTER_DNS,
    ) -> None:
        """Answer by new settings on the same sockets and workers (a reload): queries keep coming in
        throughout. The zone is compiled again for ``table`` by the new name and TTL and sent with
        the settings in one message, so no answer mixes the two. The listen addresses and the number
        of workers stay (changing those takes a new server)."""
        settings = _settings(self.settings.listen, zone, ttl, upstreams, allowed_networks, forward, cluster_dns)
        compiler = ZoneCompiler(settings.zone, settings.ttl, settings.cluster_dns)
        if table is not None:
            compiler.update(table)
        with self._lock:
            self.settings, self.compiler = settings, (compiler if table is not None else None)
            self.zone = compiler.zone if table is not None else None
            replies = self._exchange(("configure", (settings, compiler.zone)), ZONE_TIMEOUT)
        if replies and not any(r == "ok" for r in replies.values()):
            raise DNSError(f"no DNS worker took the new settings ({self.problem})")

    # ---- requests -------------------------------------------------------------------------------------

    def update(self, table: ServiceTable) -> None:
        """Publish the zone for ``table``; returns once every worker answers from it. Only the
        Services that changed are compiled again, and the workers receive just that delta. A worker
        that fails to take it is replaced, and its replacement starts from this zone; only when no
        worker at all took it is that an error."""
        compiler = self.compiler
        first = compiler is None
        if compiler is None:
            compiler = self.compiler = ZoneCompiler(self.settings.zone, self.settings.ttl, self.settings.cluster_dns)
        delta = compiler.update(table)
        with self._lock:  # a worker being replaced starts from the zone before this delta, or after it
            self.zone = compiler.zone
            replies = self._exchange(("zone", self.zone) if first else ("delta", delta), ZONE_TIMEOUT)
        if replies and not any(r == "ok" for r in replies.values()):
            raise DNSError(f"no DNS worker took the new zone ({self.problem})")
        if self.on_update is not None:
            self.on_update(table)

    def allow_clients(self, addresses: frozenset[str]) -> None:
        """Forward for ``addresses`` (the pods') besides the allowed networks; the workers receive
        what changed since the last call. A worker that fails is replaced, and its replacement
        starts from this set."""
        with self._lock:
            added, gone = addresses - self.clients, self.clients - addresses
            self.clients = addresses
            if not added and not gone:
                return
            replies = self._exchange(("clients", (added, gone)), ZONE_TIMEOUT)
        if replies and not any(r == "ok" for r in replies.values()):
            raise DNSError(f"no DNS worker took the pods' addresses ({self.problem})")

    def stats(self) -> dict[str, Any]:
        """The workers' counts (:mod:`.stats`), summed over the workers, those replaced included (so
        the counters never go back); and the workers' own numbers."""
        with self._lock:
            replies = self._exchange(("stats", None), STATS_TIMEOUT)
            total = _zero()
            _add(total, self._retired)
            for slot in self._slots:
                s = replies.get(slot.index)
                if isinstance(s, dict):
                    slot.last_stats = s
                _add(total, slot.last_stats)
            out = {k: dict(v) if isinstance(v, Counter) else v for k, v in total.items()}
            out.update(workers=self.workers, workers_answering=sum(slot.live for slot in self._slots),
                       worker_restarts=self._restarts)  # fmt: skip
            return out

    def _exchange(self, request: tuple[str, Any], timeout: float) -> dict[int, Any]:
        """Send ``request`` to every live worker and collect the replies, by worker index (the lock
        is held). A worker whose pipe fails or that does not answer within ``timeout`` is killed:
        the supervisor replaces it."""
        self._seq += 1
        seq = self._seq
        payload = _dumps((seq, *request))
        replies: dict[int, Any] = {}
        sent = []
        for slot in self._slots:
            if slot.live and slot.pipe is not None:
                try:
                    slot.pipe.send_bytes(payload)
                    sent.append(slot)
                except _PIPE_ERRORS as err:
                    self._fail(slot, f"cannot talk to it: {err}")
        deadline = time.monotonic() + timeout
        for slot in sent:
            replies[slot.index] = result = self._reply(slot, seq, deadline)
            if result is None:
                self._fail(slot, "it did not answer")
        return replies

    def _ask(self, slot: _Slot, verb: str, arg: Any, timeout: float) -> Any:
        """One request to one worker (the lock is held); None if it failed."""
        self._seq += 1
        try:
            assert slot.pipe is not None
            slot.pipe.send_bytes(_dumps((self._seq, verb, arg)))
        except _PIPE_ERRORS:
            return None
        return self._reply(slot, self._seq, time.monotonic() + timeout)

    def _reply(self, slot: _Slot, seq: int, deadline: float) -> Any:
        """The reply to request ``seq`` (earlier replies, from requests that timed out, are skipped);
        None if the pipe failed or nothing came in time."""
        assert slot.pipe is not None
        try:
            while slot.pipe.poll(max(0.0, deadline - time.monotonic())):
                got, result = slot.pipe.recv()
                if got == seq:
                    return result
        except _PIPE_ERRORS:
            return None
        return None

    def _fail(self, slot: _Slot, why: str) -> None:
        """Take a worker out of service and kill it; the supervisor thread starts its replacement."""
        slot.live = False
        log.error("dns: DNS worker %d failed (%s); replacing it", slot.index, why)
        if slot.proc is not None and slot.proc.is_alive():
            slot.proc.kill()

    def stop(self) -> None:
        self._stopping.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._monitor is not None:
            self._monitor.join(10)
            self._monitor = None
        stop = pickle.dumps((0, "stop", None))
        with self._lock:
            for slot in self._slots:
                slot.live = False
                if slot.pipe is not None:
                    try:
                        slot.pipe.send_bytes(stop)
                    except _PIPE_ERRORS:
                        pass
            for slot in self._slots:
                _end(slot)
                for udp, tcp in slot.sockets:
                    udp.close()
                    tcp.close()
            self._slots = []
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        log.info("dns: stopped")

    def __enter__(self) -> DNSServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _settings(
    listen: tuple[tuple[str, int], ...],
    zone: str,
    ttl: int,
    upstreams: list[tuple[str, int]] | list[str] | None,
    allowed_networks: list[str] | None,
    forward: bool,
    cluster_dns: str,
) -> Settings:
    ups = [parse_hostport(u, "dns.upstreams", default_port=53) if isinstance(u, str) else (u[0], int(u[1]))
           for u in (upstreams or [])]  # fmt: skip
    if upstreams is None and forward:
        ups = default_upstreams(list(listen))
    empty_zone(zone, ttl)  # validates the zone name now
    return Settings(listen=listen, zone=zone, ttl=ttl, upstreams=tuple(ups),
                    allowed_networks=tuple(allowed_networks or DEFAULT_ALLOWED), forward=forward,
                    cluster_dns=cluster_dns)  # fmt: skip


@contextlib.contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Start a process without having it run this program's main script first (spawn runs
    ``__main__.__file__`` in the child: for ``svcdns agent``, the whole CLI, a second or so of a
    worker's start on a busy host, while the queries of a restart wait). The worker needs only
    :func:`worker_main`, which the child imports by name."""
    main = sys.modules.get("__main__")
    if main is None or not hasattr(main, "__file__"):
        yield
        return
    path, spec = main.__file__, getattr(main, "__spec__", None)
    del main.__file__
    main.__spec__ = None  # (python -m svcdns: spawn would import svcdns.__main__ by name instead)
    try:
        yield
    finally:
        main.__file__, main.__spec__ = path, spec


def _dumps(request: tuple) -> memoryview:
    """A request for the workers, pickled without the pickler's memo: a whole zone holds no cycles and
    few shared objects, and the memo of its ~100k objects was most of the agent's peak memory at
    start (17 MiB to send 4 MB at 10k Services; 5 MiB without it)."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True  # no memo: what the docs call deprecated, and every CPython 3 supports
    pickler.dump(request)
    return buf.getbuffer()


def _end(slot: _Slot, kill: bool = False) -> None:
    """Wait for the slot's process to exit (killed at once, or after 5 s), and close its pipe."""
    if slot.proc is not None:
        if kill and slot.proc.is_alive():
            slot.proc.kill()
        slot.proc.join(5)
        if slot.proc.is_alive():
            slot.proc.kill()
            slot.proc.join(5)
    if slot.pipe is not None:
        slot.pipe.close()
    slot.proc = slot.pipe = None


__all__ = ["DNSServer"]
