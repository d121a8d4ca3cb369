"""A DNS worker process: one selector loop over its UDP sockets, TCP listeners and TCP connections.

The supervisor (:mod:`.server`) binds the listening sockets and hands each worker its own set (one
UDP socket and one TCP listener per address, in an SO_REUSEPORT group), so a worker that dies leaves
its sockets open in the supervisor: queries wait in them until the replacement takes them over.

UDP is read and answered in batches (:mod:`.mmsg`): a query this worker has answered before from the
same zone is answered from its cache by copying the cached bytes over the query, with no object built
and one system call per batch each way; everything else is answered one by one by :meth:`Worker.handle`.
TCP follows RFC 7766: length-prefixed messages, several queries per connection, an idle timeout, a
cap on connections. Forwarded queries run on a small thread pool so they never stall the loop.

The control pipe carries ``(seq, verb, arg)`` requests; every request but ``stop`` gets one
``(seq, result)`` reply, so the supervisor can tell a late reply from the one it waits for.
"""

from __future__ import annotations

import gc
import logging
import pickle
import selectors
import signal
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .. import logs
from .answer import CHASE, FORWARD, answer_cacheable
from .forward import DEFAULT_ALLOWED, Allowed, Forwarder
from .mmsg import BATCH, QUERY, Batch
from .stats import NONE, OTHER, RCODES, Counts, Forwards, index, qtype_slot
from .stats import key as type_key
from .wire import FORMERR, REFUSED, SERVFAIL, error_from_header, parse_query, response, truncated
from .zone import DEFAULT_CLUSTER_DNS, Zone, apply_delta, empty_zone

log = logging.getLogger(__name__)

TCP_IDLE = 10.0  # seconds a TCP client may stay silent while fewer than half the slots are taken
TCP_IDLE_MIN = 0.5  # ... shrinking to this as the slots fill (RFC 7766 section 6.2.3, as unbound does)
TCP_MAX_CONNECTIONS = 256  # per worker
TCP_PER_CLIENT = 64  # connections one client address may hold, per worker
TCP_DRAIN = 0.5  # seconds a stopping worker still answers the connections it accepted
TCP_ACCEPTS = 32  # connections taken from a listener's backlog per turn of the loop
TCP_READ = 1024  # bytes read from one connection per turn of the loop: a client pipelining queries
# as fast as it can gets ~20 answered per turn (a UDP socket up to 8 batches of 64), not the CPU
TCP_OUTPUT_MAX = 256 << 10  # answer bytes queued for a client that does not read: then it is dropped
MAX_FORWARDS = 512  # forwarded queries outstanding per worker: beyond, SERVFAIL at once
FORWARD_PATIENCE = 4.0  # seconds a forward may wait for a thread: then SERVFAIL, no upstream asked
# answers kept per cache (dropped at each zone change): at least this many, or as many as the zone
# has answers, so that clients asking for every name in turn still hit (~290 bytes an answer)
CACHE_ENTRIES = 50_000

Reply = Callable[[bytes], None]


@dataclass(frozen=True)
class Settings:
    listen: tuple[tuple[str, int], ...]
    zone: str = "cluster.local"
    ttl: int = 5
    upstreams: tuple[tuple[str, int], ...] = ()
    allowed_networks: tuple[str, ...] = DEFAULT_ALLOWED
    forward: bool = True
    cluster_dns: str = DEFAULT_CLUSTER_DNS  # the zone's NS name's address


@dataclass
class _Conn:
    sock: socket.socket
    peer: str  # the client's address
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    last: float = field(default_factory=time.monotonic)  # the last whole query in, or answer bytes out


def idle_timeout(connections: int, cap: int = TCP_MAX_CONNECTIONS) -> float:
    """How long a TCP connection may stay idle with ``connections`` open: TCP_IDLE up to half the
    cap, then shrinking linearly to TCP_IDLE_MIN at the cap."""
    half = cap / 2
    if connections <= half:
        return TCP_IDLE
    return max(TCP_IDLE_MIN, TCP_IDLE * (cap - connections) / half)


