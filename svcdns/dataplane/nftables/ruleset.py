"""The ruleset planner: ServiceTable -> the nftables objects svcdns wants, and (current, desired) ->
the smallest transaction that gets there. Pure: no I/O; :mod:`.encode` turns the transaction into netlink messages.

The shape (one table per family, ``ip svcdns`` / ``ip6 svcdns``), chosen for what the kernel costs to
*program* (DESIGN.md section 7): any transaction that adds a rule holding a jump, a nat, a lookup or
an immediate, or a verdict-map element, makes the kernel re-validate what the base chains reach;
one that adds only data-map elements skips that walk. And every commit walks every chain of every
table (~14 ms at 100k chains), so a Service is elements, not chains:

    set vips            { type ipv4_addr }                         every VIP
    set hairpin         { type ipv4_addr . ipv4_addr }             endpoint . endpoint: pod to its own Service
    map service-ips     { type ipv4_addr . inet_proto . inet_service : verdict }   sticky port -> goto its chain
    map counts          { type ipv4_addr . inet_proto . inet_service : mark }      port -> N usable endpoints
    map draws           { type mark : verdict }                    N -> goto draw-N
    map endpoints       { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service }
                                                                   VIP.proto.port.pick -> endpoint . target port
    chain services      { ip daddr . meta l4proto . th dport vmap @service-ips
                          ct mark set ip daddr . meta l4proto . th dport map @counts
                          ip daddr @vips ct mark vmap @draws }
    chain draw-N        { ct mark set numgen random mod N offset 1 }   one per N in use
    chain nat-prerouting  { type nat hook prerouting priority dstnat; jump services
                            meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport . ct mark map @endpoints
                            (the same for udp and sctp) }
    chain nat-output      { type nat hook output priority -100; the same }
    chain nat-postrouting { type nat hook postrouting priority srcnat; ct original ip daddr @vips ct mark set 0
                            ip saddr . ip daddr @hairpin masquerade }
    chain filter-forward / filter-output { type filter ...; ip daddr @vips reject (tcp: with tcp reset)
                            ip daddr <service CIDR> [fib daddr type != local] reject (tcp: with tcp reset) }
    chain commit        { comment "svcdns pid P commit C" }     rewritten by every commit (footprint.py)

A new connection to a VIP:port looks up its port's number of endpoints N into the connection's
conntrack mark, goes to ``draw-N``, which draws its endpoint's number (1..N, uniform) into the mark;
back in the base chain one lookup of ``VIP . proto . port . number`` in the ``endpoints`` map gives
the endpoint and the DNAT; postrouting sets the mark back to 0, the value a new connection starts
with. (A register cannot carry the number across rules: this kernel refuses loads from registers a
rule did not set itself, and ``meta mark set`` would cost the validation walk, ``ct mark set`` does
not.) Per packet: four hash lookups and one rule, whatever the number of Services or endpoints.
Endpoint churn changes a port's ``counts`` and ``endpoints`` elements only; a number of endpoints
no port had before adds its ``draw-N`` chain and ``draws`` element, whose validation walk reaches a
handful of chains. The price: svcdns owns the conntrack mark of new connections to VIPs between the
dstnat and srcnat hooks (README).

ClientIP session affinity gives a sticky port a chain of its own (the draw, then two rules and a map
of its own: client address -> number, entries expiring after the timeout) reached through
``service-ips``: a known client's number replaces the draw, and every connection refreshes its
client's entry. Those rules hold a lookup, so rewriting a sticky chain costs the validation walk;
its map is flushed whenever that port's endpoints change, since the numbers then name other endpoints.
A Service port without a usable endpoint has no count: nothing is drawn, the lookup misses, its
packets leave the nat hook still addressed to a VIP and the filter chains reject them at once (TCP
reset, ICMP port unreachable); so do packets to a port the Service does not have, and to an address
of the service CIDRs that no Service holds (but the node's own, the cluster DNS address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from immutables import Map

from ...model import IPV4, IPV6
from ...table import Key as ServiceKey
from ...table import ServiceTable
from .objects import (
    COMMIT,
    COUNTS,
    DRAWS,
    ENDPOINTS,
    FAMILIES,
    FIXED_SETS,
    HAIRPIN,
    SERVICE_IPS,
    VIPS,
    Chain,
    Dnat,
    Element,
    Key,
    ServiceObjects,
    SetDecl,
    affinity_decl,
    affinity_set,
    chain_name,
    commit_rule,
    draw_chain,
    fixed_chains,
)
from .transaction import (
    AddChain,
    AddElements,
    AddRules,
    AddSet,
    AddTable,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    FlushChain,
    FlushSet,
    Transaction,
    dump_table,
)


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Everything svcdns wants in one family's table: the objects of each Service, and how many
    Services use each VIP and each hairpin address (an element goes only with its last user).

    Never changed in place: :meth:`apply` returns the next Ruleset and the transaction that takes the
    kernel there; the dataplane keeps the new one only once the kernel accepted it."""

    family: str  # "ip" or "ip6"
    services: Map[ServiceKey, ServiceObjects] = field(default_factory=Map)
    vips: Map[str, int] = field(default_factory=Map)  # VIP -> Services using it
    hairpin: Map[str, int] = field(default_factory=Map)  # endpoint address -> Services
    draws: Map[int, int] = field(default_factory=Map)  # N -> ports drawing among N
    cidrs: tuple[str, ...] = ()  # the family's service CIDRs: what no Service holds there is rejected

    def chains(self) -> dict[str, Chain]:
        """Every chain: the fixed ones, the draws in use, then the sticky ports' by namespace/name."""
        out = {c.name: c for c in fixed_chains(self.cidrs)}
        out.update((c.name, c) for c in map(draw_chain, sorted(self.draws)))
        out.update((c.name, c) for key in sorted(self.services) for c in self.services[key].chains)
        return out

    def counts(self) -> dict[Key, tuple[int]]:
        return dict(sorted(kv for objs in self.services.values() for kv in objs.counts))

    def service_ips(self) -> dict[Key, str]:
        return dict(sorted(kv for objs in self.services.values() for kv in objs.service_ips))

    def endpoint_elements(self) -> dict[tuple[str, str, int, int], tuple[str, int]]:
        """Every ``endpoints`` map element, sorted."""
        return dict(sorted(e for objs in self.services.values() for e in objs.endpoint_elements()))

    def apply(self, table: ServiceTable, keys: Iterable[ServiceKey]) -> tuple[Ruleset, Transaction]:
        """The Ruleset for ``table``, given the keys of the Services that changed, and the ops that
        take the kernel along: new chains, rewritten chains (only where the number of endpoints or
        the affinity changed), element changes, then the chains that went. Costs what the changed
        Services cost."""
        family = IPV4 if self.family == "ip" else IPV6
        old = {k: self.services[k] for k in keys if k in self.services}
        new = {}
        for key in keys:
            svc = table.services.get(key)
            objs = service_objects(svc, family) if svc is not None else None
            if objs is not None:
                new[key] = objs
        vips, vips_changed = _recount(self.vips, [o.vip for o in old.values()], [o.vip for o in new.values()])
        draws, draws_changed = _recount(self.draws, [n for o in old.values() for _, (n,) in o.counts],
                                        [n for o in new.values() for _, (n,) in o.counts])  # fmt: skip
        hairpin, hairpin_changed = _recount(self.hairpin, [a for o in old.values() for a in o.hairpin],
                                            [a for o in new.values() for a in o.hairpin])  # fmt: skip
        after = Ruleset(self.family, _evolve(self.services, new, [k for k in old if k not in new]), vips, hairpin,
                        draws, self.cidrs)  # fmt: skip

        old_chains = {c.name: c for o in old.values() for c in o.chains}
        new_chains = {c.name: c for o in new.values() for c in o.chains}
        tx = Transaction(self.family)
        came = sorted(n for n in draws_changed if n in draws)
        for n in came:  # a number of endpoints no port had: its draw (numgen, ct set: no validation walk)
            tx.add(AddChain(draw_chain(n)))
            tx.add(AddRules(draw_chain(n)))
        if came:  # a verdict element: the kernel validates what the base chains reach, a handful of chains
            tx.add(AddElements(DRAWS, tuple(((n,), draw_chain(n).name) for n in came)))
        for name, chain in new_chains.items():
            if name not in old_chains:
                tx.add(AddChain(chain))
        for name, chain in new_chains.items():
            before = old_chains[name].dnat if name in old_chains else None
            d = chain.dnat
            assert d is not None
            if before == d:
                continue
            if before is None or before.shape != d.shape:
                if before is not None:
                    tx.add(FlushChain(name))
                if d.affinity and not (before and before.affinity):
                    tx.add(AddSet(affinity_decl(chain)))
                tx.add(AddRules(chain))
                if before is not None and before.affinity and not d.affinity:
                    tx.add(DeleteSet(affinity_set(name)))
            if before is not None and before.affinity and d.affinity:
                tx.add(FlushSet(affinity_set(name), "map"))  # the numbers now name other endpoints: clients pick again
        _set_elements(tx, VIPS, vips_changed, vips)
        _set_elements(tx, HAIRPIN, hairpin_changed, hairpin, pair=True)
        _map_elements(tx, ENDPOINTS, {k: v for o in old.values() for k, v in o.endpoint_elements()},
                      {k: v for o in new.values() for k, v in o.endpoint_elements()})  # fmt: skip
        _map_elements(tx, COUNTS, {k: v for o in old.values() for k, v in o.counts},
                      {k: v for o in new.values() for k, v in o.counts})  # fmt: skip
        _map_elements(tx, SERVICE_IPS, {k: v for o in old.values() for k, v in o.service_ips},
                      {k: v for o in new.values() for k, v in o.service_ips})  # fmt: skip
        went = sorted(n for n in draws_changed if n not in draws)
        if went:
            tx.add(DeleteElements(DRAWS, tuple((n,) for n in went)))
        for n in went:
            tx.add(FlushChain(draw_chain(n).name))
            tx.add(DeleteChain(draw_chain(n).name))
        for name in sorted(set(old_chains) - set(new_chains)):
            tx.add(FlushChain(name))
            tx.add(DeleteChain(name))
            dnat = old_chains[name].dnat
            if dnat is not None and dnat.affinity:
                tx.add(DeleteSet(affinity_set(name)))
        return after, tx


