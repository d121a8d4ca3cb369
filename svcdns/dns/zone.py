"""The zone planner: ServiceTable -> every name svcdns answers, precompiled to wire bytes.

Names, per the Kubernetes DNS specification (zone ``cluster.local`` by default):

- ``<svc>.<ns>.svc.<zone>`` A/AAAA: the VIPs; for a Headless Service the ready endpoints' addresses
  (rotated between answers); for an ExternalName Service a CNAME to the external name;
- ``<host>.<svc>.<ns>.svc.<zone>`` A/AAAA, Headless only: each ready endpoint, ``<host>`` being its
  hostname or its address with dashes (``10-0-1-5``);
- ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` SRV, named ports only: the Service name and port
  (ClusterIP), or one record per ready endpoint (Headless), their addresses in the additional section;
- PTR for every VIP and Headless endpoint address; SOA and NS at the apex; ``dns-version.<zone>`` TXT.

Every answer is compiled once per table change to the bytes that follow the question in a response:
the answer path (:mod:`.answer`) only copies them behind the client's header and question. Names
that exist without records (``svc.<zone>``, ``<ns>.svc.<zone>``, ...) answer NODATA, not NXDOMAIN.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import dataclass, field

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RR, SRV, TXT, A, DNSHeader, DNSQuestion, DNSRecord

from ..model import CLUSTER_IP, EXTERNAL_NAME, HEADLESS, Service
from ..table import ServiceTable
from .wire import TYPE_A, TYPE_AAAA, TYPE_NS, TYPE_PTR, TYPE_SOA, TYPE_SRV, TYPE_TXT, name_to_wire, rr

DNS_SCHEMA_VERSION = "1.1.0"  # the Kubernetes DNS specification version this follows
MAX_ROTATIONS = 8

Body = tuple[bytes, tuple[int, int, int]]  # sections after the question, and their counts (an, ns, ar)


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


def soa_record(origin: str, ttl: int, serial: int) -> bytes:
    owner = name_to_wire(origin)
    rdata = name_to_wire(f"ns.dns.{origin}") + name_to_wire(f"hostmaster.{origin}")
    rdata += struct.pack("!IIIII", serial & 0xFFFFFFFF, 7200, 1800, 86400, ttl)
    return rr(owner, TYPE_SOA, ttl, rdata)


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

    def add(self, name: str, rtype: int, rdata, additional: list[RR] = ()) -> None:
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
        self.exists(base)
        if svc.type == CLUSTER_IP:
            for ip in svc.cluster_ips:
                self.address(base, ip)
                self.add(reverse_name(ip), TYPE_PTR, PTR(base))
            glue = [self.glue(base, ip) for ip in svc.cluster_ips]
            for port in svc.ports:
                if port.name:
                    self.add(f"_{port.name}._{port.protocol.lower()}.{base}", TYPE_SRV,
                             SRV(0, 100, port.port, base), glue)  # fmt: skip
            return
        # Headless: the ready endpoints themselves
        ready = svc.ready_endpoints()
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


def _body(name: str, rtype: int, answers: list[RR], additional: list[RR] = ()) -> Body:
    msg = DNSRecord(DNSHeader(id=0, qr=1, aa=1), q=DNSQuestion(name, rtype))
    for a in answers:
        msg.add_answer(a)
    for a in additional:
        msg.add_ar(a)
    packed = msg.pack()
    question_len = len(name_to_wire(name)) + 4
    return packed[12 + question_len :], (len(answers), 0, len(additional))


def compile_zone(table: ServiceTable, zone: str = "cluster.local", ttl: int = 5, serial: int | None = None) -> Zone:
    """Every answer for ``table``, precompiled. Pure: the same table gives the same zone."""
    origin = normalise_origin(zone)
    b = _Builder(origin, ttl)
    b.exists(origin)
    for svc in sorted(table, key=lambda s: s.key):
        b.service(svc)
    b.add(origin, TYPE_NS, NS(f"ns.dns.{origin}"))
    b.add(f"dns-version.{origin}", TYPE_TXT, TXT(DNS_SCHEMA_VERSION))
    serial = int(time.time()) if serial is None else serial
    entries: dict[tuple[bytes, int], tuple[Body, ...]] = {}
    for (name, rtype), answers in b.records.items():
        extra = b.additional.get((name, rtype), [])
        if (name, rtype) in b.rotate and len(answers) > 1:
            n = min(len(answers), MAX_ROTATIONS)
            variants = tuple(_body(name, rtype, answers[i:] + answers[:i], _dedupe(extra)) for i in range(n))
        else:
            variants = (_body(name, rtype, answers, _dedupe(extra)),)
        entries[(name_to_wire(name), rtype)] = variants
    soa = soa_record(origin, ttl, serial)
    soa_owner = name_to_wire(origin)
    entries[(soa_owner, TYPE_SOA)] = ((soa, (1, 0, 0)),)
    cnames = {name_to_wire(name): _body(name, QTYPE.CNAME, [rec]) for name, rec in b.cnames.items()}
    names = frozenset(name_to_wire(n) for n in b.names if n.endswith(origin))
    return Zone(origin, soa_owner, ttl, serial, soa, entries, cnames, names)


def _dedupe(records: list[RR]) -> list[RR]:
    seen, out = set(), []
    for r in records:
        key = (str(r.rname).lower(), r.rtype, str(r.rdata))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


__all__ = ["Zone", "compile_zone", "empty_zone", "normalise_origin", "HEADLESS"]
