"""A fake nftables kernel for tests (knftables' Fake): runs a Transaction the way the kernel would,
keeps svcdns's table in memory, dumps it as text, and traces packets through its chains.

:meth:`FakeKernel.run` applies a transaction to a copy and keeps the copy only if every operation
succeeded, so a refused transaction leaves the previous state, as the kernel's does. It refuses what
the kernel refuses: a rule or an element naming a chain or a set that does not exist (ENOENT), a map
element added again with another value (EEXIST), deleting a chain or a set still in use (EBUSY), or
anything missing that an operation flushes or deletes (ENOENT).
"""

from __future__ import annotations

import copy
import errno
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ...errors import DataplaneError
from .objects import (
    Chain,
    Comment,
    DnatMap,
    Draw,
    InNet,
    Jump,
    Kind,
    MapValue,
    Masquerade,
    Match,
    NotLocal,
    Proto,
    Reject,
    Rule,
    SetDecl,
    SetMark,
    Update,
    VerdictMap,
    sets_used,
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
    Op,
    Transaction,
    dump_table,
)


@dataclass
class FakeSet:
    decl: SetDecl
    elements: dict[tuple, tuple | str | None] = field(default_factory=dict)


@dataclass
class FakeChain:
    chain: Chain
    rules: list[Rule] = field(default_factory=list)


@dataclass
class FakeTable:
    sets: dict[str, FakeSet] = field(default_factory=dict)
    chains: dict[str, FakeChain] = field(default_factory=dict)


def _refused(code: int, what: str) -> DataplaneError:
    return DataplaneError(f"{os.strerror(code)} ({what})", code)


class FakeKernel:
    def __init__(self, local: tuple[str, ...] = ()) -> None:
        self.tables: dict[str, FakeTable] = {}  # family -> svcdns's table
        self.local = set(local)  # the node's own addresses (fib daddr type local), say the cluster DNS address

    def run(self, tx: Transaction) -> None:
        """Apply ``tx`` whole, or raise :class:`DataplaneError` with the errno and change nothing."""
        work = copy.deepcopy(self.tables.get(tx.family))
        for op in tx:
            work = _apply(work, op)
        if work is not None:
            self.tables[tx.family] = work

    def present(self, family: str) -> tuple[set[str], set[str]]:
        """The chains and sets of the table, as :func:`.netlink.present` reads them."""
        t = self.tables.get(family)
        return (set(t.chains), set(t.sets)) if t else (set(), set())

    def dump(self, family: str = "ip") -> str:
        """The table in :func:`.ruleset.render`'s form ("" when there is none)."""
        t = self.tables.get(family)
        if t is None:
            return ""
        return dump_table(family, [(s.decl, s.elements.items()) for s in t.sets.values()],
                          [(c.chain, c.rules) for c in t.chains.values()])  # fmt: skip

    def trace(self, packet: Packet, *, routed: bool, draw: Callable[[int], int] = lambda n: 0) -> Trace:
        """Walk a new connection's first packet through the hooks: from a pod through this node
        (``routed``: prerouting, forward, postrouting) or from the node itself (output, postrouting).
        ``draw(n)`` is what ``numgen random mod n`` gives. Affinity entries it updates stay. A routed
        packet to one of the node's own addresses is delivered after prerouting (input, not forward)."""
        table = self.tables[packet.family]
        hooks = [("nat", "prerouting"), ("filter", "forward")] if routed else [("nat", "output"), ("filter", "output")]
        state = _Walk(table, packet, draw, self.local)
        for kind, hook in [*hooks, ("nat", "postrouting")]:
            if routed and hook == "forward" and state.fields["daddr"] in self.local:
                break  # delivered to the node: input, which svcdns has no chain in
            for fc in sorted((c for c in table.chains.values() if (c.chain.kind, c.chain.hook) == (kind, hook)),
                             key=lambda c: c.chain.priority):  # fmt: skip
                state.chain(fc.chain.name)
                if state.rejected:
                    return Trace("REJECT", None, False)
        daddr, dport = state.fields["daddr"], state.fields["dport"]
        assert isinstance(daddr, str) and isinstance(dport, int)
        return Trace("ACCEPT", (daddr, dport) if state.dnat else None, state.masquerade)


@dataclass(frozen=True)
class Packet:
    saddr: str
    daddr: str
    protocol: str = "TCP"
    dport: int = 80
    family: str = "ip"
    iifkind: str = ""  # the kinds of the interfaces it comes in on and goes out of ("bridge")
    oifkind: str = ""


@dataclass(frozen=True)
class Trace:
    verdict: str  # ACCEPT or REJECT
    dnat: tuple[str, int] | None  # where the connection was translated to
    masquerade: bool


