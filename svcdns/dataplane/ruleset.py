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
    chain svc-<hash>-<ns>/<name>/<proto>/<port>     (N usable endpoints)
                        { meta l4proto tcp numgen random mod N 0 dnat ip to ep0:port
                          meta l4proto tcp numgen random mod N-1 0 dnat ip to ep1:port
                          ...
                          meta l4proto tcp dnat ip to epN-1:port }

One chain per Service port, no chain per endpoint and no set per Service: a packet walks its
Service's cascade (each rule takes its endpoint with probability 1/remaining, so the choice is
uniform), which costs O(endpoints of that Service) and nothing in the number of Services. Endpoint
churn flushes and rewrites that one chain, whose rules hold no jump (so the kernel skips its
jump-graph validation), and changes hairpin elements. What was measured on the way here
(bench/dataplane.py, 10k Services x 10 endpoints): one anonymous map per Service
(``dnat to numgen random mod N map {...}``) costs ~0.8 ms of kernel time per Service to create (10 s
full sync); one shared ``chain-id . numgen`` map is quadratic, since every element added is validated
against every rule bound to the map (14 s full sync, 33 ms per change). A Service port without a usable
endpoint gets an empty chain: its packets leave the nat hook untranslated, still addressed to a VIP,
and the filter chains reject them at once (TCP reset, ICMP port unreachable); so do packets to a
port the Service does not have. Lookups are O(1) in the number of Services.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from ..model import AFFINITY_CLIENT_IP, IPV4, IPV6, Service
from ..table import ServiceTable

TABLE = "svcdns"
SETS = ("vips", "hairpin", "service-ips")
FAMILIES = {IPV4: "ip", IPV6: "ip6"}


@dataclass(frozen=True)
class Dnat:
    """A Service port's translation: a uniform pick among ``targets``; with ``affinity`` (seconds,
    ClientIP session affinity) a client keeps its endpoint while it comes back within that time."""

    protocol: str
    targets: tuple[tuple[str, int], ...]  # (address, port), in a stable order
    affinity: int = 0


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
class ServiceObjects:
    """What one Service contributes to a family's table."""

    vip: str
    chains: tuple[Chain, ...]
    service_ips: tuple[tuple[tuple[str, str, int], str], ...]  # ((vip, proto, port), chain name)
    hairpin: frozenset[tuple[str, str]]