T = TypeVar("T", str, int)
K = TypeVar("K")
V = TypeVar("V")


def _recount(counts: Map[T, int], gone: list[T], came: list[T]) -> tuple[Map[T, int], set[T]]:
    """``counts`` with one use fewer of each of ``gone`` and one more of each of ``came``; and the
    items whose presence changed (counted from 0 to more, or down to 0)."""
    delta: dict[T, int] = {}
    for item in gone:
        delta[item] = delta.get(item, 0) - 1
    for item in came:
        delta[item] = delta.get(item, 0) + 1
    updates, deletes, changed = {}, [], set()
    for item, d in delta.items():
        if not d:
            continue
        before = counts.get(item, 0)
        now = before + d
        if now > 0:
            updates[item] = now
        else:
            deletes.append(item)
        if (before > 0) != (now > 0):
            changed.add(item)
    return _evolve(counts, updates, deletes), changed


def _evolve(m: Map[K, V], updates: Mapping[K, V], deletes: Iterable[K] = ()) -> Map[K, V]:
    """``m`` with ``deletes`` removed, then ``updates`` set; ``m`` stays as it was."""
    with m.mutate() as out:
        for k in deletes:
            out.pop(k, None)
        for k, v in updates.items():
            out[k] = v
        new: Map[K, V] = out.finish()
    return new


