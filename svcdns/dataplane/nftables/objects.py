"""The plain types of svcdns's nftables table: sets, chains, the statements of their rules, and what one
Service adds. Each rule is written once, as statements; its ``nft -f`` text comes from here
(:func:`rule_text`), its netlink encoding from :mod:`.encode`, its meaning from :mod:`.fake`."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from ...model import IPV4, IPV6, Service

TABLE = "svcdns"
FAMILIES = {IPV4: "ip", IPV6: "ip6"}
PROTOCOLS = ("TCP", "UDP", "SCTP")

Key = tuple[str, str, int]  # VIP, protocol, port
Element = tuple[tuple, "tuple | str | None"]  # (key values, data: a map's values, a verdict map's chain, or None)

# What a rule can read; a concatenation of them is a set's key. "{ip}" is the family.
FIELD_TEXT = {
    "saddr": "{ip} saddr",
    "daddr": "{ip} daddr",
    "l4proto": "meta l4proto",
    "dport": "th dport",
    "ctmark": "ct mark",
    "ct-original-daddr": "ct original {ip} daddr",
}


def fields_text(fields: tuple[str, ...], family: str) -> str:
    return " . ".join(FIELD_TEXT[f].format(ip=family) for f in fields)


# ---- statements: one rule is a tuple of them, evaluated in order -----------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """``<fields> @set``: the packet's key is in the set (else the rule does not match)."""

    fields: tuple[str, ...]
    set: str

    def text(self, family: str) -> str:
        return f"{fields_text(self.fields, family)} @{self.set}"


@dataclass(frozen=True, slots=True)
class Proto:
    """``meta l4proto tcp``."""

    protocol: str  # TCP, UDP, SCTP

    def text(self, family: str) -> str:
        return f"meta l4proto {self.protocol.lower()}"


@dataclass(frozen=True, slots=True)
class VerdictMap:
    """``<fields> vmap @set``: the verdict the key maps to (no element: the rule does not match)."""

    fields: tuple[str, ...]
    set: str

    def text(self, family: str) -> str:
        return f"{fields_text(self.fields, family)} vmap @{self.set}"


@dataclass(frozen=True, slots=True)
class Jump:
    chain: str

    def text(self, family: str) -> str:
        return f"jump {self.chain}"


@dataclass(frozen=True, slots=True)
class DnatMap:
    """``dnat ip to <fields> map @set``: the address and port the key maps to (no element: no match)."""

    fields: tuple[str, ...]
    set: str

    def text(self, family: str) -> str:
        return f"dnat {family} to {fields_text(self.fields, family)} map @{self.set}"


@dataclass(frozen=True, slots=True)
class Draw:
    """``numgen random mod N offset 1``: uniform over 1..N."""

    modulus: int

    def text(self, family: str) -> str:
        return f"numgen random mod {self.modulus} offset 1"


@dataclass(frozen=True, slots=True)
class MapValue:
    """``<fields> map @set``: the value the key maps to (no element: the rule does not match)."""

    fields: tuple[str, ...]
    set: str

    def text(self, family: str) -> str:
        return f"{fields_text(self.fields, family)} map @{self.set}"


@dataclass(frozen=True, slots=True)
class SetMark:
    """``ct mark set <value>``: the connection's conntrack mark."""

    value: int | Draw | MapValue

    def text(self, family: str) -> str:
        value = self.value if isinstance(self.value, int) else self.value.text(family)
        return f"ct mark set {value}"


@dataclass(frozen=True, slots=True)
class Update:
    """``update @set { <fields> : ct mark }``: remember the key's mark, for ``timeout`` seconds. The
    text leaves the timeout out: it is the set's own, which nft applies by default."""

    set: str
    fields: tuple[str, ...]
    timeout: int

    def text(self, family: str) -> str:
        return f"update @{self.set} {{ {fields_text(self.fields, family)} : ct mark }}"


@dataclass(frozen=True, slots=True)
class InNet:
    """``ip daddr 10.96.0.0/12``: the field's address is inside the network."""

    field: str  # "daddr"
    network: str  # a CIDR of the table's family

    def text(self, family: str) -> str:
        return f"{fields_text((self.field,), family)} {self.network}"


