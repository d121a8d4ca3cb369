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

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RR, SRV, TXT, A, DNSHeader, DNSLabel, DNSQuestion, DNSRecord
from immutables import Map

from ..model import CLUSTER_DNS_SERVICE, CLUSTER_IP, EXTERNAL_NAME, HEADLESS, IPAddress, Service
from ..table import ServiceTable, changed_keys
from .pack import pack_sections
from .wire import (
    CLASS_IN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_NS,
    TYPE_PTR,
    TYPE_SOA,
    TYPE_SRV,
    TYPE_TXT,
    name_to_wire,
    rr,
    skip_name,
)

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
    # persistent maps (HAMTs): a change makes a new version sharing all it did not touch, so that
    # an update costs what changed and not a copy of the zone (~10 ms at 10k Services, per worker)
    entries: Map[tuple[bytes, int], tuple[Body, ...]] = field(default_factory=Map)  # (name, qtype) -> variants
    cnames: Map[bytes, Body] = field(default_factory=Map)  # name -> its CNAME answer (any qtype)
    names: Map[bytes, bool] = field(default_factory=Map)  # every name that exists (with or without records)
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
        self.ptrs: dict[str, list[str]] = {}
        self.alias: tuple[str, str] | None = None

    def exists(self, name: str) -> None:
        """Mark ``name`` and its ancestors down to the origin as existing (empty non-terminals)."""
        while name.endswith(self.origin) and name not in self.names:
            self.names.add(name)
            if name == self.origin:
                break
            name = name.split(".", 1)[1]

    def add(self, name: str, rtype: int, rdata, additional: Sequence[RR] = ()) -> None:
        self.records.setdefault((name, rtype), []).append(RR(_label(name), rtype, rdata=rdata, ttl=self.ttl))
        if additional:
            self.additional.setdefault((name, rtype), []).extend(additional)
        self.exists(name)

    def address(self, name: str, ip) -> None:
        self.add(name, TYPE_A if ip.version == 4 else TYPE_AAAA, _address(ip))

    def ptr(self, ip, name: str) -> None:
        self.ptrs.setdefault(reverse_name(ip), []).append(name)

    def glue(self, name: str, ip) -> RR:
        rtype = TYPE_A if ip.version == 4 else TYPE_AAAA
        return RR(_label(name), rtype, rdata=_address(ip), ttl=self.ttl)

    def service(self, svc: Service) -> None:
        base = f"{svc.name}.{svc.namespace}.svc.{self.origin}"
        if svc.type == EXTERNAL_NAME:
            target = svc.external_name + "."
            self.cnames[base] = RR(base, QTYPE.CNAME, rdata=CNAME(target), ttl=self.ttl)
            self.exists(base)
            if target == self.origin or target.endswith("." + self.origin):
                self.alias = (base, target)
            return
        if svc.type == CLUSTER_IP:
            self.exists(base)
            for ip in svc.cluster_ips:
                self.address(base, ip)
                self.ptr(ip, base)
            glue = [self.glue(base, ip) for ip in svc.cluster_ips]
            for port in svc.ports:
                if port.name:
                    self.add(f"_{port.name}._{port.protocol.lower()}.{base}", TYPE_SRV,
                             SRV(0, 100, port.port, _label(base)), glue)  # fmt: skip
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
            self.ptr(ep.address, host)
            for port in svc.ports:
                if port.name:
                    self.add(f"_{port.name}._{port.protocol.lower()}.{base}", TYPE_SRV,
                             SRV(0, weight, ep.target_port(port), _label(host)), [self.glue(host, ep.address)])  # fmt: skip
        for rtype in (TYPE_A, TYPE_AAAA, TYPE_SRV):
            self.rotate.add((base, rtype))
        for port in svc.ports:
            if port.name:
                self.rotate.add((f"_{port.name}._{port.protocol.lower()}.{base}", TYPE_SRV))


