"""Queries outside the cluster zone: forwarded to upstream resolvers, for allowed clients only.

svcdns must never be an open resolver: only clients inside the allowed networks (default: loopback,
and the pod and service networks the agent is configured with) get forwarded answers; everyone
else gets REFUSED. Answers are cached for their TTL (at most 5 minutes; negative answers for the
SOA minimum), keyed by the lower-cased question.

Upstreams are asked in their configured order, each with its own timeout; one that does not answer
is skipped for HOLD_DOWN seconds (asked again only when every other one failed too), so a dead first
resolver costs one timeout, not one per query. The worker bounds the forwards outstanding
(``MAX_FORWARDS`` in :mod:`.worker`: SERVFAIL beyond it), so memory stays bounded whatever the
upstreams do.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from ..addr import format_hostport
from .stats import Forwards
from .wire import Query

log = logging.getLogger(__name__)

DEFAULT_ALLOWED = ("127.0.0.0/8", "::1/128")
MAX_CACHE_TTL = 300
CACHE_ENTRIES = 10_000
HOLD_DOWN = 30.0  # seconds an upstream that did not answer is skipped


def default_upstreams(
    own: Sequence[tuple[str, int]] = (), resolv_conf: str = "/etc/resolv.conf"
) -> list[tuple[str, int]]:
    """The host's resolvers from resolv.conf, skipping our own listen addresses (no loops)."""
    ours = {(h, p) for h, p in own}
    found = []
    try:
        with open(resolv_conf) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    addr = parts[1].split("%")[0]
                    if (addr, 53) not in ours:
                        found.append((addr, 53))
    except OSError as err:
        log.warning("dns: cannot read %s (%s); no upstream resolvers", resolv_conf, err.strerror)
    return found


class Allowed:
    """The clients that get forwarded answers: the allowed networks, and single addresses (the
    registry's pods, :meth:`add` and :meth:`discard` as they come and go)."""

    def __init__(self, networks: list[str] | tuple[str, ...] = DEFAULT_ALLOWED, addresses=()) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self.add(addresses)

    def add(self, addresses) -> None:
        for a in addresses:
            try:
                self.addresses.add(ipaddress.ip_address(a))
            except ValueError:
                log.warning("dns: %r is not an IP address; not allowed to recurse", str(a)[:60])

    def discard(self, addresses) -> None:
        for a in addresses:
            try:
                self.addresses.discard(ipaddress.ip_address(a))
            except ValueError:
                pass

    def __contains__(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip in self.addresses or any(ip in n for n in self.networks if n.version == ip.version)


class Forwarder:
    """Blocking forwarding (called from worker threads): UDP first, TCP when the answer is truncated."""

    def __init__(self, upstreams: list[tuple[str, int]], timeout: float = 2.0, counts: Forwards | None = None,
                 hold_down: float = HOLD_DOWN) -> None:  # fmt: skip
        self.upstreams = list(upstreams)
        self.timeout = timeout  # per upstream asked
        self.hold_down = hold_down
        self.counts = counts if counts is not None else Forwards()  # by upstream, as CoreDNS's forward plugin
        self._names = {(h, p): format_hostport(h, p) for h, p in self.upstreams}
        self._cache: OrderedDict[tuple, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self._down: dict[tuple[str, int], float] = {}  # upstream -> until when it is skipped

    def order(self, now: float) -> list[tuple[str, int]]:
        """The upstreams to ask, in turn: those not held down in their order, then those held down
        (the one held longest first), as a last resort."""
        with self._lock:
            down = {u: t for u, t in self._down.items() if t > now}
            self._down = down
        return [u for u in self.upstreams if u not in down] + sorted(down, key=down.__getitem__)

    def _failed(self, upstream: tuple[str, int], why: str) -> None:
        with self._lock:
            fresh = upstream not in self._down
            self._down[upstream] = time.monotonic() + self.hold_down
        if fresh:
            log.warning("dns: upstream %s:%d %s; skipping it for %.0f s", *upstream, why, self.hold_down)

    def _answered(self, upstream: tuple[str, int]) -> None:
        if upstream in self._down:
            with self._lock:
                if self._down.pop(upstream, None) is not None:
                    log.info("dns: upstream %s:%d answers again", *upstream)

    def resolve(self, data: bytes, q: Query) -> bytes | None:
        """The upstream's answer to ``data`` with the client's ID, or None if no upstream answered."""
        key = (q.key, q.qtype, q.qclass, q.do, q.edns)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            fresh = bool(hit and hit[0] > now)
            if hit and fresh:
                self._cache.move_to_end(key)
        self.counts.cached(fresh)
        if hit and fresh:
            return struct.pack("!H", q.id) + _with_question(hit[1], q)
        ident = random.randrange(1 << 16)
        query = struct.pack("!H", ident) + data[2:]
        for host, port in self.order(now):
            to = self._names[(host, port)]
            self.counts.sent(to)
            start = time.perf_counter()
            try:
                answer = self._udp(host, port, query, ident)
                if answer is not None and answer[2] & 0x02:  # truncated: ask again over TCP
                    answer = self._tcp(host, port, query)
            except OSError as err:
                self._failed((host, port), f"failed ({err.strerror or err})")
                continue
            if answer is None:
                self._failed((host, port), f"did not answer within {self.timeout:g} s")
                continue
            self.counts.answered(to, answer[3] & 0xF, time.perf_counter() - start)
            self._answered((host, port))
            ttl = _cache_ttl(answer)
            if ttl > 0:
                with self._lock:
                    self._cache[key] = (now + ttl, answer[2:])
                    while len(self._cache) > CACHE_ENTRIES:
                        self._cache.popitem(last=False)
            return struct.pack("!H", q.id) + answer[2:]
        return None

    def _udp(self, host: str, port: int, query: bytes, ident: int) -> bytes | None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.settimeout(self.timeout)
            s.connect((host, port))
            s.send(query)
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                try:
                    answer = s.recv(65535)
                except TimeoutError:
                    return None
                if len(answer) >= 12 and struct.unpack_from("!H", answer)[0] == ident:
                    return answer
        return None

    def _tcp(self, host: str, port: int, query: bytes) -> bytes | None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect((host, port))
            s.sendall(struct.pack("!H", len(query)) + query)
            head = _recv_exact(s, 2)
            return _recv_exact(s, struct.unpack("!H", head)[0]) if head else None


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _with_question(cached_tail: bytes, q: Query) -> bytes:
    """A cached answer (without its ID) with the client's question, for the case echo."""
    return cached_tail[:10] + q.question + cached_tail[10 + len(q.question) :]


def _cache_ttl(answer: bytes) -> int:
    """How long an upstream answer may be cached: its smallest TTL (the SOA's minimum for negative
    answers), at most MAX_CACHE_TTL; 0 for failures."""
    from dnslib import QTYPE, DNSRecord

    try:
        msg = DNSRecord.parse(answer)
    except Exception:  # noqa: BLE001 - an upstream's garbage is not cached, whatever it is
        return 0
    if msg.header.rcode not in (0, 3):
        return 0
    if msg.rr:
        return min(MAX_CACHE_TTL, min(r.ttl for r in msg.rr))
    soa = [r for r in msg.auth if r.rtype == QTYPE.SOA]
    return min(MAX_CACHE_TTL, soa[0].ttl, soa[0].rdata.times[-1]) if soa else 0
