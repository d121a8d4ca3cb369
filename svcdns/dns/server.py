"""The DNS server: UDP and TCP listeners in worker processes sharing each port with SO_REUSEPORT.

Each worker is a process (so answers scale with cores despite the GIL) running one selector loop
over its UDP sockets, TCP listeners and TCP connections (RFC 7766: length-prefixed messages, several
queries per connection, an idle timeout, a cap on connections). Answers come from the precompiled
zone; forwarded queries run on a small thread pool so they never stall the loop.

UDP is read and answered in batches (:mod:`.mmsg`): a query this worker has answered before from the
same zone is answered from its cache by copying the cached bytes over the query, with no object built
and one system call per batch each way; everything else is answered one by one by :meth:`_Worker.handle`.

``update(table)`` compiles the zone once, sends it to every worker and returns when all of them
answer from it: each worker swaps its zone in one assignment, so no answer ever mixes two tables.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import select
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import SvcdnsError
from ..table import ServiceTable
from .answer import CHASE, FORWARD, answer_cacheable
from .forward import DEFAULT_ALLOWED, Allowed, Forwarder, default_upstreams
from .mmsg import BATCH, QUERY, Batch
from .wire import FORMERR, RCODE_NAMES, REFUSED, SERVFAIL, error_from_header, parse_query, response
from .zone import Zone, ZoneCompiler, apply_delta, empty_zone

log = logging.getLogger(__name__)

TCP_IDLE = 10.0  # seconds a TCP client may stay silent
TCP_MAX_CONNECTIONS = 256  # per worker
CACHE_ENTRIES = 50_000  # answers kept per worker (dropped at each zone change)
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Settings:
    listen: tuple[tuple[str, int], ...]
    zone: str = "cluster.local"
    ttl: int = 5
    upstreams: tuple[tuple[str, int], ...] = ()
    allowed_networks: tuple[str, ...] = DEFAULT_ALLOWED
    forward: bool = True


def parse_listen(text: str, default_port: int = 53) -> tuple[str, int]:
    """``ADDR:PORT``, ``[v6]:PORT`` or ``ADDR``."""
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise SvcdnsError(f"DNS listen address {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:53") from None


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
        ups = [parse_listen(u) if isinstance(u, str) else tuple(u) for u in (upstreams or [])]
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
        self._procs: list[multiprocessing.Process] = []
        self._pipes: list = []
        self.zone: Zone | None = None
        self.compiler: ZoneCompiler | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
        for i in range(self.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(self.settings, child, i), name=f"svcdns-dns-{i}", daemon=True)
            proc.start()
            child.close()
            self._procs.append(proc)
            self._pipes.append(parent)
        for pipe in self._pipes:
            try:
                status = pipe.recv() if pipe.poll(30) else "a worker did not start within 30 s"
            except EOFError:
                status = "a worker exited while starting (see its error above)"
            if status != "ready":
                self.stop()
                raise SvcdnsError(f"DNS server: {status}")
        addrs = ", ".join(f"{h}:{p}" for h, p in self.settings.listen)
        log.info("dns: serving %s on %s (UDP and TCP, %d workers)", self.settings.zone, addrs, self.workers)

    def update(self, table: ServiceTable) -> None:
        """Publish the zone for ``table``; returns once every worker answers from it. Only the
        Services that changed are compiled again, and the workers receive just that delta."""
        first = self.compiler is None
        if first:
            self.compiler = ZoneCompiler(self.settings.zone, self.settings.ttl)
        delta = self.compiler.update(table)
        self.zone = self.compiler.zone
        message = ("zone", self.zone) if first else ("delta", delta)
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        for pipe in self._pipes:
            pipe.send_bytes(payload)
        for pipe in self._pipes:
            if not pipe.poll(30) or pipe.recv() != "ok":
                raise SvcdnsError("a DNS worker did not take the new zone")

    def stats(self) -> dict:
        """Queries by rcode and request durations, summed over the workers."""
        total: dict = {"queries": Counter(), "duration_buckets": Counter(), "duration_sum": 0.0, "duration_count": 0}
        request = pickle.dumps(("stats", None))
        for pipe in self._pipes:
            pipe.send_bytes(request)
        for pipe in self._pipes:
            if pipe.poll(5):
                s = pipe.recv()
                total["queries"].update(s["queries"])
                total["duration_buckets"].update(s["duration_buckets"])
                total["duration_sum"] += s["duration_sum"]
                total["duration_count"] += s["duration_count"]
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in total.items()}

    def stop(self) -> None:
        stop = pickle.dumps(("stop", None))
        for pipe in self._pipes:
            try:
                pipe.send_bytes(stop)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for pipe in self._pipes:
            pipe.close()
        self._procs.clear()
        self._pipes.clear()

    def __enter__(self) -> DNSServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- the worker ------------------------------------------------------------------------------------------


def _rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, str(rcode))


@dataclass
class _Conn:
    sock: socket.socket
    peer: str  # the client's address
    inbuf: bytearray = field(default_factory=bytearray)
    last: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _send_all(sock: socket.socket, data: bytes, timeout: float = 5.0) -> None:
    """Write all of ``data`` to a non-blocking socket, waiting for room (a slow reader gets 5 s)."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("TCP client does not read its answers") from None
            select.select([], [sock], [], left)