def _body(name: str, rtype: int, answers: list[RR], additional: Sequence[RR] = ()) -> Body:
    fast = pack_sections(_label(name).label, answers, additional)
    if fast is not None:
        return fast
    msg = DNSRecord(DNSHeader(id=0, qr=1, aa=1), q=DNSQuestion(name, rtype))
    for a in answers:
        msg.add_answer(a)
    for a in additional:
        msg.add_ar(a)
    packed = msg.pack()
    start = 12 + len(name_to_wire(name)) + 4
    # where the additional section starts: names compress only against what precedes them, so the
    # answer records alone are a valid prefix
    cut = len(packed)
    if additional:
        cut = start
        for _ in answers:
            cut = skip_name(packed, cut)
            cut += 10 + struct.unpack_from("!H", packed, cut + 8)[0]
    return packed[start:], (len(answers), 0, len(additional)), cut - start


@dataclass(frozen=True)
class Fragment:
    """What one Service (or the apex) contributes to the zone, compiled."""

    entries: dict[tuple[bytes, int], tuple[Body, ...]]
    cnames: dict[bytes, Body]
    names: frozenset[bytes]
    ptrs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # reverse name -> names (merged across Services)
    alias: tuple[str, str] | None = None  # an ExternalName's (name, target) when the target is in the zone


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
    names = frozenset(name_to_wire(n) for n in b.names if n.endswith(b.origin))
    return Fragment(entries, cnames, names, {rev: tuple(t) for rev, t in b.ptrs.items()}, b.alias)


def compile_service(svc: Service, origin: str, ttl: int) -> Fragment:
    b = _Builder(origin, ttl)
    b.service(svc)
    return _compile(b)


def apex_fragment(origin: str, ttl: int, cluster_dns: IPAddress) -> Fragment:
    """SOA aside (it changes with the serial): the NS record, its name's address (the cluster DNS
    address, which every pod reaches) as glue and as the name's own answer, the schema TXT, and
    the cluster DNS Service's own names (``kube-dns.kube-system.svc``, as Kubernetes names it; a
    Service of that name in the registry takes them over)."""
    b = _Builder(origin, ttl)
    b.exists(origin)
    ns = f"ns.dns.{origin}"
    b.add(origin, TYPE_NS, NS(ns), [b.glue(ns, cluster_dns)])
    b.address(ns, cluster_dns)
    b.add(f"dns-version.{origin}", TYPE_TXT, TXT(DNS_SCHEMA_VERSION))
    b.service(CLUSTER_DNS_SERVICE.with_cluster_ips([cluster_dns]))
    b.ptrs.clear()  # reverse names are the Services' PTR sets, which ZoneCompiler assembles across them
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
    """The zone after ``d`` (a new object: a worker swaps it in with one assignment); ``zone`` stays
    as it was, and the two share everything ``d`` did not touch."""
    with zone.entries.mutate() as entries:
        for key in d.drop:
            entries.pop(key, None)
        for key, value in d.put.items():
            entries[key] = value
        apex_soa = soa_record(zone.origin, zone.ttl, d.serial, QNAME)
        entries[(zone.origin_wire, TYPE_SOA)] = ((apex_soa, (1, 0, 0), len(apex_soa)),)
        new_entries = entries.finish()
    with zone.cnames.mutate() as cnames:
        for name in d.cname_drop:
            cnames.pop(name, None)
        for name, body in d.cname_put.items():
            cnames[name] = body
        new_cnames = cnames.finish()
    with zone.names.mutate() as names:
        for name in d.names_drop:
            names.pop(name, None)
        for name in d.names_add:
            names[name] = True
        new_names = names.finish()
    soa = soa_record(zone.origin, zone.ttl, d.serial)
    return Zone(zone.origin, zone.origin_wire, zone.ttl, d.serial, soa, new_entries, new_cnames, new_names)


class _Changes:
    """What one update changes, gathered while the Services are compiled."""

    def __init__(self) -> None:
        self.put: dict[tuple[bytes, int], tuple[Body, ...]] = {}
        self.drop: list[tuple[bytes, int]] = []
        self.cname_put: dict[bytes, Body] = {}
        self.cname_drop: list[bytes] = []
        self.names_add: set[bytes] = set()
        self.names_drop: set[bytes] = set()
        self.reverse: set[str] = set()  # reverse names whose PTR set changed

    def delta(self, serial: int) -> Delta:
        return Delta(self.put, tuple(k for k in self.drop if k not in self.put), self.cname_put,
                     tuple(k for k in self.cname_drop if k not in self.cname_put),
                     frozenset(self.names_add - self.names_drop), frozenset(self.names_drop - self.names_add),
                     serial)  # fmt: skip


