"""The ruleset planner: ServiceTable -> the nftables objects svcdns wants, and (current, desired) ->
the smallest transaction that gets there. Pure data; the kernel shell (:mod:`.nftables`) encodes it.

The shape (one table per family, ``ip svcdns`` / ``ip6 svcdns``), chosen for what the kernel costs to
*program* (DESIGN.md section 7): any transaction that adds a rule holding a jump, a nat, a lookup or
an immediate, or a verdict-map element, makes the kernel re-validate every chain reachable from the
base chains (~60 ms at 10k Services); one that adds only rules of ``numgen``/``ct set`` and data-map
elements skips that walk (~0.2 ms). So endpoint churn touches nothing else:

    set vips            { type ipv4_addr }                         every VIP
    set hairpin         { type ipv4_addr . ipv4_addr }             endpoint . endpoint: pod to its own Service
    map service-ips     { type ipv4_addr . inet_proto . inet_service : verdict }   VIP.proto.port -> goto svc chain
    map endpoints       { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service }
                                                                   VIP.proto.port.pick -> endpoint . target port
    chain services      { ip daddr . meta l4proto . th dport vmap @service-ips }
    chain nat-prerouting  { type nat hook prerouting priority dstnat; jump services
                            meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport . ct mark map @endpoints
                            (the same for udp and sctp) }
    chain nat-output      { type nat hook output priority -100; the same }
    chain nat-postrouting { type nat hook postrouting priority srcnat; ct original ip daddr @vips ct mark set 0
                            ip saddr . ip daddr @hairpin masquerade }
    chain filter-forward / filter-output { type filter ...; ip daddr @vips reject (tcp: with tcp reset) }
    chain svc-<hash>-<ns>/<name>/<proto>/<port>   (N usable endpoints)
                        { ct mark set numgen random mod N offset 1 }

A new connection to a VIP:port goes to its Service port chain, which draws its endpoint's number
(1..N, uniform) into the connection's conntrack mark; back in the base chain one lookup of
``VIP . proto . port . number`` in the ``endpoints`` map gives the endpoint and the DNAT; postrouting
sets the mark back to 0, the value a new connection starts with. (A register cannot carry the number
across rules: this kernel refuses loads from registers a rule did not set itself, and ``meta mark
set`` would cost the validation walk, ``ct mark set`` does not.) Per packet: two hash lookups and one
rule, whatever the number of Services or endpoints. Endpoint churn rewrites the Service port's
one-rule chain (only when N changes) and that port's ``endpoints`` elements. The price: svcdns owns
the conntrack mark of new connections to VIPs between the dstnat and srcnat hooks (README).

ClientIP session affinity adds two rules to a sticky port's chain and a map of its own (client
address -> number, entries expiring after the timeout): a known client's number replaces the draw,
and every connection refreshes its client's entry. Those rules hold a lookup, so rewriting a sticky
chain costs the validation walk; its map is flushed whenever that port's endpoints change, since the
numbers then name other endpoints.

What was measured on the way here (10k Services x 10 endpoints, bench/dataplane.py and DESIGN.md
section 7): a cascade of ``numgen random mod K 0 dnat to ep:port`` rules per Service port (the shape
before this one) loads in 3.5 s but every endpoint change costs the ~60 ms validation walk; one named
interval map per Service port is validation-free to change but creating 10k named sets is quadratic in
the kernel (3.4 s of kernel time at 10k, 19 s at 20k); one anonymous map per Service costs ~0.8 ms of
kernel time each (10 s); one shared ``chain-id . numgen`` map bound by every Service's rule validates
each element against every rule bound to it (14 s, 33 ms per change). A Service port without a usable
endpoint gets an empty chain: nothing is drawn, the lookup misses, its packets leave the nat hook
still addressed to a VIP and the filter chains reject them at once (TCP reset, ICMP port
unreachable); so do packets to a port the Service does not have.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ...model import IPV4, IPV6, Service
from ...table import ServiceTable
from .objects import FAMILIES, PROTOCOLS, SETS, TABLE, Chain, Dnat, Key, ServiceObjects, affinity_set, chain_name
from .transaction import Transaction


@dataclass
class Ruleset:
    """Everything svcdns wants in one family's table: the per-Service objects and their union.

    The dataplane owns one per family and advances it with :meth:`apply`, which also returns the
    transaction; the union views (chains, vips, service_ips, hairpin) are kept up to date so a change
    costs what the changed Services cost, not what the whole table costs."""

    family: str  # "ip" or "ip6"
    services: dict[tuple[str, str], ServiceObjects] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=lambda: {c.name: c for c in FIXED_CHAINS})
    vips: Counter = field(default_factory=Counter)
    service_ips: dict[Key, str] = field(default_factory=dict)
    hairpin: Counter = field(default_factory=Counter)  # endpoint address -> how many Services use it

    def service_chains(self) -> dict[str, Chain]:
        return {n: c for n, c in self.chains.items() if c.dnat is not None}

    def endpoint_elements(self) -> dict[tuple[str, str, int, int], tuple[str, int]]:
        """Every ``endpoints`` map element, sorted."""
        return dict(sorted(e for key in sorted(self.services) for e in self.services[key].endpoint_elements()))

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
        ops that take the kernel along: new chains, rewritten chains (only where the number of
        endpoints or the affinity changed), element changes, then the chains that went. If the
        kernel refuses them, discard this Ruleset (the next sync converges fully)."""
        family = IPV4 if self.family == "ip" else IPV6
        old = {k: self.services[k] for k in keys if k in self.services}
        new = {}
        for key in keys:
            svc = table.services.get(key)
            objs = service_objects(svc, family) if svc is not None else None
            if objs is not None:
                new[key] = objs
        vips = {o.vip for o in (*old.values(), *new.values())}
        addrs = set().union(*(o.hairpin for o in (*old.values(), *new.values())))
        vips_before = {v for v in vips if v in self.vips}
        addrs_before = {a for a in addrs if a in self.hairpin}
        for key in old:
            self._remove(key)
        for key, objs in new.items():
            self._add(key, objs)
        old_chains = {c.name: c for o in old.values() for c in o.chains}
        new_chains = {c.name: c for o in new.values() for c in o.chains}

        tx = Transaction(self.family)
        for name, chain in new_chains.items():
            if name not in old_chains:
                tx.add("chain", chain)
        for name, chain in new_chains.items():
            before = old_chains[name].dnat if name in old_chains else None
            d = chain.dnat
            assert d is not None
            if before == d:
                continue
            if before is None or before.shape != d.shape:
                if before is not None:
                    tx.add("flush-chain", name)
                if d.affinity and not (before and before.affinity):
                    tx.add("affinity-set", chain)
                tx.add("rules", chain)
                if before is not None and before.affinity and not d.affinity:
                    tx.add("delete-set", affinity_set(name))
            if before is not None and before.affinity and d.affinity:
                tx.add("flush-set", affinity_set(name))  # the numbers now name other endpoints: clients pick again
        _elements(tx, "vips", {v for v in vips_before if v not in self.vips},
                  {v for v in vips if v in self.vips and v not in vips_before})  # fmt: skip
        _elements(tx, "hairpin", {a for a in addrs_before if a not in self.hairpin},
                  {a for a in addrs if a in self.hairpin and a not in addrs_before})  # fmt: skip
        _map_elements(tx, "endpoints", {k: v for o in old.values() for k, v in o.endpoint_elements()},
                      {k: v for o in new.values() for k, v in o.endpoint_elements()})  # fmt: skip
        _map_elements(tx, "service-ips", {k: v for o in old.values() for k, v in o.service_ips},
                      {k: v for o in new.values() for k, v in o.service_ips})  # fmt: skip
        for name in sorted(set(old_chains) - set(new_chains)):
            tx.add("flush-chain", name)
            tx.add("delete-chain", name)
            if old_chains[name].dnat is not None and old_chains[name].dnat.affinity:
                tx.add("delete-set", affinity_set(name))
        return tx