class _Worker:
    def __init__(self, settings: Settings, control) -> None:
        self.settings = settings
        self.control = control
        self.zone = empty_zone(settings.zone, settings.ttl)
        self.allowed = Allowed(settings.allowed_networks)
        self.forwarder = Forwarder(list(settings.upstreams)) if settings.forward and settings.upstreams else None
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="forward") if self.forwarder else None
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}
        # the answer caches, by transport and by whether the client may recurse: query bytes after
        # the ID -> (answer bytes after the ID, rcode); emptied, in place, at every zone change
        self.udp_cache: tuple[dict, dict] = ({}, {})
        self.tcp_cache: tuple[dict, dict] = ({}, {})
        self.recurse: dict[str, bool] = {}  # client address -> may recurse
        self.udp_clients: dict[bytes, dict] = {}  # client address bytes -> its UDP answer cache
        self.next_expiry = 0.0
        self.rcodes = [0] * 4096  # queries answered, by rcode
        self.buckets: Counter = Counter()
        self.duration_sum = 0.0
        self.duration_count = 0
        self.running = True

    def bind(self) -> None:
        for host, port in self.settings.listen:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            udp = socket.socket(fam, socket.SOCK_DGRAM)
            tcp = socket.socket(fam, socket.SOCK_STREAM)
            for s in (udp, tcp):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((host, port))
                s.setblocking(False)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:  # bursts: queue up to ~16k queries instead of dropping them
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            except OSError:
                pass
            tcp.listen(128)
            self.sel.register(udp, selectors.EVENT_READ, ("udp", Batch(udp)))
            self.sel.register(tcp, selectors.EVENT_READ, ("listen", tcp))
        self.sel.register(self.control, selectors.EVENT_READ, ("control", None))

    def run(self) -> None:
        while self.running:
            for key, _ in self.sel.select(timeout=1.0):
                kind, obj = key.data
                if kind == "udp":
                    self.on_udp(obj)
                elif kind == "listen":
                    self.on_accept(obj)
                elif kind == "tcp":
                    self.on_tcp(obj)
                else:
                    self.on_control()
            now = time.monotonic()
            if now >= self.next_expiry:
                self.expire(now)
                self.next_expiry = now + 1.0

    # -- control
    def on_control(self) -> None:
        try:
            verb, arg = pickle.loads(self.control.recv_bytes())
        except (EOFError, OSError):
            self.running = False  # the parent is gone
            return
        if verb in ("zone", "delta"):
            # one assignment: every answer after this comes from the new zone
            self.zone = arg if verb == "zone" else apply_delta(self.zone, arg)
            for cache in (*self.udp_cache, *self.tcp_cache):
                cache.clear()
            self.control.send("ok")
        elif verb == "stats":
            queries = {_rcode_name(rcode): n for rcode, n in enumerate(self.rcodes) if n}
            self.control.send({"queries": queries, "duration_buckets": dict(self.buckets),
                               "duration_sum": self.duration_sum, "duration_count": self.duration_count})  # fmt: skip
        elif verb == "stop":
            self.running = False

    # -- answering
    def may_recurse(self, client: str) -> bool:
        """Whether ``client`` gets forwarded answers."""
        ra = self.recurse.get(client)
        if ra is None:
            if len(self.recurse) >= CACHE_ENTRIES:
                self.recurse.clear()
            ra = self.recurse[client] = self.forwarder is not None and client in self.allowed
        return ra

    def handle(self, data: bytes, client: str, udp: bool, ra: bool, reply) -> None:
        start = time.perf_counter()
        # the answer cache: the same query bytes (ID aside) get the same answer from one zone
        cache = (self.udp_cache if udp else self.tcp_cache)[ra]
        key = data[2:]
        hit = cache.get(key)
        if hit is not None:
            reply(data[:2] + hit[0])
            self.count(hit[1], start)
            return
        out, rcode, cacheable = answer_cacheable(self.zone, data, udp=udp, ra=ra)
        if out is FORWARD:
            self.forward(data, client, udp, reply, start)
            return
        if cacheable == CHASE and self.pool is not None:
            self.pool.submit(self.chase, out, reply, start)
            return
        if out is not None:
            reply(out)
            self.count(rcode, start)
            if cacheable:
                if len(cache) >= CACHE_ENTRIES:
                    cache.clear()  # garbage queries must not grow it without bound
                cache[key] = (out[2:], rcode)

    def forward(self, data: bytes, client: str, udp: bool, reply, start: float) -> None:
        q = parse_query(bytes(data))
        if self.forwarder is None or client not in self.allowed:
            reply(response(q, REFUSED, aa=False))
            self.count(REFUSED, start)
            return

        def job() -> None:
            out = self.forwarder.resolve(bytes(data), q)
            if out is None:
                out = response(q, SERVFAIL, aa=False, ra=True)
            elif udp and len(out) > q.udp_limit():
                out = bytearray(out[:12])  # too large for this client: TC=1, retry over TCP
                out[2] |= 0x02
                out[6:12] = b"\x00" * 6
                out = bytes(out) + q.question
            reply(out)
            self.count(out[3] & 0xF, start)

        self.pool.submit(job)  # type: ignore[union-attr]

    def chase(self, answer: bytes, reply, start: float) -> None:
        """An ExternalName's CNAME, with the target's addresses resolved upstream appended (the slow
        path: dnslib builds the message)."""
        from dnslib import QTYPE, DNSRecord

        try:
            msg = DNSRecord.parse(answer)
            query = DNSRecord.question(str(msg.rr[0].rdata), QTYPE.get(msg.q.qtype))
            data = bytes(query.pack())
            upstream = self.forwarder.resolve(data, parse_query(data)) if self.forwarder else None
            if upstream is not None:
                for rr in DNSRecord.parse(upstream).rr:
                    msg.add_answer(rr)
            msg.header.ra = 1
            answer = bytes(msg.pack())
        except Exception:  # noqa: BLE001 - an upstream's garbage: the CNAME alone is still right
            log.exception("dns: could not resolve an ExternalName's target")
        reply(answer)
        self.count(0, start)

    def count(self, rcode: int, start: float) -> None:
        self.rcodes[rcode] += 1
        self.observe(time.perf_counter() - start, 1)

    def observe(self, elapsed: float, n: int) -> None:
        """``n`` requests that took ``elapsed`` seconds (a batch counts its whole time for each)."""
        self.duration_sum += elapsed * n
        self.duration_count += n
        for b in DURATION_BUCKETS:
            if elapsed <= b:
                self.buckets[b] += n
                break
        else:
            self.buckets["+Inf"] += n

    def on_udp(self, batch: Batch) -> None:
        """Answer the queued datagrams in batches. The fast path, a query this worker has answered
        from the same zone before, copies the cached answer over the query; anything else goes to
        :meth:`udp_slow`, and the answers on either side of it are sent as two runs."""
        clients, rcodes, nocache = self.udp_clients, self.rcodes, {}
        buf, view, meta, out_len, slots = batch.buf, batch.view, batch.meta, batch.out_len, batch.slots
        room = QUERY - 2
        for _ in range(8):  # up to 8 batches, then let the other sockets speak
            k = batch.recv()
            if not k:
                return
            start = time.perf_counter()
            run = slow = 0  # run: the first answer not sent yet
            for i, a0, a1, q, length, answer_length in slots[:k]:
                hit = clients.get(view[a0:a1].tobytes(), nocache).get(view[q + 2 : q + meta[length]].tobytes())
                if hit is None or len(hit[0]) > room:
                    if run < i:
                        batch.send(run, i)
                    run = i + 1
                    slow += 1
                    self.udp_slow(batch, i)
                    continue
                answer = hit[0]
                buf[q + 2 : q + 2 + len(answer)] = answer  # the ID is already there
                out_len[answer_length] = len(answer) + 2
                rcodes[hit[1]] += 1
            if run < k:
                batch.send(run, k)
            if slow < k:  # (udp_slow counted its own)
                self.observe(time.perf_counter() - start, k - slow)
            if k < BATCH:
                return  # the queue is empty

    def udp_slow(self, batch: Batch, i: int) -> None:
        """Datagram ``i`` of the batch, answered on its own with :meth:`handle`."""
        data = batch.datagram(i)
        addr = batch.client(i)
        sock = batch.sock

        def reply(out: bytes, addr=addr) -> None:
            try:
                sock.sendto(out, addr)
            except OSError as exc:
                log.debug("dns: cannot answer %s: %s", addr, exc)

        if batch.truncated(i):  # longer than any sane query: FORMERR, from its header
            err = error_from_header(data, FORMERR)
            if err:
                reply(err)
                self.count(FORMERR, time.perf_counter())
            return
        ra = self.may_recurse(addr[0])
        if len(self.udp_clients) >= CACHE_ENTRIES:
            self.udp_clients.clear()
        self.udp_clients[batch.address(i)] = self.udp_cache[ra]
        try:
            self.handle(data, addr[0], True, ra, reply)
        except Exception:  # noqa: BLE001 - one bad packet must not stop the server; it is logged
            log.exception("dns: failed to answer a query from %s", addr[0])
            err = error_from_header(data, SERVFAIL)
            if err:
                reply(err)

    def on_accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self.conns) >= TCP_MAX_CONNECTIONS:
            sock.close()  # at the cap: the client retries later
            return
        sock.setblocking(False)
        self.conns[sock.fileno()] = _Conn(sock, addr[0])
        self.sel.register(sock, selectors.EVENT_READ, ("tcp", sock))

    def on_tcp(self, sock: socket.socket) -> None:
        conn = self.conns.get(sock.fileno())
        if conn is None:
            return
        try:
            chunk = sock.recv(65537)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close(conn)
            return
        conn.last = time.monotonic()
        conn.inbuf += chunk
        while len(conn.inbuf) >= 2:
            size = struct.unpack_from("!H", conn.inbuf)[0]
            if len(conn.inbuf) < 2 + size:
                break
            data = bytes(conn.inbuf[2 : 2 + size])
            del conn.inbuf[: 2 + size]

            def reply(out: bytes, c=conn) -> None:
                with c.lock:  # answers from the forwarding threads and the loop never interleave
                    try:
                        _send_all(c.sock, struct.pack("!H", len(out)) + out)
                    except OSError as exc:
                        log.debug("dns: TCP answer failed: %s", exc)

            try:
                self.handle(data, conn.peer, False, self.may_recurse(conn.peer), reply)
            except Exception:  # noqa: BLE001 - as for UDP: logged, answered SERVFAIL, server goes on
                log.exception("dns: failed to answer a TCP query from %s", conn.peer)
                err = error_from_header(data, SERVFAIL)
                if err:
                    reply(err)

    def close(self, conn: _Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def expire(self, now: float) -> None:
        for conn in [c for c in self.conns.values() if now - c.last > TCP_IDLE]:
            self.close(conn)


def _worker_main(settings: Settings, control, index: int) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s svcdns.dns[{index}]: %(message)s")
    worker = _Worker(settings, control)
    try:
        worker.bind()
    except OSError as err:
        addrs = ", ".join(f"{h}:{p}" for h, p in settings.listen)
        control.send(f"cannot listen on {addrs}: {err.strerror}")
        return
    control.send("ready")
    worker.run()