class ZoneCompiler:
    """Recompiles only the Services a table change touched, and yields a Delta for the workers. What
    a changed Service contributed before is compiled again from its old version (compiling is pure,
    and cheaper than keeping every Service's fragment: 14 MiB at 10k Services); an ExternalName that
    aliases a name in the zone keeps its fragment, since its answers embed another Service's. Two things span Services and are assembled here: a reverse
    name's PTR set (an address shared by endpoints of several Services names each of them, in
    order), and an ExternalName whose target is in the zone (its answer holds the target's records,
    compiled again whenever the target's change)."""

    def __init__(self, zone: str = "cluster.local", ttl: int = 5, cluster_dns: str = DEFAULT_CLUSTER_DNS) -> None:
        self.origin = normalise_origin(zone)
        self.ttl = ttl
        self.services: dict[tuple[str, str], Service] = {}  # what each Service's answers were compiled from
        self.kept: dict[tuple[str, str], Fragment] = {}  # the apex's and aliasing ExternalNames' fragments
        self.owner: dict[tuple[bytes, int], tuple[str, str]] = {}
        self.name_count: Counter = Counter()
        self.ptrs: dict[str, dict[tuple[str, str], tuple[str, ...]]] = {}  # reverse name -> Service -> names
        self.aliases: dict[tuple[str, str], tuple[str, str]] = {}  # ExternalName -> (its name, in-zone target)
        self.table: ServiceTable | None = None  # the last table compiled
        self.zone = empty_zone(zone, ttl)
        apex = apex_fragment(self.origin, ttl, ipaddress.ip_address(cluster_dns))
        self.kept[("", "")] = apex
        self._add(("", ""), apex, _Changes())
        self.zone = Zone(self.origin, self.zone.origin_wire, ttl, 0, self.zone.soa, Map(apex.entries), Map(),
                         Map(dict.fromkeys(apex.names, True)), ready=False)  # fmt: skip

    def update(self, table: ServiceTable, serial: int | None = None) -> Delta:
        ch = _Changes()
        current = table.services
        if self.table is None:
            keys: Iterable[tuple[str, str]] = list(current)
        else:
            keys = changed_keys(self.table, table)
        self.table = table
        for key in [k for k in keys if k not in current and k in self.services]:
            self._remove(key, ch)
        compiled = set()
        for key in keys:
            svc = current.get(key)
            if svc is None:
                continue
            old = self.services.get(key)
            if old is not None and (old is svc or old == svc):
                continue
            if old is not None:
                self._remove(key, ch)
            frag = compile_service(svc, self.origin, self.ttl)
            self.services[key] = svc
            if frag.alias is not None:
                self.kept[key] = frag
            self._add(key, frag, ch)
            compiled.add(key)
        for name in ch.reverse:
            self._ptr_set(name, ch)
        changed = {name for name, _ in ch.put} | {name for name, _ in ch.drop} | set(ch.cname_put) | set(ch.cname_drop)
        for key, (name, target) in self.aliases.items():
            if key in compiled or name_to_wire(target) in changed:
                self._alias(name, target, ch)
        delta = ch.delta(int(time.time()) if serial is None else serial)
        self.zone = replace(apply_delta(self.zone, delta), ready=True)
        return delta

    def _add(self, key: tuple[str, str], frag: Fragment, ch: _Changes) -> None:
        for k, v in frag.entries.items():
            ch.put[k] = v
            self.owner[k] = key
        ch.cname_put.update(frag.cnames)
        for name in frag.names:
            self.name_count[name] += 1
            if self.name_count[name] == 1:
                ch.names_add.add(name)
        for rev, targets in frag.ptrs.items():
            self.ptrs.setdefault(rev, {})[key] = targets
            ch.reverse.add(rev)
        if frag.alias is not None:
            self.aliases[key] = frag.alias

    def _remove(self, key: tuple[str, str], ch: _Changes) -> None:
        svc = self.services.pop(key)
        frag = self.kept.pop(key, None) or compile_service(svc, self.origin, self.ttl)
        for k in frag.entries:
            if self.owner.get(k) == key:
                del self.owner[k]
                ch.drop.append(k)
        ch.cname_drop.extend(frag.cnames)
        for name in frag.names:
            self.name_count[name] -= 1
            if self.name_count[name] <= 0:
                del self.name_count[name]
                ch.names_drop.add(name)
        for rev in frag.ptrs:
            owners = self.ptrs[rev]
            del owners[key]
            if not owners:
                del self.ptrs[rev]
            ch.reverse.add(rev)
        alias = self.aliases.pop(key, None)
        if alias is not None:
            ch.drop.extend((name_to_wire(alias[0]), rtype) for rtype in (TYPE_A, TYPE_AAAA))

    def _ptr_set(self, rev: str, ch: _Changes) -> None:
        """A reverse name's PTR set: every name of the address, from every Service, sorted (so that
        it is the same from run to run and from one worker to the next)."""
        key = (name_to_wire(rev), TYPE_PTR)
        targets = sorted({t for names in self.ptrs.get(rev, {}).values() for t in names})
        if not targets:
            ch.drop.append(key)
            return
        ch.put[key] = (_body(rev, TYPE_PTR, [RR(_label(rev), TYPE_PTR, rdata=PTR(_label(t)), ttl=self.ttl) for t in targets]),)

    def _alias(self, name: str, target: str, ch: _Changes) -> None:
        """An ExternalName whose target is in the zone answers A and AAAA with its CNAME and the
        target's records of that type from this zone (as CoreDNS does), never sending the target
        upstream. One level: a target that is itself an ExternalName gets the CNAME alone."""
        target_wire = name_to_wire(target)
        to_alias = target_wire in ch.cname_put or (target_wire in self.zone.cnames and target_wire not in ch.cname_drop)
        cname = RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=self.ttl)
        for rtype in (TYPE_A, TYPE_AAAA):
            key = (target_wire, rtype)
            variants = None if to_alias else ch.put.get(key) or (None if key in ch.drop else self.zone.entries.get(key))
            if not variants:
                ch.put[(name_to_wire(name), rtype)] = (_body(name, rtype, [cname]),)
                continue
            chained = []
            for variant in variants:
                answers, additional = _records(target, rtype, variant)
                chained.append(_body(name, rtype, [cname, *answers], additional))
            ch.put[(name_to_wire(name), rtype)] = tuple(chained)


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