class _Walk:
    """One packet's walk: its fields as the rules see them, and what happened to it."""

    def __init__(self, table: FakeTable, p: Packet, draw: Callable[[int], int], local: set[str]) -> None:
        self.table, self.draw, self.local = table, draw, local
        self.fields: dict[str, object] = {"saddr": p.saddr, "daddr": p.daddr, "l4proto": p.protocol,
                                          "dport": p.dport, "ctmark": 0, "ct-original-daddr": p.daddr,
                                          "iifkind": p.iifkind, "oifkind": p.oifkind}  # fmt: skip
        self.rejected = self.dnat = self.masquerade = False

    def key(self, fields: tuple[str, ...]) -> tuple:
        return tuple(self.fields[f] for f in fields)

    def chain(self, name: str) -> bool:
        """Run a chain; True when a terminal verdict ended the hook."""
        for rule in self.table.chains[name].rules:
            done = self.rule(rule)
            if done is not None:
                return done
        return False

    def rule(self, rule: Rule) -> bool | None:
        """None: on to the next rule; else the chain ends (True: the hook too)."""
        for s in rule:
            match s:
                case Match(fields, name):
                    if self.key(fields) not in self.table.sets[name].elements:
                        return None
                case Proto(protocol):
                    if self.fields["l4proto"] != protocol:
                        return None
                case VerdictMap(fields, name):
                    target = self.table.sets[name].elements.get(self.key(fields))
                    if target is None:
                        return None
                    assert isinstance(target, str)
                    return self.chain(target)  # goto: the chain ends where the target ends
                case Jump(chain):
                    if self.chain(chain):
                        return True
                case DnatMap(fields, name):
                    target = self.table.sets[name].elements.get(self.key(fields))
                    if target is None:
                        return None
                    assert isinstance(target, tuple)
                    self.fields["daddr"], self.fields["dport"] = target
                    self.dnat = True
                    return True
                case SetMark(Draw(modulus)):
                    n = self.draw(modulus)
                    assert 0 <= n < modulus
                    self.fields["ctmark"] = n + 1
                case SetMark(MapValue(fields, name)):
                    known = self.table.sets[name].elements.get(self.key(fields))
                    if known is None:
                        return None
                    assert isinstance(known, tuple)
                    self.fields["ctmark"] = known[0]
                case SetMark(int(mark)):
                    self.fields["ctmark"] = mark
                case Update(name, fields, _):
                    self.table.sets[name].elements[self.key(fields)] = (self.fields["ctmark"],)
                case InNet(field, network):
                    if ipaddress.ip_address(str(self.fields[field])) not in ipaddress.ip_network(network):
                        return None
                case NotLocal():
                    if self.fields["daddr"] in self.local:
                        return None
                case Comment():
                    pass
                case Kind(direction, kind):
                    if self.fields[f"{direction}kind"] != kind:
                        return None
                case Masquerade():
                    self.masquerade = True
                    return True
                case Reject():
                    self.rejected = True
                    return True
        return None


def _apply(t: FakeTable | None, op: Op) -> FakeTable | None:
    if isinstance(op, AddTable):
        return t or FakeTable()
    if t is None:
        raise _refused(errno.ENOENT, f"no table for {type(op).__name__}")
    match op:
        case AddChain(chain):
            t.chains.setdefault(chain.name, FakeChain(chain))
        case FlushChain(name):
            _chain(t, name).rules.clear()
        case DeleteChain(name):
            fc = _chain(t, name)
            if fc.rules or _chain_users(t, name):
                raise _refused(errno.EBUSY, f"delete chain {name}")
            del t.chains[name]
        case AddRules(chain):
            fc = _chain(t, chain.name)
            for rule in chain.body():
                for name in sets_used(rule):
                    _set(t, name)
                for s in rule:
                    if isinstance(s, Jump):
                        _chain(t, s.chain)
                fc.rules.append(rule)
        case AddSet(decl):
            have = t.sets.get(decl.name)
            if have is None:
                t.sets[decl.name] = FakeSet(decl)
            elif have.decl != decl:
                raise _refused(errno.EEXIST, f"add set {decl.name} with other types")
        case FlushSet(name):
            _set(t, name).elements.clear()
        case DeleteSet(name):
            _set(t, name)
            if any(name in sets_used(r) for c in t.chains.values() for r in c.rules):
                raise _refused(errno.EBUSY, f"delete set {name}")
            del t.sets[name]
        case AddElements(decl, elements):
            fs = _set(t, decl.name)
            for key, data in elements:
                if isinstance(data, str):
                    _chain(t, data)
                if key in fs.elements and fs.elements[key] != data:
                    raise _refused(errno.EEXIST, f"add {decl.name} elements")
                fs.elements[key] = data
        case DeleteElements(decl, keys):
            fs = _set(t, decl.name)
            for key in keys:
                if key not in fs.elements:
                    raise _refused(errno.ENOENT, f"delete {decl.name} elements")
                del fs.elements[key]
    return t


def _chain(t: FakeTable, name: str) -> FakeChain:
    if name not in t.chains:
        raise _refused(errno.ENOENT, f"chain {name}")
    return t.chains[name]


def _set(t: FakeTable, name: str) -> FakeSet:
    if name not in t.sets:
        raise _refused(errno.ENOENT, f"set {name}")
    return t.sets[name]


def _chain_users(t: FakeTable, name: str) -> bool:
    """Whether a rule jumps to the chain or a verdict map element goes to it."""
    jumps = any(isinstance(s, Jump) and s.chain == name for c in t.chains.values() for r in c.rules for s in r)
    return jumps or any(data == name for s in t.sets.values() for data in s.elements.values())