@dataclass
class Ruleset:
    """Everything svcdns wants in one family's table: the per-Service objects and their union.

    The dataplane owns one per family and advances it with :meth:`apply`, which also returns the
    transaction; the union views (chains, vips, service_ips, hairpin) are kept up to date so a
    change costs what the changed Services cost, not what the whole table costs."""

    family: str  # "ip" or "ip6"
    services: dict[tuple[str, str], ServiceObjects] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=lambda: {c.name: c for c in FIXED_CHAINS})
    vips: Counter = field(default_factory=Counter)
    service_ips: dict[tuple[str, str, int], str] = field(default_factory=dict)
    hairpin: Counter = field(default_factory=Counter)
    last_change: tuple[dict, dict] = ({}, {})  # the objects apply() replaced, and their successors

    def service_chains(self) -> dict[str, Chain]:
        return {n: c for n, c in self.chains.items() if c.dnat is not None}

    def _add(self, key, objs: ServiceObjects) -> None:
        self.services[key] = objs
        self.vips[objs.vip] += 1
        self.chains.update((c.name, c) for c in objs.chains)

        self.service_ips.update(objs.service_ips)
        self.hairpin.update(objs.hairpin)

    def _remove(self, key) -> ServiceObjects | None:
        objs = self.services.pop(key, None)
        if objs is None:
            return None
        _decrement(self.vips, [objs.vip])
        for c in objs.chains:
            self.chains.pop(c.name, None)
        for k, _ in objs.service_ips:
            self.service_ips.pop(k, None)
        _decrement(self.hairpin, objs.hairpin)
        return objs

    def apply(self, table: ServiceTable, keys) -> Transaction:
        """Advance to ``table`` for the Services in ``keys`` (the ones that changed) and return the
        ops that take the kernel along: new and rewritten chains, element changes, then the chains
        that went. If the kernel refuses them, discard this Ruleset (the next sync converges fully)."""
        family = IPV4 if self.family == "ip" else IPV6
        old = {k: self.services[k] for k in keys if k in self.services}
        new = {}
        for key in keys:
            svc = table.services.get(key)
            objs = service_objects(svc, family) if svc is not None else None
            if objs is not None:
                new[key] = objs
        vips = {o.vip for o in (*old.values(), *new.values())}
        pairs = set().union(*(o.hairpin for o in (*old.values(), *new.values())))
        vips_before = {v for v in vips if v in self.vips}
        pairs_before = {h for h in pairs if h in self.hairpin}
        for key in old:
            self._remove(key)
        for key, objs in new.items():
            self._add(key, objs)
        self.last_change = (old, new)
        old_chains = {c.name: c for o in old.values() for c in o.chains}
        new_chains = {c.name: c for o in new.values() for c in o.chains}
        old_map = {k: v for o in old.values() for k, v in o.service_ips}
        new_map = {k: v for o in new.values() for k, v in o.service_ips}

        tx = Transaction(self.family)
        for name, chain in new_chains.items():
            if name not in old_chains:
                tx.add("chain", chain)
        for name, chain in new_chains.items():
            if name in old_chains and old_chains[name] == chain:
                continue
            old_aff = old_chains[name].dnat.affinity if name in old_chains and old_chains[name].dnat else 0
            if name in old_chains:
                tx.add("flush-chain", name)
            if old_aff and chain.dnat.affinity:
                tx.add("flush-set", affinity_set(name))  # endpoints changed: clients pick again
            elif chain.dnat.affinity:
                tx.add("affinity-set", chain)
            tx.add("rules", chain)
            if old_aff and not chain.dnat.affinity:
                tx.add("delete-set", affinity_set(name))
        _elements(tx, "vips", {v for v in vips_before if v not in self.vips},
                  {v for v in vips if v in self.vips and v not in vips_before})  # fmt: skip
        _elements(tx, "hairpin", {h for h in pairs_before if h not in self.hairpin},
                  {h for h in pairs if h in self.hairpin and h not in pairs_before})  # fmt: skip
        gone = sorted(k for k, v in old_map.items() if new_map.get(k) != v)
        added = sorted((k, v) for k, v in new_map.items() if old_map.get(k) != v)
        if gone:
            tx.add("delete-elements", "service-ips", gone)
        if added:
            tx.add("elements", "service-ips", added)
        for name in sorted(set(old_chains) - set(new_chains)):
            tx.add("flush-chain", name)
            tx.add("delete-chain", name)
            if old_chains[name].dnat is not None and old_chains[name].dnat.affinity:
                tx.add("delete-set", affinity_set(name))
        return tx


def udp_expectations(objects) -> dict[tuple[str, int], set[tuple[str, int]]]:
    """For conntrack cleaning: each UDP VIP:port of these Services' objects, and its endpoints."""
    out: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for objs in objects:
        chains = {c.name: c for c in objs.chains}
        for (vip, proto, port), name in objs.service_ips:
            if proto == "UDP":
                out[(vip, port)] = set(chains[name].dnat.targets)
    return out


def _decrement(counter: Counter, items) -> None:
    for item in items:
        counter[item] -= 1
        if counter[item] <= 0:
            del counter[item]


# The fixed part of the ruleset is data: base chains and what they hold.
FIXED_CHAINS = (
    Chain("services", rules=("service-vmap",)),
    Chain("nat-prerouting", hook="prerouting", kind="nat", priority=-100, rules=("jump-services",)),
    Chain("nat-output", hook="output", kind="nat", priority=-100, rules=("jump-services",)),
    Chain("nat-postrouting", hook="postrouting", kind="nat", priority=100, rules=("hairpin-masquerade",)),
    Chain("filter-forward", hook="forward", kind="filter", priority=-10, rules=("reject-vips-tcp", "reject-vips")),
    Chain("filter-output", hook="output", kind="filter", priority=-10, rules=("reject-vips-tcp", "reject-vips")),
)


def affinity_set(chain: str) -> str:
    """The ClientIP affinity map of a Service port chain: ``aff-<its hash>``."""
    return "aff-" + chain.split("-")[1]