def service_objects(svc, family: str) -> ServiceObjects | None:
    """One Service's objects in one family's table (None: it has no VIP of that family)."""
    vip = svc.vip(family)  # None for a Headless or ExternalName Service too
    if vip is None:
        return None
    vip_s = str(vip)
    affinity = svc.affinity_seconds
    ports = []
    hairpin: dict[str, str] = {}  # also each address's one string, shared by the ports
    for port in svc.ports:
        targets = svc.targets(port, family)
        if hairpin:
            targets = tuple((hairpin.get(a, a), p) for a, p in targets)
        name = chain_name(svc, port.protocol, port.port) if affinity else ""  # only sticky ports have chains
        ports.append(((vip_s, port.protocol, port.port), name, Dnat.of(targets, affinity)))
        hairpin.update((addr, addr) for addr, _ in targets)
    if len(ports) == 1:  # its addresses are the hairpin ones, once each, in order (see ServiceObjects)
        return ServiceObjects(vip_s, tuple(ports), ports[0][2].addresses)
    return ServiceObjects(vip_s, tuple(ports), tuple(hairpin))


def build(table: ServiceTable, family: str = IPV4, cidrs: Iterable[str] = ()) -> Ruleset:
    """The desired ruleset of one family for every Service with a VIP of that family; ``cidrs``: the
    service CIDRs (those of the other family are left out), inside which an address no Service holds
    is rejected at once."""
    services: dict[ServiceKey, ServiceObjects] = {}
    vips: dict[str, int] = {}
    hairpin: dict[str, int] = {}
    draws: dict[int, int] = {}
    by_key = table.services
    for key in sorted(by_key):  # the table's key tuples, not new ones (svc.key): 5 MiB at 100k
        objs = service_objects(by_key[key], family)
        if objs is not None:
            services[key] = objs
            vips[objs.vip] = vips.get(objs.vip, 0) + 1
            for addr in objs.hairpin:
                hairpin[addr] = hairpin.get(addr, 0) + 1
            for _, (n,) in objs.counts:
                draws[n] = draws.get(n, 0) + 1
    version = 4 if family == IPV4 else 6
    mine = tuple(str(n) for n in map(ipaddress.ip_network, cidrs) if n.version == version)
    return Ruleset(FAMILIES[family], Map(services), Map(vips), Map(hairpin), Map(draws), mine)