@dataclass(frozen=True, slots=True)
class NotLocal:
    """``fib daddr type != local``: the destination is not an address of this host (the cluster DNS
    address, which lies inside the service CIDR, is one)."""

    def text(self, family: str) -> str:
        return "fib daddr type != local"


@dataclass(frozen=True, slots=True)
class Comment:
    """``comment "..."``: the rule's userdata; it matches everything and does nothing."""

    note: str

    def text(self, family: str) -> str:
        return f'comment "{self.note}"'


@dataclass(frozen=True, slots=True)
class Masquerade:
    def text(self, family: str) -> str:
        return "masquerade"


@dataclass(frozen=True, slots=True)
class Kind:
    """``meta iifkind "bridge"`` / ``meta oifkind "bridge"``: the kind of the interface the packet came
    in on (``iif``) or goes out of (``oif``)."""

    direction: str  # iif, oif
    kind: str

    def text(self, family: str) -> str:
        return f'meta {self.direction}kind "{self.kind}"'


@dataclass(frozen=True, slots=True)
class Reject:
    """``reject with tcp reset`` (TCP) or ``reject`` (ICMP port unreachable)."""

    tcp_reset: bool = False

    def text(self, family: str) -> str:
        return "reject with tcp reset" if self.tcp_reset else "reject"


Statement = (Match | Proto | VerdictMap | Jump | DnatMap | SetMark | Update | InNet | NotLocal | Comment | Masquerade
             | Kind | Reject)
Rule = tuple[Statement, ...]


def rule_text(rule: Rule, family: str) -> str:
    return " ".join(s.text(family) for s in rule)


def sets_used(rule: Rule) -> Iterator[str]:
    """The sets a rule refers to (the kernel refuses the rule if one is missing)."""
    for s in rule:
        if isinstance(s, (Match, VerdictMap, DnatMap, Update)):
            yield s.set
        elif isinstance(s, SetMark) and isinstance(s.value, MapValue):
            yield s.value.set


# ---- sets ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetDecl:
    """A named set or map. Types by nft's names; ``addr`` is the family's address type."""

    name: str
    key: tuple[str, ...]
    data: tuple[str, ...] = ()  # a map's value types; ("verdict",) for a verdict map
    timeout: int = 0  # seconds after which an entry expires (0: never)

    @property
    def kind(self) -> str:
        return "map" if self.data else "set"

    def type_text(self, family: str) -> str:
        def types(names: tuple[str, ...]) -> str:
            return " . ".join(_type(n, family) for n in names)

        text = f"type {types(self.key)}" + (f" : {types(self.data)}" if self.data else "") + ";"
        if self.timeout:
            text += f" flags timeout; timeout {self.timeout}s;"
        return text

    def element_text(self, element: Element) -> str:
        key, data = element
        text = self.key_text(key)
        if isinstance(data, str):
            return f"{text} : goto {data}"
        if data is not None:
            return f"{text} : {' . '.join(_value(v, t) for v, t in zip(data, self.data, strict=True))}"
        return text

    def key_text(self, key: tuple) -> str:
        return " . ".join(_value(v, t) for v, t in zip(key, self.key, strict=True))


def _type(name: str, family: str) -> str:
    if name == "addr":
        return "ipv6_addr" if family == "ip6" else "ipv4_addr"
    return name


def _value(value, type_: str) -> str:
    return value.lower() if type_ == "inet_proto" else str(value)


VIPS = SetDecl("vips", ("addr",))
HAIRPIN = SetDecl("hairpin", ("addr", "addr"))  # endpoint . endpoint: a pod reaching its own Service
SERVICE_IPS = SetDecl("service-ips", ("addr", "inet_proto", "inet_service"), ("verdict",))  # sticky ports' chains
COUNTS = SetDecl("counts", ("addr", "inet_proto", "inet_service"), ("mark",))  # a port's number of endpoints
DRAWS = SetDecl("draws", ("mark",), ("verdict",))  # N -> goto draw-N
ENDPOINTS = SetDecl("endpoints", ("addr", "inet_proto", "inet_service", "mark"), ("addr", "inet_service"))
FIXED_SETS = (VIPS, HAIRPIN, SERVICE_IPS, COUNTS, DRAWS, ENDPOINTS)