def _decrement(counter: Counter, items) -> None:
    for item in items:
        counter[item] -= 1
        if counter[item] <= 0:
            del counter[item]


# The fixed part of the ruleset is data: base chains and what they hold.
_DNAT = tuple(f"dnat-{p.lower()}" for p in PROTOCOLS)
FIXED_CHAINS = (
    Chain("services", rules=("service-vmap",)),
    Chain("nat-prerouting", hook="prerouting", kind="nat", priority=-100, rules=("jump-services", *_DNAT)),
    Chain("nat-output", hook="output", kind="nat", priority=-100, rules=("jump-services", *_DNAT)),
    Chain("nat-postrouting", hook="postrouting", kind="nat", priority=100, rules=("reset-mark", "hairpin-masquerade")),
    Chain("filter-forward", hook="forward", kind="filter", priority=-10, rules=("reject-vips-tcp", "reject-vips")),
    Chain("filter-output", hook="output", kind="filter", priority=-10, rules=("reject-vips-tcp", "reject-vips")),
)



def service_objects(svc: Service, family: str) -> ServiceObjects | None:
    """One Service's objects in one family's table (None: it has no VIP of that family)."""
    vip = svc.vip(family)  # None for a Headless or ExternalName Service too
    if vip is None:
        return None
    vip_s = str(vip)
    affinity = svc.affinity_seconds
    chains, service_ips = [], []
    for port in svc.ports:
        name = chain_name(svc, port.protocol, port.port)
        chains.append(Chain(name, dnat=Dnat(svc.targets(port, family), affinity)))
        service_ips.append(((vip_s, port.protocol, port.port), name))
    hairpin = frozenset(addr for c in chains for addr, _ in c.dnat.targets)  # type: ignore[union-attr]
    return ServiceObjects(vip_s, tuple(chains), tuple(service_ips), hairpin)


