"""What the DNS workers count, by CoreDNS's names and labels, and how the supervisor sums it.

Per worker: requests by protocol and query type, responses by rcode, request durations by query
type, forwarded requests, responses and durations by upstream, and answer-cache hits and misses.
The hot path (a UDP answer copied from the worker's cache) pays two list increments per query: the
cache entry carries its precomputed counter index, and the batch's duration is added per type once
per batch. :meth:`Counts.snapshot` turns the lists into the plain dicts the supervisor sums
(:func:`add`) and ``svcdns.status`` renders.

Query types: CoreDNS's monitored ones (``plugin/metrics/vars/monitor.go``); any other is ``other``.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from .wire import RCODE_NAMES

DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PROTOS = ("udp", "tcp")
_MONITORED = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
              43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 65: "HTTPS", 251: "IXFR",
              252: "AXFR", 255: "ANY"}  # fmt: skip
TYPES = (*_MONITORED.values(), "other")
OTHER = len(TYPES) - 1
_SLOT = {qtype: i for i, qtype in enumerate(_MONITORED)}
RCODES = 32  # counter slots per (protocol, type): rcodes 0-15 and the extended ones svcdns sends (BADVERS)
NONE = RCODES - 1  # the slot of a request that got no answer (every upstream failed): no rcode is named
_NB = len(DURATION_BUCKETS) + 1  # the last one is +Inf


def qtype_slot(data: bytes | bytearray | memoryview) -> int:
    """The query type's slot in TYPES, read past the question's name (``other`` if malformed)."""
    i, end = 12, len(data)
    while i < end:
        n = data[i]
        if n == 0:
            if i + 3 > end:
                return OTHER
            return _SLOT.get((data[i + 1] << 8) | data[i + 2], OTHER)
        if n & 0xC0:  # a pointer in a question: nothing svcdns answers from the zone
            return OTHER
        i += n + 1
    return OTHER


def key(udp: bool, slot: int) -> int:
    """The (protocol, type) pair's number; :func:`index` gives its counter for one rcode."""
    return (0 if udp else 1) * len(TYPES) + slot


def index(k: int, rcode: int) -> int:
    """The counter of (protocol, type) ``k`` answered ``rcode``: what an answer-cache entry keeps."""
    return k * RCODES + min(rcode, NONE - 1)


def _bucket(elapsed: float) -> int:
    for b, bound in enumerate(DURATION_BUCKETS):
        if elapsed <= bound:
            return b
    return _NB - 1


class Counts:
    """One worker's counters; only its loop thread writes them (forwarding threads use Forwards)."""

    def __init__(self) -> None:
        self.responses = [0] * (len(PROTOS) * len(TYPES) * RCODES)  # by key(proto, type) * RCODES + rcode
        self.tally = [0] * len(TYPES)  # the current UDP batch's cache answers by type (then observed)
        self.buckets = [0] * (len(TYPES) * _NB)  # durations by type * _NB + bucket
        self.sums = [0.0] * len(TYPES)
        self.cache_hits = 0
        self.cache_misses = 0

    def count(self, i: int, elapsed: float) -> None:
        """One request, counter :func:`index` ``i`` (or ``k * RCODES + NONE``), answered in ``elapsed`` seconds."""
        self.responses[i] += 1
        slot = (i // RCODES) % len(TYPES)
        self.buckets[slot * _NB + _bucket(elapsed)] += 1
        self.sums[slot] += elapsed

    def observe_tally(self, elapsed: float) -> None:
        """The batch's cache answers, counted in ``tally``, each took the batch's ``elapsed``."""
        tally, b = self.tally, _bucket(elapsed)
        for slot, n in enumerate(tally):
            if n:
                self.buckets[slot * _NB + b] += n
                self.sums[slot] += elapsed * n
                tally[slot] = 0

    def snapshot(self) -> dict[str, Any]:
        """Plain dicts (pickled to the supervisor): keys are names, never indexes."""
        requests: Counter = Counter()
        rcodes: Counter = Counter()
        for i, n in enumerate(self.responses):
            if n:
                k, rcode = divmod(i, RCODES)
                proto, slot = divmod(k, len(TYPES))
                requests[(PROTOS[proto], TYPES[slot])] += n
                if rcode != NONE:
                    rcodes[RCODE_NAMES.get(rcode, str(rcode))] += n
        buckets = {(TYPES[i // _NB], _bound(i % _NB)): n for i, n in enumerate(self.buckets) if n}
        sums = {TYPES[slot]: s for slot, s in enumerate(self.sums) if s}
        return {"requests": dict(requests), "queries": dict(rcodes), "duration_buckets": buckets,
                "duration_sums": sums, "duration_sum": sum(sums.values()), "duration_count": sum(requests.values()),
                "cache_hits": self.cache_hits, "cache_misses": self.cache_misses}  # fmt: skip


def _bound(b: int) -> float | str:
    return DURATION_BUCKETS[b] if b < len(DURATION_BUCKETS) else "+Inf"


class Forwards:
    """Forwarded queries by upstream (``to``: ``host:port``), written by the forwarding threads, and
    the forwarder's cache; kept by the worker across reloads (a new Forwarder shares them)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # to
        self.responses: Counter = Counter()  # (to, rcode name)
        self.buckets: Counter = Counter()  # (to, bound)
        self.sums: dict[str, float] = {}  # to
        self.cache_hits = 0
        self.cache_misses = 0

    def sent(self, to: str) -> None:
        with self.lock:
            self.requests[to] += 1

    def answered(self, to: str, rcode: int, elapsed: float) -> None:
        with self.lock:
            self.responses[(to, RCODE_NAMES.get(rcode, str(rcode)))] += 1
            self.buckets[(to, _bound(_bucket(elapsed)))] += 1
            self.sums[to] = self.sums.get(to, 0.0) + elapsed

    def cached(self, hit: bool) -> None:
        with self.lock:
            if hit:
                self.cache_hits += 1
            else:
                self.cache_misses += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"forward_requests": dict(self.requests), "forward_responses": dict(self.responses),
                    "forward_buckets": dict(self.buckets), "forward_sums": dict(self.sums),
                    "forward_cache_hits": self.cache_hits, "forward_cache_misses": self.cache_misses}  # fmt: skip


SUMMED = ("requests", "queries", "duration_buckets", "duration_sums", "duration_sum", "duration_count",
          "cache_hits", "cache_misses", "forward_requests", "forward_responses", "forward_buckets",
          "forward_sums", "forward_cache_hits", "forward_cache_misses")  # fmt: skip


def zero() -> dict[str, Any]:
    return {}


def add(total: dict[str, Any], s: dict[str, Any]) -> None:
    """Add one worker's snapshot ``s`` into ``total`` (dicts of counts are summed by key)."""
    for name in SUMMED:
        value = s.get(name)
        if isinstance(value, dict):
            total.setdefault(name, Counter()).update(value)
        elif isinstance(value, (int, float)):
            total[name] = total.get(name, 0) + value


__all__ = ["DURATION_BUCKETS", "NONE", "OTHER", "RCODES", "TYPES", "Counts", "Forwards", "add", "index", "key",
           "qtype_slot", "zero"]