# ---- chains ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dnat:
    """A Service port's translation: a uniform pick among ``targets``; with ``affinity`` (seconds,
    ClientIP session affinity) a client keeps its endpoint while it comes back within that time.
    Target *i* is number *i + 1* in the ``endpoints`` map.

    Kept as the addresses and their port (one number when every target has the same, as when the
    Service port names no per-endpoint port), not as (address, port) pairs: a pair costs 72 bytes,
    70 MiB at 100k Services of 10 endpoints. :meth:`of` builds it from the pairs, ``targets`` gives
    them back."""

    addresses: tuple[str, ...]  # in a stable order
    ports: int | tuple[int, ...] = 0  # each address's port, or the one port they all have
    affinity: int = 0

    @classmethod
    def of(cls, targets: tuple[tuple[str, int], ...], affinity: int = 0) -> Dnat:
        addresses = tuple(a for a, _ in targets)
        ports = tuple(p for _, p in targets)
        return cls(addresses, ports[0] if ports and ports.count(ports[0]) == len(ports) else ports, affinity)

    @property
    def targets(self) -> tuple[tuple[str, int], ...]:
        """(address, port) of each target, in order."""
        ports = self.ports
        if isinstance(ports, int):
            return tuple((a, ports) for a in self.addresses)
        return tuple(zip(self.addresses, ports, strict=True))

    @property
    def shape(self) -> tuple[int, int]:
        """What the chain's rules depend on: a change of anything else is a change of elements."""
        return len(self.addresses), self.affinity


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    hook: str | None = None  # prerouting, output, postrouting, forward
    kind: str = ""  # nat / filter, for base chains
    priority: int = 0
    rules: tuple[Rule, ...] = ()  # the fixed rules of base and helper chains
    dnat: Dnat | None = None  # a Service port chain's draw

    @property
    def base(self) -> bool:
        return self.hook is not None

    def body(self) -> tuple[Rule, ...]:
        """Every rule of the chain, in order: the fixed ones, or a Service port's draw."""
        d = self.dnat
        if d is None or not d.addresses:
            return self.rules
        draw: tuple[Rule, ...] = ((SetMark(Draw(len(d.addresses))),),)
        if not d.affinity:
            return draw
        aff = affinity_set(self.name)
        # a known client's remembered number replaces the draw; every connection refreshes its entry
        return (*draw, (SetMark(MapValue(("saddr",), aff)),), (Update(aff, ("saddr",), d.affinity),))


def affinity_set(chain: str) -> str:
    """The ClientIP affinity map of a Service port chain: ``aff-<its hash>``."""
    return "aff-" + chain.split("-")[1]


def affinity_decl(chain: Chain) -> SetDecl:
    """Client address -> its endpoint's number, each entry expiring ``affinity`` seconds after the
    client was last seen."""
    assert chain.dnat is not None
    return SetDecl(affinity_set(chain.name), ("addr",), ("mark",), chain.dnat.affinity)


def chain_name(svc: Service, protocol: str, port: int) -> str:
    """``svc-<8 hex>-<ns>/<name>/<proto>/<port>``: stable, readable in ``nft list ruleset``, and
    marked as ours by its prefix."""
    ref = f"{svc.namespace}/{svc.name}/{protocol.lower()}/{port}"
    digest = hashlib.sha256(ref.encode()).hexdigest()[:8]
    return f"svc-{digest}-{ref}"


_DNAT_RULES = tuple((Proto(p), DnatMap(("daddr", "l4proto", "dport", "ctmark"), "endpoints")) for p in PROTOCOLS)
_REJECT_RULES = ((Match(("daddr",), "vips"), Proto("TCP"), Reject(tcp_reset=True)), (Match(("daddr",), "vips"), Reject()))
COMMIT = "commit"  # a chain no packet walks: its one rule's comment names svcdns's last commit (footprint.py)


def _cidr_rules(cidrs: tuple[str, ...], local: bool) -> tuple[Rule, ...]:
    """Reject what is still addressed to a service CIDR after the nat hook (an address no Service
    holds); on the node's own output, not its local addresses (the cluster DNS address)."""
    out: list[Rule] = []
    for cidr in cidrs:
        head: tuple[Statement, ...] = (InNet("daddr", cidr), NotLocal()) if local else (InNet("daddr", cidr),)
        out += [(*head, Proto("TCP"), Reject(tcp_reset=True)), (*head, Reject())]
    return tuple(out)