class Worker:
    def __init__(
        self, settings: Settings, control: Connection, sockets: list[tuple[socket.socket, socket.socket]]
    ) -> None:
        self.settings = settings
        self.control = control
        self.sockets = sockets
        self.zone = empty_zone(settings.zone, settings.ttl)
        self.forwarder: Forwarder | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.recurse: dict[str, bool] = {}  # client address -> may recurse
        self.counts = Counts()
        self.forward_counts = Forwards()  # kept across reloads: each new Forwarder adds to them
        self.allowed = Allowed(())
        self.configure(settings)
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}
        # the answer caches, by transport and by whether the client may recurse: query bytes after
        # the ID -> (answer bytes after the ID, its counter index, its query type's slot: see
        # .stats); emptied, in place, at every zone change
        self.cache_entries = CACHE_ENTRIES  # each cache's bound (see take)
        self.udp_cache: tuple[dict, dict] = ({}, {})
        self.tcp_cache: tuple[dict, dict] = ({}, {})
        self.udp_clients: dict[bytes, dict] = {}  # client address bytes -> its UDP answer cache
        self.turn = 0  # the rotation of headless answers: each uncached answer takes the next
        self.next_expiry = 0.0
        self.running = True
        self.draining = 0.0  # once stopping: until when accepted connections are still answered
        # answers computed on the forwarding threads, handed to the loop (the only writer of sockets)
        self.done: deque[tuple[Reply, bytes, float, int]] = deque()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.forwards = 0  # outstanding, on the pool
        self.per_client: Counter[str] = Counter()  # TCP connections by client address

    def register(self) -> None:
        for udp, tcp in self.sockets:
            self.sel.register(udp, selectors.EVENT_READ, ("udp", Batch(udp)))
            self.sel.register(tcp, selectors.EVENT_READ, ("listen", tcp))
        self.sel.register(self.control, selectors.EVENT_READ, ("control", None))
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("done", None))

    def run(self) -> None:
        while self.running:
            for key, events in self.sel.select(timeout=TCP_IDLE_MIN):
                kind, obj = key.data
                if kind == "udp":
                    self.on_udp(obj)
                elif kind == "listen":
                    self.on_accept(obj)
                elif kind == "tcp":
                    if events & selectors.EVENT_WRITE:
                        self.flush(obj)
                    if events & selectors.EVENT_READ and obj.sock.fileno() in self.conns:
                        self.on_tcp(obj)
                elif kind == "done":
                    self.on_done()
                else:
                    self.on_control()
            now = time.monotonic()
            if self.draining and (not self.conns or now >= self.draining):
                self.running = False
            if now >= self.next_expiry:
                self.expire(now)
                self.next_expiry = now + TCP_IDLE_MIN

    def drain(self) -> None:
        """Stop: read no more datagrams and accept no more connections (they wait in the sockets,
        which outlive this process under systemd, for the next one), but answer the connections
        already accepted for up to TCP_DRAIN seconds: a client that just connected would otherwise
        see its connection reset."""
        for udp, tcp in self.sockets:
            for sock in (udp, tcp):
                try:
                    self.sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
        self.draining = time.monotonic() + TCP_DRAIN

    def configure(self, settings: Settings) -> None:
        """Answer by ``settings`` from now on, on the same sockets (a reload); forwards in flight
        finish on the forwarder they started with."""
        self.settings = settings
        self.allowed = Allowed(settings.allowed_networks, self.allowed.addresses)  # a reload keeps the pods
        self.forwarder = (Forwarder(list(settings.upstreams), counts=self.forward_counts)
                          if settings.forward and settings.upstreams else None)  # fmt: skip
        if self.forwarder is not None and self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="forward")
        self.recurse.clear()

    # -- control
    def on_control(self) -> None:
        try:
            seq, verb, arg = pickle.loads(self.control.recv_bytes())
        except (EOFError, OSError):
            self.running = False  # the supervisor is gone
            return
        if verb in ("zone", "delta", "configure"):
            if verb == "configure":  # new settings and the zone compiled by them, taken together
                settings, arg = arg
                self.configure(settings)
            self.take(apply_delta(self.zone, arg) if verb == "delta" else arg)
            if verb != "delta":
                # a whole zone is long-lived and holds no cycles: out of the collector's generations,
                # a gen-2 pass no longer walks its ~100k objects (at 10k Services) while queries wait
                gc.collect()
                gc.freeze()
            self.control.send((seq, "ok"))
        elif verb == "clients":  # pods came or went: (addresses added, addresses gone)
            added, gone = arg
            self.allowed.discard(gone)
            self.allowed.add(added)
            self.recurse.clear()
            self.udp_clients.clear()  # it maps a client to the answer cache of its old standing
            self.control.send((seq, "ok"))
        elif verb == "stats":
            self.control.send((seq, self.stats()))
        elif verb == "stop":
            self.drain()

    def stats(self) -> dict[str, Any]:
        return {**self.counts.snapshot(), **self.forward_counts.snapshot(),
                "tcp_connections": len(self.conns), "forwards_pending": self.forwards}  # fmt: skip

    # -- answering
    def may_recurse(self, client: str) -> bool:
        """Whether ``client`` gets forwarded answers."""
        ra = self.recurse.get(client)
        if ra is None:
            if len(self.recurse) >= CACHE_ENTRIES:
                self.recurse.clear()
            ra = self.recurse[client] = self.forwarder is not None and client in self.allowed
        return ra

    def handle(self, data: bytes, client: str, udp: bool, ra: bool, reply: Reply) -> None:
        start = time.perf_counter()
        # the answer cache: the same query bytes (ID aside) get the same answer from one zone
        cache = (self.udp_cache if udp else self.tcp_cache)[ra]
        key = data[2:]
        hit = cache.get(key)
        if hit is not None:
            reply(data[:2] + hit[0])
            self.counts.cache_hits += 1
            self.counts.count(hit[1], time.perf_counter() - start)
            return
        self.counts.cache_misses += 1
        slot = qtype_slot(data)
        k = type_key(udp, slot)
        self.turn += 1
        out, rcode, cacheable = answer_cacheable(self.zone, data, udp=udp, ra=ra, turn=self.turn)
        if out is FORWARD:
            self.forward(data, client, udp, reply, start, k)
            return
        if cacheable == CHASE and self.pool is not None and self.forwards < MAX_FORWARDS:
            answer = out
            self.submit(lambda: self.chase(answer), reply, start, k)
            return
        if isinstance(out, bytes):
            reply(out)
            i = index(k, rcode or 0)
            self.counts.count(i, time.perf_counter() - start)
            if cacheable:
                if len(cache) >= self.cache_entries:
                    cache.clear()  # garbage queries must not grow it without bound
                cache[key] = (out[2:], i, slot)

    def forward(self, data: bytes, client: str, udp: bool, reply: Reply, start: float, k: int) -> None:
        q = parse_query(bytes(data))
        forwarder = self.forwarder
        if forwarder is None or client not in self.allowed:
            reply(response(q, REFUSED, aa=False))
            self.count(k, REFUSED, start)
            return
        if self.forwards >= MAX_FORWARDS:  # the upstreams are slow or gone: fail fast, memory bounded
            reply(response(q, SERVFAIL, aa=False, ra=True))
            self.count(k, SERVFAIL, start)
            return

        queued = time.monotonic()

        def job() -> bytes:
            if time.monotonic() - queued > FORWARD_PATIENCE:  # its client gave up: drain the backlog fast
                return response(q, SERVFAIL, aa=False, ra=True)
            out = forwarder.resolve(bytes(data), q)
            if out is None:
                return response(q, SERVFAIL, aa=False, ra=True)
            if udp and len(out) > q.udp_limit():  # too large for this client: TC=1, retry over TCP
                return truncated(q, out[3] & 0xF, aa=False, ra=True)
            return out

        self.submit(job, reply, start, k)

    def submit(self, job: Callable[[], bytes], reply: Reply, start: float, k: int) -> None:
        """Run ``job`` on the pool; its answer goes back to the loop, which sends it and counts it
        under (protocol, type) ``k``."""
        assert self.pool is not None
        self.forwards += 1

        def run() -> None:
            try:
                out = job()
            except Exception:  # noqa: BLE001 - logged; the client gets nothing, as from a lost packet
                log.exception("dns: a forwarded query failed")
                out = b""
            self.done.append((reply, out, start, k))
            try:
                self.wake_w.send(b"x")
            except BlockingIOError:
                pass  # the loop has a wake-up pending already

        self.pool.submit(run)

    def on_done(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self.done:
            reply, out, start, k = self.done.popleft()
            self.forwards -= 1
            if out:
                reply(out)
            self.count(k, out[3] & 0xF if out else NONE, start)

    def chase(self, answer: bytes) -> bytes:
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
        return answer

    def count(self, k: int, rcode: int, start: float) -> None:
        """One request of (protocol, type) ``k`` answered ``rcode`` (NONE: not answered)."""
        self.counts.count(k * RCODES + rcode if rcode == NONE else index(k, rcode), time.perf_counter() - start)

    def on_udp(self, batch: Batch) -> None:
        """Answer the queued datagrams in batches. The fast path, a query this worker has answered
        from the same zone before, copies the cached answer over the query; anything else goes to
        :meth:`udp_slow`, whose answer goes over its query too when it has one at once; the answers
        on either side of one it has not (forwarded, dropped) are sent as two runs."""
        clients, counts = self.udp_clients, self.counts
        responses, tally = counts.responses, counts.tally
        nocache: dict[bytes, tuple[bytes, int]] = {}
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
                    slow += 1
                    if not self.udp_slow(batch, i):  # sent on its own, or not (yet): not in the run
                        if run < i:
                            batch.send(run, i)
                        run = i + 1
                    continue
                answer = hit[0]
                buf[q + 2 : q + 2 + len(answer)] = answer  # the ID is already there
                out_len[answer_length] = len(answer) + 2
                responses[hit[1]] += 1
                tally[hit[2]] += 1
            if run < k:
                batch.send(run, k)
            if slow < k:  # (udp_slow counted its own): every answer of the batch took its whole time
                counts.cache_hits += k - slow
                counts.observe_tally(time.perf_counter() - start)
            if k < BATCH:
                return  # the queue is empty

    def udp_slow(self, batch: Batch, i: int) -> bool:
        """Datagram ``i`` of the batch, answered with :meth:`handle`. True when the answer was written
        over the query, to leave with the batch's ``sendmmsg`` (a miss then costs no system call of
        its own: at 100k names most queries miss); an answer that comes later (forwarded upstream)
        or is larger than the slot is sent alone."""
        data = batch.datagram(i)
        addr = batch.client(i)
        sock = batch.sock
        inline = True  # while handle() runs: the slot is still this datagram's
        placed = False

        def reply(out: bytes, addr: tuple = addr) -> None:
            nonlocal placed
            if inline and not placed and len(out) <= QUERY:
                batch.place(i, out)
                placed = True
                return
            try:
                sock.sendto(out, addr)
            except OSError as exc:
                log.debug("dns: cannot answer %s: %s", addr, exc)

        if batch.truncated(i):  # longer than any sane query: FORMERR, from its header
            err = error_from_header(data, FORMERR)
            if err:
                reply(err)
                self.count(type_key(True, OTHER), FORMERR, time.perf_counter())
            return placed
        ra = self.may_recurse(addr[0])
        if len(self.udp_clients) >= CACHE_ENTRIES:
            self.udp_clients.clear()
        self.udp_clients[batch.address(i)] = self.udp_cache[ra]
        try:
            self.handle(data, addr[0], True, ra, reply)
        except Exception:  # noqa: BLE001 - one bad packet must not stop the server; it is logged
            log.exception("dns: failed to answer a query from %s", addr[0])
            err = error_from_header(data, SERVFAIL)
            if err and not placed:
                reply(err)
        inline = False  # a forwarded answer comes after the batch was sent and its slots reused
        return placed

    def on_accept(self, listener: socket.socket) -> None:
        """Take up to TCP_ACCEPTS waiting connections: a backlog left full (clients reconnecting as
        fast as they can) would drop a newcomer's SYN, and its retry comes only a second later."""
        for _ in range(TCP_ACCEPTS):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            peer = addr[0]
            if self.per_client[peer] >= TCP_PER_CLIENT:
                sock.close()  # one address must not hold every slot
                continue
            if len(self.conns) >= TCP_MAX_CONNECTIONS:
                idle = [c for c in self.conns.values() if not c.outbuf]
                if not idle:
                    sock.close()  # every slot is busy answering: the client retries later
                    continue
                self.close(min(idle, key=lambda c: c.last))  # the oldest idle connection makes room
            sock.setblocking(False)
            conn = _Conn(sock, peer)
            self.conns[sock.fileno()] = conn
            self.per_client[peer] += 1
            self.sel.register(sock, selectors.EVENT_READ, ("tcp", conn))

    def on_tcp(self, conn: _Conn) -> None:
        sock = conn.sock
        try:
            chunk = sock.recv(TCP_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close(conn)
            return
        conn.inbuf += chunk
        while len(conn.inbuf) >= 2 and conn.sock.fileno() in self.conns:
            size = struct.unpack_from("!H", conn.inbuf)[0]
            if len(conn.inbuf) < 2 + size:
                break
            data = bytes(conn.inbuf[2 : 2 + size])
            del conn.inbuf[: 2 + size]
            conn.last = time.monotonic()  # a whole query: a byte at a time does not keep a slot

            def reply(out: bytes, c: _Conn = conn) -> None:
                self.send(c, struct.pack("!H", len(out)) + out)

            try:
                self.handle(data, conn.peer, False, self.may_recurse(conn.peer), reply)
            except Exception:  # noqa: BLE001 - as for UDP: logged, answered SERVFAIL, server goes on
                log.exception("dns: failed to answer a TCP query from %s", conn.peer)
                err = error_from_header(data, SERVFAIL)
                if err:
                    reply(err)

    def send(self, conn: _Conn, frame: bytes) -> None:
        """Queue an answer on a TCP connection and write what the socket takes, never waiting: a
        client that does not read costs only its own connection, dropped when its queue is full."""
        if self.conns.get(conn.sock.fileno()) is not conn:
            return  # closed while its answer was being forwarded
        conn.outbuf += frame
        if len(conn.outbuf) > TCP_OUTPUT_MAX:
            log.info("dns: dropping a TCP connection from %s that does not read its answers", conn.peer)
            self.close(conn)
            return
        self.flush(conn)

    def flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(conn)
            return
        if sent:
            del conn.outbuf[:sent]
            conn.last = time.monotonic()
        # while answers wait, read no more queries from this client (its own backpressure)
        events = selectors.EVENT_WRITE if conn.outbuf else selectors.EVENT_READ
        if self.sel.get_key(conn.sock).events != events:
            self.sel.modify(conn.sock, events, ("tcp", conn))

    def take(self, zone: Zone) -> None:
        """Answer from ``zone`` from now on (one assignment: every answer after it is the new zone's)."""
        self.zone = zone
        for cache in (*self.udp_cache, *self.tcp_cache):
            cache.clear()
        self.cache_entries = max(CACHE_ENTRIES, len(zone.entries))

    def close(self, conn: _Conn) -> None:
        if self.conns.pop(conn.sock.fileno(), None) is None:
            return
        self.per_client[conn.peer] -= 1
        if self.per_client[conn.peer] <= 0:
            del self.per_client[conn.peer]
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def expire(self, now: float) -> None:
        idle = idle_timeout(len(self.conns))
        for conn in [c for c in self.conns.values() if now - c.last > idle]:
            self.close(conn)


def worker_main(settings: Settings, control: Connection, sockets: list[tuple[socket.socket, socket.socket]],
                index: int, zone: Zone | None = None) -> None:  # fmt: skip
    """The worker process's entry point: answer on ``sockets`` (from ``zone`` if given, so that the
    queries waiting in them get answers, not SERVFAIL) until told to stop or orphaned."""
    logs.setup(logging.INFO, fmt=f"%(levelname)s svcdns.dns[{index}]: %(message)s")  # the journal's priorities too
    # A worker ends when its agent says so, or when the agent is gone (its pipe closes). A Ctrl-C in
    # a terminal or a SIGTERM to the process group reaches the workers too: dying at once, they were
    # "replaced" with an ERROR while the agent itself was stopping, and stopped answering before it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = Worker(settings, control, sockets)
    if zone is not None:
        worker.take(zone)
    gc.collect()
    gc.freeze()  # the imports and the zone it starts from (see on_control)
    worker.register()
    control.send((0, "ready"))
    worker.run()


__all__ = ["Settings", "Worker", "worker_main"]