def stamp(tx: Transaction, note: str) -> None:
    """End ``tx`` by rewriting the commit chain's one rule with ``note`` (what names this commit as
    svcdns's own): a process that rewrites the table without it leaves another rule, or none, there.
    A rule without expressions: the kernel does not re-validate the table for it."""
    tx.add(FlushChain(COMMIT))
    tx.add(AddRules(commit_rule(note)))


def plan(desired: Ruleset, present: set[str] | None = None, present_sets: set[str] | None = None) -> Transaction:
    """A full convergence of whatever the kernel holds to ``desired``: the table created if missing,
    every set flushed and refilled, every chain flushed and rewritten, and our chains in ``present``
    that are not desired deleted, in one transaction, so a restart or a drift repair never opens a
    window where a working VIP stops working."""
    tx = Transaction(desired.family)
    tx.add(AddTable())
    for decl in FIXED_SETS:
        tx.add(AddSet(decl))
        tx.add(FlushSet(decl.name, decl.kind))
    chains = desired.chains()
    for chain in chains.values():
        tx.add(AddChain(chain))
        tx.add(FlushChain(chain.name))
        if chain.dnat is not None and chain.dnat.affinity:
            # a full convergence cannot tell which remembered clients point at endpoints that went
            # meanwhile, so sticky clients pick again once (after a restart or a drift repair)
            tx.add(AddSet(affinity_decl(chain)))
            tx.add(FlushSet(affinity_set(chain.name), "map"))
    for chain in sorted(chains.values(), key=lambda c: (c.base, c.name)):  # a jump finds its target filled
        tx.add(AddRules(chain))
    for decl, elements in _elements_of(desired):
        if elements:
            tx.add(AddElements(decl, elements if isinstance(elements, EndpointElements) else tuple(elements)))
    for name in sorted((present or set()) - set(chains)):
        tx.add(FlushChain(name))
        tx.add(DeleteChain(name))
    wanted = {affinity_set(c.name) for c in chains.values() if c.dnat is not None and c.dnat.affinity}
    for name in sorted((present_sets or set()) - wanted):
        if name.startswith("aff-"):
            tx.add(DeleteSet(name))
    return tx


