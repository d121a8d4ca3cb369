"""The zone planner: ServiceTable -> every name svcdns answers, precompiled to wire bytes.

Names, per the Kubernetes DNS specification (zone ``cluster.local`` by default):

- ``<svc>.<ns>.svc.<zone>`` A/AAAA: the VIPs; for a Headless Service the ready endpoints' addresses
  (rotated between answers); for an ExternalName Service a CNAME to the external name;
- ``<host>.<svc>.<ns>.svc.<zone>`` A/AAAA, Headless only: each ready endpoint, ``<host>`` being its
  hostname or its address with dashes (``10-0-1-5``);
- ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` SRV, named ports only: the Service name and port
  (ClusterIP), or one record per ready endpoint (Headless), their addresses in the additional section;
- PTR for every VIP and Headless endpoint address; SOA and NS at the apex; ``dns-version.<zone>`` TXT;
- ``ns.dns.<zone>`` A (or AAAA): the cluster DNS address (10.96.0.10 unless configured), also the
  NS answer's glue.

A Headless Service without a ready endpoint has no name at all (NXDOMAIN, spec 2.4.1).

Every answer is compiled once per table change to the bytes that follow the question in a response:
the answer path (:mod:`.answer`) only copies them behind the client's header and question. Names
that exist without records (``svc.<zone>``, ``<ns>.svc.<zone>``, ...) answer NODATA, not NXDOMAIN.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RR, SRV, TXT, A, DNSHeader, DNSQuestion, DNSRecord

from ..model import CLUSTER_IP, EXTERNAL_NAME, HEADLESS, IPAddress, Service
from ..table import ServiceTable, changed_keys
from .wire import TYPE_A, TYPE_AAAA, TYPE_NS, TYPE_PTR, TYPE_SOA, TYPE_SRV, TYPE_TXT, name_to_wire, rr

DNS_SCHEMA_VERSION = "1.1.0"  # the Kubernetes DNS specification version this follows
MAX_ROTATIONS = 8
DEFAULT_CLUSTER_DNS = "10.96.0.10"  # the NS name's address: the 10th of 10.96.0.0/12, as kubeadm's kube-dns

# the sections after the question, their counts (an, ns, ar), and where the additional section starts
# in them (so that an answer too large for a client's UDP size can go without it, RFC 2181 section 9)
Body = tuple[bytes, tuple[int, int, int], int]
QNAME = b"\xc0\x0c"  # a pointer to the question's name


@dataclass(frozen=True)
class Zone:
    origin: str  # "cluster.local."
    origin_wire: bytes
    ttl: int
    serial: int
    soa: bytes  # the SOA record, uncompressed, for negative answers
    entries: dict[tuple[bytes, int], tuple[Body, ...]] = field(default_factory=dict)  # (name, qtype) -> variants
    cnames: dict[bytes, Body] = field(default_factory=dict)  # name -> its CNAME answer (any qtype)
    names: frozenset[bytes] = frozenset()  # every name that exists (with or without records)
    ready: bool = True  # False until the first table arrives: in-zone names answer SERVFAIL

    def in_zone(self, key: bytes, labels: tuple[int, ...]) -> bool:
        """Whether a (lower-cased, wire) name is the origin or below it."""
        tail = len(self.origin_wire)
        return (
            any(len(key) - off == tail and key[off:] == self.origin_wire for off in labels) or key == self.origin_wire
        )


def normalise_origin(zone: str) -> str:
    zone = zone.strip().lower().rstrip(".")
    if not zone or any(not label or len(label) > 63 for label in zone.split(".")):
        raise ValueError(f"cluster zone {zone!r}: expected a DNS name such as cluster.local")
    return zone + "."


def soa_record(origin: str, ttl: int, serial: int, owner: bytes | None = None) -> bytes:
    """The zone's SOA record, owned by the origin written out (for the authority section of any
    answer), or by ``owner`` (the answer to the apex's SOA query owns it by a pointer to the
    question, so that it echoes the client's case as every other answer does)."""
    rdata = name_to_wire(f"ns.dns.{origin}") + name_to_wire(f"hostmaster.{origin}")
    rdata += struct.pack("!IIIII", serial & 0xFFFFFFFF, 7200, 1800, 86400, ttl)
    return rr(name_to_wire(origin) if owner is None else owner, TYPE_SOA, ttl, rdata)


def empty_zone(zone: str = "cluster.local", ttl: int = 5) -> Zone:
    origin = normalise_origin(zone)
    return Zone(origin, name_to_wire(origin), ttl, 0, soa_record(origin, ttl, 0), ready=False)


def host_label(ep_address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An endpoint's name when it has no hostname: its address with dashes (10-0-1-5, fd00--1)."""
    return str(ep_address).replace(".", "-").replace(":", "-")


def reverse_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return ip.reverse_pointer + "."


class _Builder:
    def __init__(self, origin: str, ttl: int) -> None:
        self.origin = origin
        self.ttl = ttl
        self.records: dict[tuple[str, int], list[RR]] = {}
        self.additional: dict[tuple[str, int], list[RR]] = {}
        self.rotate: set[tuple[str, int]] = set()
        self.cnames: dict[str, RR] = {}
        self.names: set[str] = set()

    def exists(self, name: str) -> None:
        """Mark ``name`` and its ancestors down to the origin as existing (empty non-terminals)."""
        while name.endswith(self.origin) and name not in self.names:
            self.names.add(name)
            if name == self.origin:
                break
            name = name.split(".", 1)[1]

    def add(self, name: str, rtype: int, rdata, additional: Sequence[RR] = ()) -> None:
        self.records.setdefault((name, rtype), []).append(RR(name, rtype, rdata=rdata, ttl=self.ttl))
        if additional:
            self.additional.setdefault((name, rtype), []).extend(additional)
        self.exists(name)

    def address(self, name: str, ip) -> None:
        self.add(name, TYPE_A if ip.version == 4 else TYPE_AAAA, A(str(ip)) if ip.version == 4 else AAAA(str(ip)))

    def glue(self, name: str, ip) -> RR:
        rtype = TYPE_A if ip.version == 4 else TYPE_AAAA
        return RR(name, rtype, rdata=A(str(ip)) if ip.version == 4 else AAAA(str(ip)), ttl=self.ttl)

    def service(self, svc: Service) -> None:
        base = f"{svc.name}.{svc.namespace}.svc.{self.origin}"
        if svc.type == EXTERNAL_NAME:
            self.cnames[base] = RR(base, QTYPE.CNAME, rdata=CNAME(svc.external_name + "."), ttl=self.ttl)
            self.exists(base)
            return
        if svc.type == CLUSTER_IP:
            self.exists(base)
            for ip in svc.cluster_ips:
                self.address(base, ip)
                self.add(reverse_name(ip), TYPE_PTR, PTR(base))
            glue = [self.glue(base, ip) for ip in svc.cluster_ips]
            for port in svc.ports:
                if port.name:
                    self.add(f"_{port.name}._{port.protocol.lower()}.{base}", TYPE_SRV,
                             SRV(0, 100, port.port, base), glue)  # fmt: skip
            return
        # Headless: the ready endpoints themselves; without any, the name does not exist (spec 2.4.1)
        ready = svc.ready_endpoints()
        if not ready:
            self.exists(f"{svc.namespace}.svc.{self.origin}")
            return
        weight = max(1, 100 // max(1, len(ready)))
        for ep in ready:
            host = f"{ep.hostname or host_label(ep.address)}.{base}"
            self.address(base, ep.address)
            self.address(host, ep.address)
            self.add(reverse_name(ep.address), TYPE_PTR, PTR(host))
            for port in svc.ports:
                if port.name:
                    self.add(f"_{port.name}._{port.protocol.lower()}.{base}", TYPE_SRV,
                             SRV(0, weight, ep.target_port(port), host), [self.glue(host, ep.address)])  # fmt: skip
        for rtype in (TYPE_A, TYPE_AAAA, TYPE_SRV):
            self.rotate.add((base, rtype))
        for port in svc.ports:
            if port.name:
                self.rotate.add((f"_{port.name}._{port.protocol.lower()}.{base}", TYPE_SRV))


def _body(name: str, rtype: int, answers: list[RR], additional: Sequence[RR] = ()) -> Body:
    msg = DNSRecord(DNSHeader(id=0, qr=1, aa=1), q=DNSQuestion(name, rtype))
    for a in answers:
        msg.add_answer(a)
    start = 12 + len(name_to_wire(name)) + 4
    cut = len(msg.pack()) - start  # names compress only against what precedes them: a prefix stays valid
    for a in additional:
        msg.add_ar(a)
    return msg.pack()[start:], (len(answers), 0, len(additional)), cut


@dataclass(frozen=True)
class Fragment:
    """What one Service (or the apex) contributes to the zone, compiled."""

    entries: dict[tuple[bytes, int], tuple[Body, ...]]
    cnames: dict[bytes, Body]
    names: frozenset[bytes]


def _compile(b: _Builder) -> Fragment:
    entries: dict[tuple[bytes, int], tuple[Body, ...]] = {}
    for (name, rtype), records in b.records.items():
        answers = _dedupe(records)  # a set holds no duplicates (RFC 2181 section 5): one SRV per hostname
        extra = b.additional.get((name, rtype), [])
        if (name, rtype) in b.rotate and len(answers) > 1:
            n = min(len(answers), MAX_ROTATIONS)
            variants = tuple(_body(name, rtype, answers[i:] + answers[:i], _dedupe(extra)) for i in range(n))
        else:
            variants = (_body(name, rtype, answers, _dedupe(extra)),)
        entries[(name_to_wire(name), rtype)] = variants
    cnames = {name_to_wire(name): _body(name, QTYPE.CNAME, [rec]) for name, rec in b.cnames.items()}
    return Fragment(entries, cnames, frozenset(name_to_wire(n) for n in b.names if n.endswith(b.origin)))


def compile_service(svc: Service, origin: str, ttl: int) -> Fragment:
    b = _Builder(origin, ttl)
    b.service(svc)
    return _compile(b)


def apex_fragment(origin: str, ttl: int, cluster_dns: IPAddress) -> Fragment:
    """SOA aside (it changes with the serial): the NS record, its name's address (the cluster DNS
    address, which every pod reaches) as glue and as the name's own answer, and the schema TXT."""
    b = _Builder(origin, ttl)
    b.exists(origin)
    ns = f"ns.dns.{origin}"
    b.add(origin, TYPE_NS, NS(ns), [b.glue(ns, cluster_dns)])
    b.address(ns, cluster_dns)
    b.add(f"dns-version.{origin}", TYPE_TXT, TXT(DNS_SCHEMA_VERSION))
    return _compile(b)


@dataclass(frozen=True)
class Delta:
    """A change of the zone, small enough to send to every worker at each update."""

    put: dict[tuple[bytes, int], tuple[Body, ...]]
    drop: tuple[tuple[bytes, int], ...]
    cname_put: dict[bytes, Body]
    cname_drop: tuple[bytes, ...]
    names_add: frozenset[bytes]
    names_drop: frozenset[bytes]
    serial: int


def apply_delta(zone: Zone, d: Delta) -> Zone:
    """The zone after ``d`` (a new object: a worker swaps it in with one assignment)."""
    entries = dict(zone.entries)
    for key in d.drop:
        entries.pop(key, None)
    entries.update(d.put)
    soa = soa_record(zone.origin, zone.ttl, d.serial)
    apex_soa = soa_record(zone.origin, zone.ttl, d.serial, QNAME)
    entries[(zone.origin_wire, TYPE_SOA)] = ((apex_soa, (1, 0, 0), len(apex_soa)),)
    cnames = dict(zone.cnames)
    for name in d.cname_drop:
        cnames.pop(name, None)
    cnames.update(d.cname_put)
    names = (zone.names - d.names_drop) | d.names_add
    return Zone(zone.origin, zone.origin_wire, zone.ttl, d.serial, soa, entries, cnames, names)


class ZoneCompiler:
    """Keeps each Service's compiled fragment, so a table change recompiles the changed Services only
    and yields a Delta for the workers. (Two headless Services sharing an endpoint address share its
    PTR name: the last one compiled answers it.)"""

    def __init__(self, zone: str = "cluster.local", ttl: int = 5, cluster_dns: str = DEFAULT_CLUSTER_DNS) -> None:
        self.origin = normalise_origin(zone)
        self.ttl = ttl
        self.frags: dict[tuple[str, str], tuple[Service, Fragment]] = {}
        self.owner: dict[tuple[bytes, int], tuple[str, str]] = {}
        self.name_count: Counter = Counter()
        self.table: ServiceTable | None = None  # the last table compiled
        self.zone = empty_zone(zone, ttl)
        apex = apex_fragment(self.origin, ttl, ipaddress.ip_address(cluster_dns))
        self._add(("", ""), apex, {}, {})
        self.zone = Zone(self.origin, self.zone.origin_wire, ttl, 0, self.zone.soa, dict(apex.entries), {},
                         frozenset(apex.names), ready=False)  # fmt: skip

    def _add(self, key, frag: Fragment, put: dict, cname_put: dict) -> set[bytes]:
        added = set()
        for k, v in frag.entries.items():
            put[k] = v
            self.owner[k] = key
        cname_put.update(frag.cnames)
        for name in frag.names:
            self.name_count[name] += 1
            if self.name_count[name] == 1:
                added.add(name)
        return added

    def update(self, table: ServiceTable, serial: int | None = None) -> Delta:
        put: dict = {}
        drop: list = []
        cname_put: dict = {}
        cname_drop: list = []
        names_add: set[bytes] = set()
        names_drop: set[bytes] = set()
        current = table.services
        if self.table is None:
            keys: Iterable[tuple[str, str]] = list(current)
        else:
            keys = changed_keys(self.table, table)
        self.table = table
        for key in [k for k in keys if k not in current and k in self.frags]:
            self._remove(key, drop, cname_drop, names_drop)
        for key in keys:
            svc = current.get(key)
            if svc is None:
                continue
            old = self.frags.get(key)
            if old is not None and (old[0] is svc or old[0] == svc):
                continue
            if old is not None:
                self._remove(key, drop, cname_drop, names_drop)
            frag = compile_service(svc, self.origin, self.ttl)
            self.frags[key] = (svc, frag)
            names_add |= self._add(key, frag, put, cname_put)
        drop = [k for k in drop if k not in put]
        cname_drop = [k for k in cname_drop if k not in cname_put]
        delta = Delta(put, tuple(drop), cname_put, tuple(cname_drop), frozenset(names_add - names_drop),
                      frozenset(names_drop - names_add), int(time.time()) if serial is None else serial)  # fmt: skip
        self.zone = replace(apply_delta(self.zone, delta), ready=True)
        return delta

    def _remove(self, key, drop: list, cname_drop: list, names_drop: set[bytes]) -> None:
        _, frag = self.frags.pop(key)
        for k in frag.entries:
            if self.owner.get(k) == key:
                del self.owner[k]
                drop.append(k)
        cname_drop.extend(frag.cnames)
        for name in frag.names:
            self.name_count[name] -= 1
            if self.name_count[name] <= 0:
                del self.name_count[name]
                names_drop.add(name)


def compile_zone(
    table: ServiceTable,
    zone: str = "cluster.local",
    ttl: int = 5,
    serial: int | None = None,
    cluster_dns: str = DEFAULT_CLUSTER_DNS,
) -> Zone:
    """Every answer for ``table``, precompiled. Pure: the same table gives the same zone."""
    compiler = ZoneCompiler(zone, ttl, cluster_dns)
    compiler.update(table, serial)
    return compiler.zone


def _dedupe(records: list[RR]) -> list[RR]:
    seen, out = set(), []
    for r in records:
        key = (str(r.rname).lower(), r.rtype, str(r.rdata))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


__all__ = ["Zone", "compile_zone", "empty_zone", "normalise_origin", "HEADLESS"]