def build(table: ServiceTable, family: str = IPV4) -> Ruleset:
    """The desired ruleset of one family for every Service with a VIP of that family."""
    rs = Ruleset(FAMILIES[family])
    for svc in sorted(table, key=lambda s: s.key):
        objs = service_objects(svc, family)
        if objs is not None:
            rs._add(svc.key, objs)
    return rs



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
    tx.add("elements", "endpoints", list(desired.endpoint_elements().items()))
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


def _map_elements(tx: Transaction, name: str, before: dict, after: dict) -> None:
    """A map's changes: a key whose value changed is deleted and added again in the same transaction."""
    _elements(tx, name, {k for k, v in before.items() if after.get(k) != v},
              {(k, v) for k, v in after.items() if before.get(k) != v})  # fmt: skip


def _ordered(chains) -> list[Chain]:
    """Helper chains before base chains, so a base chain's jump finds its target filled."""
    return sorted(chains, key=lambda c: (c.base, c.name))


# ---- the text form (tests, logs, the operator's reference) -----------------------------------------------------


def render(rs: Ruleset) -> str:
    """The ruleset as ``nft -f`` text, sorted by object, rules in order: what tests compare, and
    what ``nft -f`` loads to the same kernel objects svcdns programs."""
    fam = rs.family
    addr = "ipv4_addr" if fam == "ip" else "ipv6_addr"
    lines = [f"table {fam} {TABLE} {{"]
    lines.append(f"\tset vips {{ type {addr}; {_elems(sorted(rs.vips))}}}")
    lines.append(f"\tset hairpin {{ type {addr} . {addr}; {_elems(f'{a} . {a}' for a in sorted(rs.hairpin))}}}")
    svc_elems = (f"{v} . {p.lower()} . {port} : goto {c}" for (v, p, port), c in sorted(rs.service_ips.items()))
    lines.append(f"\tmap service-ips {{ type {addr} . inet_proto . inet_service : verdict; {_elems(svc_elems)}}}")
    ep_elems = (f"{v} . {p.lower()} . {port} . {n} : {a} . {tp}" for (v, p, port, n), (a, tp) in rs.endpoint_elements().items())
    lines.append(f"\tmap endpoints {{ type {addr} . inet_proto . inet_service . mark : {addr} . inet_service; "
                 f"{_elems(ep_elems)}}}")  # fmt: skip
    for name in sorted(rs.chains):
        d = rs.chains[name].dnat
        if d is not None and d.affinity:
            lines.append(f"\tmap {affinity_set(name)} {{ type {addr} : mark; flags timeout; timeout {d.affinity}s; }}")
    for name in sorted(rs.chains):
        chain = rs.chains[name]
        lines.append(f"\tchain {name} {{")
        if chain.base:
            lines.append(f"\t\ttype {chain.kind} hook {chain.hook} priority {chain.priority}; policy accept;")
        for rule in chain.rules:
            lines.append("\t\t" + FIXED_TEXT[rule].format(ip=fam))
        if chain.dnat is not None and chain.dnat.targets:
            lines.append(f"\t\tct mark set numgen random mod {len(chain.dnat.targets)} offset 1")
            if chain.dnat.affinity:
                aff = affinity_set(name)
                lines.append(f"\t\tct mark set {fam} saddr map @{aff}")
                lines.append(f"\t\tupdate @{aff} {{ {fam} saddr : ct mark }}")
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _elems(items) -> str:
    items = list(items)
    return f"elements = {{ {', '.join(items)} }} " if items else ""


FIXED_TEXT = {
    "service-vmap": "{ip} daddr . meta l4proto . th dport vmap @service-ips",
    "jump-services": "jump services",
    **{f"dnat-{p.lower()}": f"meta l4proto {p.lower()} dnat {{ip}} to {{ip}} daddr . meta l4proto . th dport . ct mark map @endpoints"
       for p in PROTOCOLS},
    "reset-mark": "ct original {ip} daddr @vips ct mark set 0",
    "hairpin-masquerade": "{ip} saddr . {ip} daddr @hairpin masquerade",
    "reject-vips-tcp": "{ip} daddr @vips meta l4proto tcp reject with tcp reset",
    "reject-vips": "{ip} daddr @vips reject",
}  # fmt: skip