class EndpointElements:
    """A full sync's ``endpoints`` elements, in :meth:`Ruleset.endpoint_elements`' order, made as
    they are encoded (a message's worth at a time) and again at each iteration, rather than held:
    as tuples, the elements of 100k Services of 10 endpoints were ~200 MiB of the start's peak."""

    __slots__ = ("ports",)

    def __init__(self, rs: Ruleset) -> None:
        by_key: dict[Key, list[Dnat]] = {}
        for objs in rs.services.values():
            for key, _, dnat in objs.ports:
                by_key.setdefault(key, []).append(dnat)
        self.ports = sorted(by_key.items())  # one entry per Service port: the elements follow in order

    def __bool__(self) -> bool:
        return any(d.addresses for _, dnats in self.ports for d in dnats)

    def __iter__(self) -> Iterator[Element]:
        for key, dnats in self.ports:
            if len(dnats) == 1:
                for n, target in enumerate(dnats[0].targets, 1):
                    yield (*key, n), target
            else:  # a port key two Services share (a VIP being moved): as the dict of them all has it
                yield from dict(sorted(((*key, n), t) for d in dnats for n, t in enumerate(d.targets, 1))).items()


def _elements_of(rs: Ruleset) -> list[tuple[SetDecl, Iterable[Element]]]:
    return [
        (VIPS, [((v,), None) for v in sorted(rs.vips)]),
        (HAIRPIN, [((a, a), None) for a in sorted(rs.hairpin)]),
        (ENDPOINTS, EndpointElements(rs)),
        (SERVICE_IPS, [(k, c) for k, c in rs.service_ips().items()]),
        (COUNTS, list(rs.counts().items())),
        (DRAWS, [((n,), draw_chain(n).name) for n in sorted(rs.draws)]),
    ]


def _set_elements(tx: Transaction, decl: SetDecl, changed: set[str], now: Mapping[str, int], pair: bool = False) -> None:
    def key(item: str) -> tuple:
        return (item, item) if pair else (item,)

    removed = sorted(i for i in changed if i not in now)
    added = sorted(i for i in changed if i in now)
    if removed:
        tx.add(DeleteElements(decl, tuple(key(i) for i in removed)))
    if added:
        tx.add(AddElements(decl, tuple((key(i), None) for i in added)))


def _map_elements(tx: Transaction, decl: SetDecl, before: dict, after: dict) -> None:
    """A map's changes: a key whose value changed is deleted and added again in the same transaction
    (the kernel refuses to add a key that exists with another value)."""
    removed = sorted(k for k, v in before.items() if after.get(k) != v)
    added = sorted((k, v) for k, v in after.items() if before.get(k) != v)
    if removed:
        tx.add(DeleteElements(decl, tuple(removed)))
    if added:
        tx.add(AddElements(decl, tuple(added)))


def render(rs: Ruleset) -> str:
    """The ruleset as ``nft -f`` text, sorted by object, rules in order: what tests compare (the fake
    kernel dumps the same form), and what ``nft -f`` loads to the same kernel objects svcdns programs."""
    chains = rs.chains()
    sets: list[tuple[SetDecl, Iterable[Element]]] = _elements_of(rs)
    sets += [(affinity_decl(c), []) for c in chains.values() if c.dnat is not None and c.dnat.affinity]
    return dump_table(rs.family, sets, [(c, c.body()) for c in chains.values()])