def _records(name: str, rtype: int, body: Body) -> tuple[list[RR], list[RR]]:
    """The answer and additional records of a compiled body, read back (compile time only)."""
    sections, (an, ns, ar), _ = body
    header = struct.pack("!HHHHHH", 0, 0x8400, 1, an, ns, ar)
    msg = DNSRecord.parse(header + name_to_wire(name) + struct.pack("!HH", rtype, CLASS_IN) + sections)
    return list(msg.rr), list(msg.ar)


def _label(name: str) -> DNSLabel:
    """A name as dnslib holds it, from its ASCII bytes: what DNSLabel(str) gives for the names the
    model allows (DNS labels, checked), without its IDNA codec and escape pass, a third of a compile."""
    return DNSLabel(name.encode("ascii"))


def _address(ip: IPAddress) -> A | AAAA:
    return A(tuple(ip.packed)) if ip.version == 4 else AAAA(tuple(ip.packed))


def _dedupe(records: list[RR]) -> list[RR]:
    if len(records) < 2:  # most record sets: one VIP, one SRV, one glue record
        return records
    seen, out = set(), []
    for r in records:
        key = (str(r.rname).lower(), r.rtype, str(r.rdata))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


__all__ = ["Zone", "compile_zone", "empty_zone", "normalise_origin", "HEADLESS"]