@functools.cache
def fixed_chains(cidrs: tuple[str, ...] = ()) -> tuple[Chain, ...]:
    """The chains every table has, whatever its Services; ``cidrs``: the family's service CIDRs."""
    return (
        Chain("services", rules=(
            (VerdictMap(("daddr", "l4proto", "dport"), "service-ips"),),  # a sticky port: its own chain
            (SetMark(MapValue(("daddr", "l4proto", "dport"), "counts")),),  # any other: its number of endpoints
            (Match(("daddr",), "vips"), VerdictMap(("ctmark",), "draws")),  # -> the draw among that many
        )),
        Chain("nat-prerouting", "prerouting", "nat", -100, ((Jump("services"),), *_DNAT_RULES)),
        Chain("nat-output", "output", "nat", -100, ((Jump("services"),), *_DNAT_RULES)),
        Chain("nat-postrouting", "postrouting", "nat", 100, (
            (Match(("ct-original-daddr",), "vips"), SetMark(0)),  # a new connection's mark back to where it started
            (Match(("saddr", "daddr"), "hairpin"), Masquerade()),
            # a pod on a bridge reaching, through a VIP, a pod on a bridge: without br_netfilter the reply
            # would cross the bridge straight back and miss the DNAT's undoing, so it must come back
            # through the node (docs/architecture.md, "Pods on a bridge"); with br_netfilter the packet is
            # bridged, has no input interface at this hook, and keeps its source
            (Match(("ct-original-daddr",), "vips"), Kind("iif", "bridge"), Kind("oif", "bridge"), Masquerade()),
        )),
        # a pod's packets to a local address never reach forward: they are delivered (input)
        Chain("filter-forward", "forward", "filter", -10, _REJECT_RULES + _cidr_rules(cidrs, local=False)),
        Chain("filter-output", "output", "filter", -10, _REJECT_RULES + _cidr_rules(cidrs, local=True)),
        Chain(COMMIT),
    )  # fmt: skip


def draw_chain(n: int) -> Chain:
    """``draw-N``: every port with N endpoints and no affinity draws its endpoint's number here."""
    return Chain(f"draw-{n}", rules=((SetMark(Draw(n)),),))


def commit_rule(note: str) -> Chain:
    """The commit chain holding the one rule that stamps a commit as svcdns's own."""
    return Chain(COMMIT, rules=((Comment(note),),))


@dataclass(frozen=True, slots=True)
class ServiceObjects:
    """What one Service contributes to a family's table: per port, its key, its chain's name and
    its translation. A port without affinity is only elements (its count, its endpoints); a sticky
    one also has its chain (affinity rules hold a lookup) and a ``service-ips`` element."""

    vip: str
    ports: tuple[tuple[Key, str, Dnat], ...]  # ((vip, proto, port), chain name ("": not sticky), translation)
    # usable endpoint addresses, once each, in the targets' order: 'a . a' elements of the hairpin
    # set (a tuple: a frozenset of ten costs 730 bytes, 6 MiB at 10k Services; with one port, the
    # very tuple of its Dnat's addresses)
    hairpin: tuple[str, ...]

    @property
    def chains(self) -> tuple[Chain, ...]:
        return tuple(Chain(name, dnat=d) for _, name, d in self.ports if d.affinity)

    @property
    def service_ips(self) -> tuple[tuple[Key, str], ...]:
        return tuple((key, name) for key, name, d in self.ports if d.affinity)

    @property
    def counts(self) -> tuple[tuple[Key, tuple[int]], ...]:
        """The ``counts`` elements: a port without affinity with N >= 1 endpoints -> N."""
        return tuple((key, (len(d.addresses),)) for key, _, d in self.ports if not d.affinity and d.addresses)

    def endpoint_elements(self) -> Iterator[tuple[tuple[str, str, int, int], tuple[str, int]]]:
        """The ``endpoints`` map elements: ((vip, proto, port, number), (address, target port)).
        Derived from the targets when needed rather than stored: 10 per Service adds up."""
        for key, _, dnat in self.ports:
            for n, target in enumerate(dnat.targets, 1):
                yield (*key, n), target