def chain_name(svc: Service, protocol: str, port: int) -> str:
    """``svc-<8 hex>-<ns>/<name>/<proto>/<port>``: stable, readable in ``nft list ruleset``, and
    marked as ours by its prefix."""
    ref = f"{svc.namespace}/{svc.name}/{protocol.lower()}/{port}"
    digest = hashlib.sha256(ref.encode()).hexdigest()[:8]
    return f"svc-{digest}-{ref}"


def service_objects(svc: Service, family: str) -> ServiceObjects | None:
    """One Service's objects in one family's table (None: it has no VIP of that family)."""
    vip = svc.vip(family) if svc.has_vip else None
    if vip is None:
        return None
    usable = svc.usable_endpoints(family)
    chains, service_ips = [], []
    for port in svc.ports:
        name = chain_name(svc, port.protocol, port.port)
        targets = tuple(sorted({(str(ep.address), ep.target_port(port)) for ep in usable}))
        affinity = svc.affinity_timeout if svc.session_affinity == AFFINITY_CLIENT_IP else 0
        chains.append(Chain(name, dnat=Dnat(port.protocol, targets, affinity)))
        service_ips.append(((str(vip), port.protocol, port.port), name))
    hairpin = frozenset((str(ep.address), str(ep.address)) for ep in usable)
    return ServiceObjects(str(vip), tuple(chains), tuple(service_ips), hairpin)


def build(table: ServiceTable, family: str = IPV4) -> Ruleset:
    """The desired ruleset of one family for every Service with a VIP of that family."""
    rs = Ruleset(FAMILIES[family])
    for svc in sorted(table, key=lambda s: s.key):
        objs = service_objects(svc, family)
        if objs is not None:
            rs._add(svc.key, objs)
    return rs


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


def plan(desired: Ruleset, present: set[str] | None = None, present_sets: set[str] | None = None) -> Transaction:
    """A full convergence of whatever the kernel holds to ``desired``: the table created if missing,
    every set flushed and refilled, every chain flushed and rewritten, and our chains in ``present``
    that are not desired deleted, in one transaction, so a restart or a drift repair never opens a
    window where a working VIP stops working."""
    tx = Transaction(desired.family)
    tx.add("table")
    for name in SETS:
        tx.add("set", name)
        tx.add("flush-set", name)
    for chain in desired.chains.values():
        tx.add("chain", chain)
        tx.add("flush-chain", chain.name)
        if chain.dnat is not None and chain.dnat.affinity:
            # a full convergence cannot tell which remembered clients point at endpoints that went
            # meanwhile, so sticky clients pick again once (after a restart or a drift repair)
            tx.add("affinity-set", chain)
            tx.add("flush-set", affinity_set(chain.name))
    for chain in _ordered(desired.chains.values()):
        tx.add("rules", chain)
    tx.add("elements", "vips", sorted(desired.vips))
    tx.add("elements", "hairpin", sorted(desired.hairpin))
    tx.add("elements", "service-ips", sorted(desired.service_ips.items()))
    for name in sorted((present or set()) - set(desired.chains)):
        tx.add("flush-chain", name)
        tx.add("delete-chain", name)
    wanted = {affinity_set(c.name) for c in desired.chains.values() if c.dnat is not None and c.dnat.affinity}
    for name in sorted((present_sets or set()) - wanted):
        if name.startswith("aff-"):
            tx.add("delete-set", name)
    return tx


def _elements(tx: Transaction, name: str, removed, added) -> None:
    if removed:
        tx.add("delete-elements", name, sorted(removed))
    if added:
        tx.add("elements", name, sorted(added))


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
            if d.affinity:
                aff = affinity_set(name)
                lines.append(
                    f"\t\tmeta l4proto {d.protocol.lower()} dnat {fam} to {fam} saddr map @{aff} "
                    f"update @{aff} {{ {fam} saddr }}  # ClientIP affinity, {d.affinity}s"
                )
            for i, (addr, port) in enumerate(d.targets):
                left = len(d.targets) - i
                pick = f"numgen random mod {left} 0 " if left > 1 else ""
                target = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
                sticky = f"update @{affinity_set(name)} {{ {fam} saddr : {target} }} " if d.affinity else ""
                lines.append(f"\t\tmeta l4proto {d.protocol.lower()} {pick}{sticky}dnat {fam} to {target}")
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
