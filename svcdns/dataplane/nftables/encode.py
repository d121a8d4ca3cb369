"""A planned Transaction -> the netlink messages of one batch.

The messages are packed here with ``struct``, because pyroute2's generic encoder costs ~0.4 ms a
message and a 10k-Service full sync has ~50k of them; register numbers, payload offsets, set key
types and verdicts live here, attribute numbers in :mod:`.netlink`.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import struct

from .netlink import (
    ELEMENTS_PER_MESSAGE,
    HOOKS,
    LIST_ELEM,
    NF_NAT_RANGE_MAP_IPS,
    NF_NAT_RANGE_PROTO_SPECIFIED,
    NFPROTO,
    NFT_CT_DIR_ORIGINAL,
    NFT_CT_DST_IP,
    NFT_CT_DST_IP6,
    NFT_CT_MARK,
    NFT_DATA_VERDICT,
    NFT_DYNSET_OP_UPDATE,
    NFT_GOTO,
    NFT_JUMP,
    NFT_META_L4PROTO,
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSET,
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM,
    NFT_MSG_NEWTABLE,
    NFT_SET_EVAL,
    NFT_SET_MAP,
    NFT_SET_TIMEOUT,
    NLM_F_APPEND,
    NLM_F_CREATE,
    PROTO_NUMBERS,
    T_IPV4,
    T_IPV6,
    T_MARK,
    T_PROTO,
    T_SERVICE,
    Msg,
    be32,
    nest,
    nla,
    string,
    value,
    verdict,
)
from .objects import TABLE, Chain, affinity_set
from .transaction import Transaction


def expr(kind: str, *attrs: bytes) -> bytes:
    return nest(LIST_ELEM, string("NFTA_EXPR_NAME", kind), nest("NFTA_EXPR_DATA", *attrs))


def payload(dreg: int, base: int, offset: int, length: int) -> bytes:
    return expr("payload", be32("NFTA_PAYLOAD_DREG", dreg), be32("NFTA_PAYLOAD_BASE", base),
                be32("NFTA_PAYLOAD_OFFSET", offset), be32("NFTA_PAYLOAD_LEN", length))  # fmt: skip


def meta_l4proto(dreg: int) -> bytes:
    return expr("meta", be32("NFTA_META_KEY", NFT_META_L4PROTO), be32("NFTA_META_DREG", dreg))


def l4proto_is(proto: int) -> bytes:
    return meta_l4proto(1) + expr("cmp", be32("NFTA_CMP_SREG", 1), be32("NFTA_CMP_OP", 0),
                                  value("NFTA_CMP_DATA", bytes([proto])))  # fmt: skip


def lookup(set_name: str, sreg: int, dreg: int | None = None, set_id: int | None = None) -> bytes:
    parts = [string("NFTA_LOOKUP_SET", set_name), be32("NFTA_LOOKUP_SREG", sreg)]
    if dreg is not None:
        parts.append(be32("NFTA_LOOKUP_DREG", dreg))
    if set_id is not None:
        parts.append(be32("NFTA_LOOKUP_SET_ID", set_id))
    return expr("lookup", *parts)


def ct_load(key: int, dreg: int, direction: int | None = None) -> bytes:
    parts = [be32("NFTA_CT_KEY", key), be32("NFTA_CT_DREG", dreg)]
    if direction is not None:
        parts.append(nla("NFTA_CT_DIRECTION", bytes([direction])))
    return expr("ct", *parts)


def ct_set_mark(sreg: int) -> bytes:
    return expr("ct", be32("NFTA_CT_KEY", NFT_CT_MARK), be32("NFTA_CT_SREG", sreg))


def reject(kind: int, code: int) -> bytes:
    return expr("reject", be32("NFTA_REJECT_TYPE", kind), nla("NFTA_REJECT_ICMP_CODE", bytes([code])))


class Encoder:
    """Turns a Transaction into netlink messages for one family's table."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.nfproto = NFPROTO[family]
        v6 = family == "ip6"
        self.alen = 16 if v6 else 4
        self.saddr, self.daddr = (8, 24) if v6 else (12, 16)
        self.addr_type = T_IPV6 if v6 else T_IPV4
        self.unreach_code = 4 if v6 else 3  # ICMPv6 / ICMP port unreachable
        self.ids = itertools.count(1)

    @staticmethod
    def reg(unit: int) -> int:
        """The register holding 32-bit unit ``unit`` of a concatenation (nft's numbering)."""
        return 1 + unit // 4 if unit % 4 == 0 else 8 + unit

    def pack(self, address: str) -> bytes:
        return ipaddress.ip_address(address).packed

    def encode(self, tx: Transaction) -> list[Msg]:
        out: list[Msg] = []
        for op in tx:
            out.extend(getattr(self, "op_" + op[0].replace("-", "_"))(*op[1:]))
        return out

    # -- tables, chains, sets
    def op_table(self) -> list[Msg]:
        return [
            Msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, string("NFTA_TABLE_NAME", TABLE), f"add table {self.family} {TABLE}")
        ]

    def op_chain(self, chain: Chain) -> list[Msg]:
        body = string("NFTA_CHAIN_TABLE", TABLE) + string("NFTA_CHAIN_NAME", chain.name)
        if chain.base:
            hook = be32("NFTA_HOOK_HOOKNUM", HOOKS[chain.hook]) + be32("NFTA_HOOK_PRIORITY", chain.priority)  # type: ignore[index]
            body += nest("NFTA_CHAIN_HOOK", hook) + string("NFTA_CHAIN_TYPE", chain.kind) + be32("NFTA_CHAIN_POLICY", 1)
        return [Msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, body, f"add chain {chain.name}")]

    def op_flush_chain(self, name: str) -> list[Msg]:
        body = string("NFTA_RULE_TABLE", TABLE) + string("NFTA_RULE_CHAIN", name)
        return [Msg(NFT_MSG_DELRULE, 0, body, f"flush chain {name}")]

    def op_delete_chain(self, name: str) -> list[Msg]:
        body = string("NFTA_CHAIN_TABLE", TABLE) + string("NFTA_CHAIN_NAME", name)
        return [Msg(NFT_MSG_DELCHAIN, 0, body, f"delete chain {name}")]

    def op_set(self, name: str) -> list[Msg]:
        body = string("NFTA_SET_TABLE", TABLE) + string("NFTA_SET_NAME", name) + be32("NFTA_SET_ID", next(self.ids))
        if name == "vips":
            body += be32("NFTA_SET_KEY_TYPE", self.addr_type) + be32("NFTA_SET_KEY_LEN", self.alen)
        elif name == "hairpin":
            body += be32("NFTA_SET_KEY_TYPE", _concat(self.addr_type, self.addr_type)) + be32(
                "NFTA_SET_KEY_LEN", 2 * self.alen
            )
        elif name == "endpoints":  # VIP . proto . port . number -> endpoint . port
            body += (be32("NFTA_SET_FLAGS", NFT_SET_MAP)
                     + be32("NFTA_SET_KEY_TYPE", _concat(self.addr_type, T_PROTO, T_SERVICE, T_MARK))
                     + be32("NFTA_SET_KEY_LEN", self.alen + 12) + be32("NFTA_SET_DATA_TYPE", _concat(self.addr_type, T_SERVICE))
                     + be32("NFTA_SET_DATA_LEN", self.alen + 4))  # fmt: skip
        else:  # service-ips: a verdict map
            body += (be32("NFTA_SET_FLAGS", NFT_SET_MAP) + be32("NFTA_SET_KEY_TYPE", _concat(self.addr_type, T_PROTO, T_SERVICE))
                     + be32("NFTA_SET_KEY_LEN", self.alen + 8) + be32("NFTA_SET_DATA_TYPE", NFT_DATA_VERDICT)
                     + be32("NFTA_SET_DATA_LEN", 16))  # fmt: skip
        return [Msg(NFT_MSG_NEWSET, NLM_F_CREATE, body, f"add set {name}")]

    def op_affinity_set(self, chain: Chain) -> list[Msg]:
        """The ClientIP affinity map of a Service port: client address -> its endpoint's number, each
        entry expiring ``affinity`` seconds after the client was last seen."""
        d = chain.dnat
        assert d is not None
        name = affinity_set(chain.name)
        body = (string("NFTA_SET_TABLE", TABLE) + string("NFTA_SET_NAME", name) + be32("NFTA_SET_ID", next(self.ids))
                + be32("NFTA_SET_FLAGS", NFT_SET_MAP | NFT_SET_TIMEOUT | NFT_SET_EVAL)
                + be32("NFTA_SET_KEY_TYPE", self.addr_type) + be32("NFTA_SET_KEY_LEN", self.alen)
                + be32("NFTA_SET_DATA_TYPE", T_MARK) + be32("NFTA_SET_DATA_LEN", 4)
                + nla("NFTA_SET_TIMEOUT", struct.pack("!Q", d.affinity * 1000)))  # fmt: skip
        return [Msg(NFT_MSG_NEWSET, NLM_F_CREATE, body, f"add set {name}")]

    def op_delete_set(self, name: str) -> list[Msg]:
        body = string("NFTA_SET_TABLE", TABLE) + string("NFTA_SET_NAME", name)
        return [Msg(NFT_MSG_DELSET, 0, body, f"delete set {name}")]

    def op_flush_set(self, name: str) -> list[Msg]:
        body = string("NFTA_SET_ELEM_LIST_TABLE", TABLE) + string("NFTA_SET_ELEM_LIST_SET", name)
        return [Msg(NFT_MSG_DELSETELEM, 0, body, f"flush set {name}")]

    # -- elements
    def _element(self, name: str, item, with_data: bool) -> bytes:
        if name == "vips":
            return nest(LIST_ELEM, value("NFTA_SET_ELEM_KEY", self.pack(item)))
        if name == "hairpin":  # an endpoint address: the pair 'a . a' (a pod reaching itself)
            return nest(LIST_ELEM, value("NFTA_SET_ELEM_KEY", self.pack(item) * 2))
        key_, target = item if with_data else (item, None)
        key = self.pack(key_[0]) + bytes([PROTO_NUMBERS[key_[1]], 0, 0, 0]) + struct.pack("!H", key_[2]) + b"\0\0"
        if name == "endpoints":
            key += struct.pack("=I", key_[3])  # the mark, in host byte order as ct mark loads it
            data = (
                value("NFTA_SET_ELEM_DATA", self.pack(target[0]) + struct.pack("!H", target[1]) + b"\0\0")
                if with_data
                else b""
            )
        else:
            data = verdict("NFTA_SET_ELEM_DATA", NFT_GOTO, target) if with_data else b""
        return nest(LIST_ELEM, value("NFTA_SET_ELEM_KEY", key), data)

    def _elements(self, mtype: int, flags: int, name: str, items, with_data: bool, verb: str) -> list[Msg]:
        items = list(items)
        out = []
        for i in range(0, len(items), ELEMENTS_PER_MESSAGE):
            elems = b"".join(self._element(name, it, with_data) for it in items[i : i + ELEMENTS_PER_MESSAGE])
            body = (string("NFTA_SET_ELEM_LIST_TABLE", TABLE) + string("NFTA_SET_ELEM_LIST_SET", name)
                    + nest("NFTA_SET_ELEM_LIST_ELEMENTS", elems))  # fmt: skip
            out.append(Msg(mtype, flags, body, f"{verb} {name} elements"))
        return out

    def op_elements(self, name: str, items) -> list[Msg]:
        return self._elements(NFT_MSG_NEWSETELEM, NLM_F_CREATE, name, items, True, "add")

    def op_delete_elements(self, name: str, items) -> list[Msg]:
        return self._elements(NFT_MSG_DELSETELEM, 0, name, items, False, "delete")

    # -- rules
    def _rule(self, chain: str, *exprs: bytes) -> Msg:
        body = (
            string("NFTA_RULE_TABLE", TABLE) + string("NFTA_RULE_CHAIN", chain) + nest("NFTA_RULE_EXPRESSIONS", *exprs)
        )
        return Msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, body, f"add rule to {chain}")

    def op_rules(self, chain: Chain) -> list[Msg]:
        out = [self._rule(chain.name, *self.fixed(rule)) for rule in chain.rules]
        if chain.dnat is not None:
            out += self.draw(chain)
        return out

    def fixed(self, rule: str) -> list[bytes]:
        units = self.alen // 4
        if rule == "service-vmap":
            return [payload(1, 1, self.daddr, self.alen), meta_l4proto(self.reg(units)),
                    payload(self.reg(units + 1), 2, 2, 2), lookup("service-ips", 1, dreg=0)]  # fmt: skip
        if rule == "jump-services":
            return [
                expr("immediate", be32("NFTA_IMMEDIATE_DREG", 0), verdict("NFTA_IMMEDIATE_DATA", NFT_JUMP, "services"))
            ]
        if rule.startswith("dnat-"):  # VIP . proto . port . ct mark -> endpoint . port
            return [l4proto_is(PROTO_NUMBERS[rule[5:].upper()]), payload(1, 1, self.daddr, self.alen),
                    meta_l4proto(self.reg(units)), payload(self.reg(units + 1), 2, 2, 2),
                    ct_load(NFT_CT_MARK, self.reg(units + 2)), lookup("endpoints", 1, dreg=1), self._nat]  # fmt: skip
        if rule == "reset-mark":
            key = NFT_CT_DST_IP6 if self.alen == 16 else NFT_CT_DST_IP
            return [ct_load(key, 1, NFT_CT_DIR_ORIGINAL), lookup("vips", 1),
                    expr("immediate", be32("NFTA_IMMEDIATE_DREG", 1), value("NFTA_IMMEDIATE_DATA", bytes(4))),
                    ct_set_mark(1)]  # fmt: skip
        if rule == "hairpin-masquerade":
            return [payload(1, 1, self.saddr, self.alen), payload(self.reg(units), 1, self.daddr, self.alen),
                    lookup("hairpin", 1), expr("masq")]  # fmt: skip
        if rule == "reject-vips-tcp":
            return [payload(1, 1, self.daddr, self.alen), lookup("vips", 1), l4proto_is(6), reject(1, 0)]
        if rule == "reject-vips":
            return [payload(1, 1, self.daddr, self.alen), lookup("vips", 1), reject(0, self.unreach_code)]
        raise ValueError(f"unknown fixed rule {rule!r}")

    def draw(self, chain: Chain) -> list[Msg]:
        """``ct mark set numgen random mod N offset 1``: the endpoint's number, uniform over 1..N, for
        the base chain's ``endpoints`` lookup. Neither expression makes the kernel re-validate the
        table, so rewriting this rule is cheap. With ClientIP affinity, a known client's remembered
        number replaces the draw, and each connection refreshes its client's entry."""
        d = chain.dnat
        assert d is not None
        if not d.targets:
            return []
        draw = expr("numgen", be32("NFTA_NG_DREG", 1), be32("NFTA_NG_MODULUS", len(d.targets)),
                    be32("NFTA_NG_TYPE", 1), be32("NFTA_NG_OFFSET", 1))  # fmt: skip
        out = [self._rule(chain.name, draw, ct_set_mark(1))]
        if d.affinity:
            aff = affinity_set(chain.name)
            client = payload(1, 1, self.saddr, self.alen)
            mark = self.reg(self.alen // 4)
            remember = expr("dynset", string("NFTA_DYNSET_SET_NAME", aff), be32("NFTA_DYNSET_OP", NFT_DYNSET_OP_UPDATE),
                            be32("NFTA_DYNSET_SREG_KEY", 1), be32("NFTA_DYNSET_SREG_DATA", mark),
                            nla("NFTA_DYNSET_TIMEOUT", struct.pack("!Q", d.affinity * 1000)))  # fmt: skip
            out.append(self._rule(chain.name, client, lookup(aff, 1, dreg=mark), ct_set_mark(mark)))
            out.append(self._rule(chain.name, client, ct_load(NFT_CT_MARK, mark), remember))
        return out

    @functools.cached_property
    def _nat(self) -> bytes:
        proto_reg = self.reg(self.alen // 4)
        return expr("nat", be32("NFTA_NAT_TYPE", 1), be32("NFTA_NAT_FAMILY", self.nfproto),
                    be32("NFTA_NAT_REG_ADDR_MIN", 1), be32("NFTA_NAT_REG_ADDR_MAX", 1),
                    be32("NFTA_NAT_REG_PROTO_MIN", proto_reg), be32("NFTA_NAT_REG_PROTO_MAX", proto_reg),
                    be32("NFTA_NAT_FLAGS", NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED))  # fmt: skip


def _concat(*types: int) -> int:
    out = 0
    for t in types:
        out = (out << 6) | t
    return out


def encode(tx: Transaction) -> list[Msg]:
    return Encoder(tx.family).encode(tx)
