"""The ruleset planner: ServiceTable -> the nftables objects svcdns wants, and (current, desired) ->
the smallest transaction that gets there. Pure data; the kernel shell (:mod:`.nftables`) encodes it.

The shape (one table per family, ``ip svcdns`` / ``ip6 svcdns``), chosen for what the kernel costs to
*program* (DESIGN.md section 7: a transaction that adds a jump or goto re-validates the whole jump
graph, one that adds none skips it):

    set vips            { type ipv4_addr }                         every VIP
    map service-ips     { type ipv4_addr . inet_proto . inet_service : verdict }   VIP.proto.port -> goto svc chain
    set hairpin         { type ipv4_addr . ipv4_addr }             endpoint . endpoint: pod to its own Service
    chain services      { ip daddr . meta l4proto . th dport vmap @service-ips }
    chain nat-prerouting  { type nat hook prerouting priority dstnat; jump services }
    chain nat-output      { type nat hook output priority -100; jump services }
    chain nat-postrouting { type nat hook postrouting priority srcnat; ip saddr . ip daddr @hairpin masquerade }
    chain filter-forward / filter-output { type filter ...; ip daddr @vips reject (tcp: with tcp reset) }
    chain svc-<hash>-<ns>/<name>/<proto>/<port>
                        { meta l4proto tcp dnat ip to numgen random mod N map { 0 : ep0 . port0, ... } }

One chain per Service port and no chain per endpoint. Endpoint churn rewrites that chain's single
rule (which holds no jump) and the hairpin set: no graph validation. A Service port without a usable
endpoint gets an empty chain: its packets leave the nat hook untranslated, still addressed to a VIP,
and the filter chains reject them at once (TCP reset, ICMP port unreachable); so do packets to a
port the Service does not have. Lookups are O(1) in the number of Services.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..model import IPV4, IPV6, Service
from ..table import ServiceTable

TABLE = "svcdns"
FAMILIES = {IPV4: "ip", IPV6: "ip6"}


@dataclass(frozen=True)
class Dnat:
    """``meta l4proto <proto> dnat to numgen random mod N map { i : addr . port }``."""

    protocol: str
    targets: tuple[tuple[str, int], ...]  # (address, port), in a stable order


@dataclass(frozen=True)
class Chain:
    name: str
    hook: str | None = None  # prerouting, output, postrouting, forward
    kind: str = ""  # nat / filter, for base chains
    priority: int = 0
    rules: tuple[str, ...] = ()  # fixed rules by name (see FIXED_RULES), for base and helper chains
    dnat: Dnat | None = None  # a Service port chain's one rule

    @property
    def base(self) -> bool:
        return self.hook is not None


@dataclass(frozen=True)
class Ruleset:
    """Everything svcdns wants in one family's table."""

    family: str  # "ip" or "ip6"
    chains: dict[str, Chain] = field(default_factory=dict)
    vips: frozenset[str] = frozenset()
    service_ips: dict[tuple[str, str, int], str] = field(default_factory=dict)  # (vip, proto, port) -> chain
    hairpin: frozenset[tuple[str, str]] = frozenset()

    def service_chains(self) -> dict[str, Chain]:
        return {n: c for n, c in self.chains.items() if c.dnat is not None}


# The fixed part of the ruleset is data: base chains and what they hold.
FIXED_CHAINS = (
    Chain("services", rules=("service-vmap",)),
    Chain("nat-prerouting", hook="prerouting", kind="nat", priority=-100, rules=("jump-services",)),
    Chain("nat-output", hook="output", kind="nat", priority=-100, rules=("jump-services",)),
    Chain("nat-postrouting", hook="postrouting", kind="nat", priority=100, rules=("hairpin-masquerade",)),
    Chain("filter-forward", hook="forward", kind="filter", priority=-10, rules=("reject-vips-tcp", "reject-vips")),
    Chain("filter-output", hook="output", kind="filter", priority=-10, rules=("reject-vips-tcp", "reject-vips")),
)


def chain_name(svc: Service, protocol: str, port: int) -> str:
    """``svc-<8 hex>-<ns>/<name>/<proto>/<port>``: stable, readable in ``nft list ruleset``, and
    marked as ours by its prefix."""
    ref = f"{svc.namespace}/{svc.name}/{protocol.lower()}/{port}"
    digest = hashlib.sha256(ref.encode()).hexdigest()[:8]
    return f"svc-{digest}-{ref}"


def build(table: ServiceTable, family: str = IPV4) -> Ruleset:
    """The desired ruleset of one family for every Service with a VIP of that family."""
    chains = {c.name: c for c in FIXED_CHAINS}
    vips: set[str] = set()
    service_ips: dict[tuple[str, str, int], str] = {}
    hairpin: set[tuple[str, str]] = set()
    for svc in sorted(table, key=lambda s: s.key):
        vip = svc.vip(family) if svc.has_vip else None
        if vip is None:
            continue
        vips.add(str(vip))
        usable = svc.usable_endpoints(family)
        for ep in usable:
            hairpin.add((str(ep.address), str(ep.address)))
        for port in svc.ports:
            name = chain_name(svc, port.protocol, port.port)
            targets = tuple(sorted({(str(ep.address), ep.target_port(port)) for ep in usable}))
            chains[name] = Chain(name, dnat=Dnat(port.protocol, targets))
            service_ips[(str(vip), port.protocol, port.port)] = name
    return Ruleset(FAMILIES[family], chains, frozenset(vips), service_ips, frozenset(hairpin))


