"""The DNS server's supervisor: binds the listening sockets, runs the worker processes, publishes zones.

Each worker (:mod:`.worker`) is a process, so answers scale with cores despite the GIL. The
supervisor binds, per worker, one UDP socket and one TCP listener on every listen address (an
SO_REUSEPORT group, so the kernel spreads queries over the workers) and keeps them open itself.

``update(table)`` compiles the zone once, sends it to every worker and returns when all of them
answer from it: each worker swaps its zone in one assignment, so no answer ever mixes two tables.
Every exchange with the workers (a zone, a stats request) holds one lock from the first request to
the last reply, and replies carry the request's sequence number, so two threads never read each
other's replies. Whatever goes wrong on a worker's pipe is a :class:`~svcdns.errors.DNSError` here.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ..addr import format_hostport, parse_hostport
from ..errors import DNSError
from ..table import ServiceTable
from .forward import DEFAULT_ALLOWED, default_upstreams
from .worker import Settings, worker_main
from .zone import Zone, ZoneCompiler, empty_zone

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds a worker may take to start
ZONE_TIMEOUT = 30.0  # seconds a worker may take to apply a zone
STATS_TIMEOUT = 5.0
_PIPE_ERRORS = (OSError, EOFError, pickle.UnpicklingError)  # BrokenPipeError and ConnectionResetError are OSErrors

Sockets = list[tuple[socket.socket, socket.socket]]  # (UDP, TCP listener) per listen address


@dataclass
class _Slot:
    """One worker: its sockets (they outlive its processes), its process and its control pipe."""

    index: int
    sockets: Sockets
    proc: BaseProcess | None = None
    pipe: Connection | None = None
    last_stats: dict[str, Any] = field(default_factory=dict)


class DNSServer:
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
    ) -> None:
        ups = [parse_hostport(u, "dns.upstreams", default_port=53) if isinstance(u, str) else (u[0], int(u[1]))
               for u in (upstreams or [])]  # fmt: skip
        if upstreams is None and forward:
            ups = default_upstreams(list(listen))
        self.settings = Settings(
            listen=tuple((h, int(p)) for h, p in listen),
            zone=zone,
            ttl=ttl,
            upstreams=tuple(ups),
            allowed_networks=tuple(allowed_networks or DEFAULT_ALLOWED),
            forward=forward,
        )
        empty_zone(zone, ttl)  # validates the zone name now
        self.workers = workers or os.cpu_count() or 1
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()  # one exchange with the workers at a time
        self._seq = 0
        self.zone: Zone | None = None
        self.compiler: ZoneCompiler | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind every listen address, start the workers and wait until each answers."""
        try:
            self._bind()
            for slot in self._slots:
                self._spawn(slot)
            for slot in self._slots:
                self._wait_ready(slot)
        except BaseException:
            self.stop()
            raise
        addrs = ", ".join(format_hostport(h, p) for h, p in self.settings.listen)
        log.info("dns: serving %s on %s (UDP and TCP, %d workers)", self.settings.zone, addrs, self.workers)

    def _bind(self) -> None:
        listen = list(self.settings.listen)
        self._slots = [_Slot(i, []) for i in range(self.workers)]
        for n, (host, port) in enumerate(listen):
            for slot in self._slots:
                udp, tcp, port = _bind_pair(host, port)
                slot.sockets.append((udp, tcp))
            listen[n] = (host, port)  # port 0: every worker's sockets on the port the first one got
        if listen != list(self.settings.listen):
            self.settings = replace(self.settings, listen=tuple(listen))

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The bound listen addresses (a port 0 given as the port the kernel chose)."""
        return self.settings.listen

    def _spawn(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker_main, args=(self.settings, child, slot.sockets, slot.index),
                                 name=f"svcdns-dns-{slot.index}", daemon=True)  # fmt: skip
        proc.start()
        child.close()
        slot.proc, slot.pipe = proc, parent

    def _wait_ready(self, slot: _Slot) -> None:
        assert slot.pipe is not None
        try:
            ready = slot.pipe.recv() if slot.pipe.poll(START_TIMEOUT) else None
        except _PIPE_ERRORS:
            raise DNSError(f"DNS worker {slot.index} exited while starting (see its error above)") from None
        if ready != (0, "ready"):
            raise DNSError(f"DNS worker {slot.index} did not start within {START_TIMEOUT:.0f} s")

    def update(self, table: ServiceTable) -> None:
        """Publish the zone for ``table``; returns once every worker answers from it. Only the
        Services that changed are compiled again, and the workers receive just that delta."""
        compiler = self.compiler
        first = compiler is None
        if compiler is None:
            compiler = self.compiler = ZoneCompiler(self.settings.zone, self.settings.ttl)
        delta = compiler.update(table)
        self.zone = compiler.zone
        replies = (
            self._exchange("zone", self.zone, ZONE_TIMEOUT) if first else self._exchange("delta", delta, ZONE_TIMEOUT)
        )
        failed = [i for i, r in replies.items() if r != "ok"]
        if failed:
            raise DNSError(f"DNS worker {failed[0]} did not take the new zone")

    def stats(self) -> dict[str, Any]:
        """Queries by rcode and request durations, summed over the workers."""
        replies = self._exchange("stats", None, STATS_TIMEOUT)
        total: dict[str, Any] = {"queries": Counter(), "duration_buckets": Counter(), "duration_sum": 0.0,
                                 "duration_count": 0}  # fmt: skip
        for slot in self._slots:
            s = replies.get(slot.index)
            if isinstance(s, dict):
                slot.last_stats = s
            _add(total, slot.last_stats)
        failed = [i for i, r in replies.items() if not isinstance(r, dict)]
        if failed:
            raise DNSError(f"DNS worker {failed[0]} did not report its counts")
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in total.items()}

    def _exchange(self, verb: str, arg: Any, timeout: float) -> dict[int, Any]:
        """Send ``verb`` to every worker and collect the replies, by worker index; a worker whose
        pipe failed or that did not answer within ``timeout`` has None."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            payload = pickle.dumps((seq, verb, arg), protocol=pickle.HIGHEST_PROTOCOL)
            replies: dict[int, Any] = {}
            sent = []
            for slot in self._slots:
                replies[slot.index] = None
                try:
                    assert slot.pipe is not None
                    slot.pipe.send_bytes(payload)
                    sent.append(slot)
                except _PIPE_ERRORS as err:
                    log.error("dns: cannot talk to DNS worker %d: %s", slot.index, err)
            deadline = time.monotonic() + timeout
            for slot in sent:
                replies[slot.index] = self._reply(slot, seq, deadline)
            return replies

    def _reply(self, slot: _Slot, seq: int, deadline: float) -> Any:
        """The reply to request ``seq`` (earlier replies, from requests that timed out, are skipped)."""
        assert slot.pipe is not None
        try:
            while slot.pipe.poll(max(0.0, deadline - time.monotonic())):
                got, result = slot.pipe.recv()
                if got == seq:
                    return result
        except _PIPE_ERRORS as err:
            log.error("dns: DNS worker %d's pipe failed: %s", slot.index, err or type(err).__name__)
            return None
        log.error("dns: DNS worker %d did not answer", slot.index)
        return None

    def stop(self) -> None:
        stop = pickle.dumps((0, "stop", None))
        with self._lock:
            for slot in self._slots:
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

    def __enter__(self) -> DNSServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket, int]:
    """A UDP socket and a TCP listener on ``host:port`` in an SO_REUSEPORT group, and the port."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = socket.socket(fam, socket.SOCK_DGRAM)
    tcp = socket.socket(fam, socket.SOCK_STREAM)
    try:
        for proto, s in (("UDP", udp), ("TCP", tcp)):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
            except OSError as err:
                raise DNSError(f"cannot listen on {format_hostport(host, port)} ({proto}): {err.strerror}") from None
            port = s.getsockname()[1]
            s.setblocking(False)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:  # bursts: queue up to ~16k queries instead of dropping them
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        tcp.listen(128)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp, port


def _end(slot: _Slot) -> None:
    """Wait for the slot's process to exit (killed after 5 s), and close its pipe."""
    if slot.proc is not None:
        slot.proc.join(5)
        if slot.proc.is_alive():
            slot.proc.kill()
            slot.proc.join(5)
    if slot.pipe is not None:
        slot.pipe.close()
    slot.proc = slot.pipe = None


def _add(total: dict[str, Any], s: dict[str, Any]) -> None:
    if s:
        total["queries"].update(s["queries"])
        total["duration_buckets"].update(s["duration_buckets"])
        total["duration_sum"] += s["duration_sum"]
        total["duration_count"] += s["duration_count"]


__all__ = ["DNSServer"]
