"""The transaction: what one sync sends, in order, as one netlink batch, all of it or none of it.

Each operation is a frozen dataclass; ``str(tx)`` is exactly what ``nft -f`` would load to do the same
(what tests compare and the DEBUG log shows). :func:`dump_table` is the ``nft list table`` form that
:func:`.ruleset.render` and the fake kernel share.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .objects import FIXED_SETS, TABLE, Chain, Element, Rule, SetDecl, rule_text


@dataclass(frozen=True, slots=True)
class AddTable:
    def text(self, family: str) -> str:
        return f"add table {family} {TABLE}"


@dataclass(frozen=True, slots=True)
class AddChain:
    chain: Chain

    def text(self, family: str) -> str:
        head = f"add chain {family} {TABLE} {self.chain.name}"
        return f"{head} {{ {chain_type(self.chain)} }}" if self.chain.base else head


@dataclass(frozen=True, slots=True)
class FlushChain:
    name: str

    def text(self, family: str) -> str:
        return f"flush chain {family} {TABLE} {self.name}"


@dataclass(frozen=True, slots=True)
class DeleteChain:
    name: str

    def text(self, family: str) -> str:
        return f"delete chain {family} {TABLE} {self.name}"


@dataclass(frozen=True, slots=True)
class AddRules:
    """Every rule of ``chain`` (:meth:`Chain.body`), appended in order: one line each."""

    chain: Chain

    def text(self, family: str) -> str:
        return "\n".join(f"add rule {family} {TABLE} {self.chain.name} {rule_text(r, family)}" for r in self.chain.body())


@dataclass(frozen=True, slots=True)
class AddSet:
    decl: SetDecl

    def text(self, family: str) -> str:
        return f"add {self.decl.kind} {family} {TABLE} {self.decl.name} {{ {self.decl.type_text(family)} }}"


@dataclass(frozen=True, slots=True)
class FlushSet:
    name: str
    kind: str = "set"  # or "map": nft names them apart

    def text(self, family: str) -> str:
        return f"flush {self.kind} {family} {TABLE} {self.name}"


@dataclass(frozen=True, slots=True)
class DeleteSet:
    name: str
    kind: str = "map"  # the only sets svcdns deletes are affinity maps

    def text(self, family: str) -> str:
        return f"delete {self.kind} {family} {TABLE} {self.name}"


@dataclass(frozen=True, slots=True)
class AddElements:
    decl: SetDecl
    elements: tuple[Element, ...] | Iterable[Element]  # a full sync's endpoints: made as encoded (ruleset.py)

    def text(self, family: str) -> str:
        elems = ", ".join(self.decl.element_text(e) for e in self.elements)
        return f"add element {family} {TABLE} {self.decl.name} {{ {elems} }}"


@dataclass(frozen=True, slots=True)
class DeleteElements:
    decl: SetDecl
    keys: tuple[tuple, ...]

    def text(self, family: str) -> str:
        return f"delete element {family} {TABLE} {self.decl.name} {{ {', '.join(map(self.decl.key_text, self.keys))} }}"


Op = AddTable | AddChain | FlushChain | DeleteChain | AddRules | AddSet | FlushSet | DeleteSet | AddElements | DeleteElements


@dataclass
class Transaction:
    """The operations of one sync for one family's table, in the order the kernel takes them."""

    family: str  # "ip" or "ip6"
    ops: list[Op] = field(default_factory=list)

    def add(self, op: Op) -> None:
        self.ops.append(op)

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def text(self) -> str:
        """The ``nft -f`` input that does what this transaction does."""
        return "".join(op.text(self.family) + "\n" for op in self.ops)

    __str__ = text


def chain_type(chain: Chain) -> str:
    return f"type {chain.kind} hook {chain.hook} priority {chain.priority}; policy accept;"


_SET_ORDER = {d.name: i for i, d in enumerate(FIXED_SETS)}


def dump_table(
    family: str, sets: Iterable[tuple[SetDecl, Iterable[Element]]], chains: Iterable[tuple[Chain, Iterable[Rule]]]
) -> str:
    """A table as ``nft -f`` text, sorted by object (the fixed sets first), elements sorted, rules in
    order: the form tests compare."""
    lines = [f"table {family} {TABLE} {{"]
    for decl, elements in sorted(sets, key=lambda s: (_SET_ORDER.get(s[0].name, len(_SET_ORDER)), s[0].name)):
        texts = [decl.element_text(e) for e in sorted(elements, key=lambda e: e[0])]
        elems = f"elements = {{ {', '.join(texts)} }} " if texts else ""
        lines.append(f"\t{decl.kind} {decl.name} {{ {decl.type_text(family)} {elems}}}")
    for chain, rules in sorted(chains, key=lambda c: c[0].name):
        lines.append(f"\tchain {chain.name} {{")
        if chain.base:
            lines.append(f"\t\t{chain_type(chain)}")
        lines.extend(f"\t\t{rule_text(r, family)}" for r in rules)
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"