# ---- the transaction --------------------------------------------------------------------------------------


@dataclass
class Transaction:
    """What one sync sends, in order, as one netlink batch: all of it applies or none of it."""

    family: str
    ops: list[tuple] = field(default_factory=list)

    def add(self, *op) -> None:
        self.ops.append(op)

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self):
        return iter(self.ops)


def plan(current: Ruleset | None, desired: Ruleset, present: set[str] | None = None) -> Transaction:
    """The ops that turn ``current`` into ``desired``. ``current`` None: a full convergence of whatever
    the kernel holds (the table created if missing, every set flushed and refilled, every chain flushed
    and rewritten, and chains in ``present`` that are not desired deleted), in one transaction, so a
    restart or a drift repair never opens a window where a working VIP stops working."""
    tx = Transaction(desired.family)
    if current is None:
        tx.add("table")
        for name in ("vips", "hairpin", "service-ips"):
            tx.add("set", name)
            tx.add("flush-set", name)
        for chain in desired.chains.values():
            tx.add("chain", chain)
            tx.add("flush-chain", chain.name)
        for chain in _ordered(desired.chains.values()):
            tx.add("rules", chain)
        tx.add("elements", "vips", sorted(desired.vips))
        tx.add("elements", "hairpin", sorted(desired.hairpin))
        tx.add("elements", "service-ips", sorted(desired.service_ips.items()))
        for name in sorted((present or set()) - set(desired.chains)):
            tx.add("flush-chain", name)
            tx.add("delete-chain", name)
        return tx

    old_chains, new_chains = current.chains, desired.chains
    added = [c for n, c in new_chains.items() if n not in old_chains]
    removed = [n for n in old_chains if n not in new_chains]
    changed = [c for n, c in new_chains.items() if n in old_chains and old_chains[n] != c]
    # new chains first (elements will point at them), then their rules
    for chain in added:
        tx.add("chain", chain)
    for chain in added + changed:
        if chain in changed:
            tx.add("flush-chain", chain.name)
        tx.add("rules", chain)
    _elements(tx, "vips", current.vips, desired.vips)
    _elements(tx, "hairpin", current.hairpin, desired.hairpin)
    old_map, new_map = current.service_ips, desired.service_ips
    gone = sorted(k for k in old_map if k not in new_map or new_map[k] != old_map[k])
    new = sorted((k, v) for k, v in new_map.items() if k not in old_map or old_map[k] != v)
    if gone:
        tx.add("delete-elements", "service-ips", gone)
    if new:
        tx.add("elements", "service-ips", new)
    # chains last: nothing points at them any more
    for name in sorted(removed):
        tx.add("flush-chain", name)
        tx.add("delete-chain", name)
    return tx


def _elements(tx: Transaction, name: str, old: frozenset, new: frozenset) -> None:
    if old - new:
        tx.add("delete-elements", name, sorted(old - new))
    if new - old:
        tx.add("elements", name, sorted(new - old))


def _ordered(chains) -> list[Chain]:
    """Helper chains before base chains, so a base chain's jump finds its target filled."""
    return sorted(chains, key=lambda c: (c.base, c.name))


# ---- the text form (tests, logs, the operator's reference) -----------------------------------------------------


def render(rs: Ruleset) -> str:
    """The ruleset as ``nft -f`` text, sorted by object, rules in order: what tests compare."""
    fam = rs.family
    addr = "ipv4_addr" if fam == "ip" else "ipv6_addr"
    lines = [f"table {fam} {TABLE} {{"]
    lines.append(f"\tset vips {{ type {addr}; {_elems(sorted(rs.vips))}}}")
    lines.append(f"\tset hairpin {{ type {addr} . {addr}; {_elems(f'{a} . {b}' for a, b in sorted(rs.hairpin))}}}")
    svc_elems = (f"{v} . {p.lower()} . {port} : goto {c}" for (v, p, port), c in sorted(rs.service_ips.items()))
    lines.append(f"\tmap service-ips {{ type {addr} . inet_proto . inet_service : verdict; {_elems(svc_elems)}}}")
    for name in sorted(rs.chains):
        chain = rs.chains[name]
        lines.append(f"\tchain {name} {{")
        if chain.base:
            lines.append(f"\t\ttype {chain.kind} hook {chain.hook} priority {chain.priority}; policy accept;")
        for rule in chain.rules:
            lines.append("\t\t" + FIXED_TEXT[rule].format(ip=fam))
        if chain.dnat is not None and chain.dnat.targets:
            d = chain.dnat
            targets = ", ".join(f"{i} : {a} . {p}" for i, (a, p) in enumerate(d.targets))
            lines.append(
                f"\t\tmeta l4proto {d.protocol.lower()} dnat {fam} to numgen random mod {len(d.targets)} map {{ {targets} }}"
            )
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _elems(items) -> str:
    items = list(items)
    return f"elements = {{ {', '.join(items)} }} " if items else ""


FIXED_TEXT = {
    "service-vmap": "{ip} daddr . meta l4proto . th dport vmap @service-ips",
    "jump-services": "jump services",
    "hairpin-masquerade": "{ip} saddr . {ip} daddr @hairpin masquerade",
    "reject-vips-tcp": "{ip} daddr @vips meta l4proto tcp reject with tcp reset",
    "reject-vips": "{ip} daddr @vips reject",
}
