"""The nftables shell: a planned Transaction -> one netlink batch, sent to the kernel, all or nothing.

Attribute numbers come from pyroute2's nftables message definitions (its ``nla_map`` tables, which
follow the kernel's uapi); the messages themselves are packed here with ``struct``, because pyroute2's
generic encoder costs ~0.4 ms a message and a 10k-Service full sync has ~50k of them. Every netlink
detail of nftables lives in this module: register numbers, payload offsets, set key types, verdicts.

The batch is begin, the messages, end, on a NETLINK_NETFILTER socket of its own; only the last
message asks for an acknowledgement, and the kernel reports every refused message before it, so a
failed batch raises with the kernel's errno and what the message was doing, and leaves the previous
ruleset fully in place (the kernel aborted the whole transaction).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import itertools
import logging
import os
import socket
import struct
from dataclasses import dataclass

from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSET,
    NFT_MSG_DELSETELEM,
    NFT_MSG_DELTABLE,
    NFT_MSG_GETGEN,
    NFT_MSG_GETTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM,
    NFT_MSG_NEWTABLE,
    nft_chain_msg,
    nft_contains_expr,
    nft_data,
    nft_gen_msg,
    nft_rule_msg,
    nft_set_elem_list_msg,
    nft_set_msg,
    nft_table_msg,
)

from .guard import check_netns_guard
from .ruleset import TABLE, Chain, Transaction, affinity_set

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x200, 0x400, 0x800
NLA_F_NESTED = 0x8000
NFPROTO = {"ip": 2, "ip6": 10}
HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
ELEMENTS_PER_MESSAGE = 500
BATCH_BEGIN, BATCH_END = 0x10, 0x11
NLMSG_ERROR = 2
# nft's datatype numbers (for `nft list` to print our sets legibly; the kernel only checks lengths)
T_INTEGER, T_IPV4, T_IPV6, T_PROTO, T_SERVICE, T_MARK = 4, 7, 8, 12, 13, 19
NFT_DATA_VERDICT = 0xFFFFFF00
NFT_JUMP, NFT_GOTO = -3, -4
NFT_SET_MAP, NFT_SET_TIMEOUT, NFT_SET_EVAL = 0x8, 0x10, 0x20
NFT_DYNSET_OP_UPDATE = 1
NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PROTO_SPECIFIED = 0x1, 0x2
NFT_META_L4PROTO = 16
NFT_CT_MARK, NFT_CT_DST_IP, NFT_CT_DST_IP6 = 3, 20, 22
NFT_CT_DIR_ORIGINAL = 0
LIST_ELEM = 1  # NFTA_LIST_ELEM


def _numbers(nla_map) -> dict[str, int]:
    return {entry[0]: i for i, entry in enumerate(nla_map)}


_EXPR = nft_contains_expr.nft_expr
A = {  # attribute numbers, by pyroute2's names for them (the kernel's)
    **_numbers(nft_gen_msg.nla_map), **_numbers(nft_table_msg.nla_map), **_numbers(nft_chain_msg.nla_map), **_numbers(nft_chain_msg.hook.nla_map),
    **_numbers(nft_rule_msg.nla_map), **_numbers(nft_set_msg.nla_map), **_numbers(nft_set_msg.set_desc.nla_map),
    **_numbers(nft_set_elem_list_msg.nla_map), **_numbers(nft_set_elem_list_msg.set_elem.nla_map),
    **_numbers(_EXPR.nla_map), **_numbers(nft_data.nfta_data.nla_map), **_numbers(nft_data.nfta_data.verdict.nla_map),
    **{k: v for cls in (_EXPR.nft_payload, _EXPR.nft_meta, _EXPR.nft_cmp, _EXPR.nft_lookup, _EXPR.nft_immediate,
                        _EXPR.nft_numgen, _EXPR.nft_nat, _EXPR.nft_reject, _EXPR.nft_dynset, _EXPR.nft_ct)
       for k, v in _numbers(cls.nla_map).items()},
}  # fmt: skip


class NetlinkError(OSError):
    """The kernel refused a batch: ``errno`` and the message it refused."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, f"{os.strerror(code)} ({what})")
        self.what = what


# ---- attribute packing ----------------------------------------------------------------------------------


def nla(name: str, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, A[name]) + payload + b"\0" * (-n & 3)


def nest(name: str | int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    kind = (A[name] if isinstance(name, str) else name) | NLA_F_NESTED
    n = 4 + len(body)
    return struct.pack("=HH", n, kind) + body


def string(name: str, text: str) -> bytes:
    return nla(name, text.encode() + b"\0")


def be32(name: str, value: int) -> bytes:
    return nla(name, struct.pack("!I", value & 0xFFFFFFFF))


def value(name: str, data: bytes) -> bytes:
    return nest(name, nla("NFTA_DATA_VALUE", data))


def verdict(name: str, code: int, chain: str | None = None) -> bytes:
    inner = be32("NFTA_VERDICT_CODE", code) + (string("NFTA_VERDICT_CHAIN", chain) if chain else b"")
    return nest(name, nest("NFTA_DATA_VERDICT", inner))


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


# ---- messages ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    mtype: int
    flags: int
    body: bytes  # the attributes
    what: str  # for the error a user reads


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
            data = value("NFTA_SET_ELEM_DATA", self.pack(target[0]) + struct.pack("!H", target[1]) + b"\0\0") if with_data else b""
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


class NetlinkBatch:
    """A NETLINK_NETFILTER socket that sends a batch and reports the kernel's verdict on it."""

    def __init__(self) -> None:
        check_netns_guard("program nftables")
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        for opt in (getattr(socket, "SO_SNDBUFFORCE", 32), getattr(socket, "SO_RCVBUFFORCE", 33)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 64 << 20)
            except OSError:
                pass  # without CAP_NET_ADMIN the default buffers stay; large batches may then fail
        self.seq = itertools.count(int.from_bytes(os.urandom(3), "big") << 8)

    def close(self) -> None:
        self.sock.close()

    def _header(self, mtype: int, flags: int, body: bytes, family: int, seq: int, res_id: int = 0) -> bytes:
        return (
            struct.pack("=IHHII", 20 + len(body), mtype, flags, seq, 0) + struct.pack("!BBH", family, 0, res_id) + body
        )

    def generation(self) -> int:
        """The nftables generation now (NFT_MSG_GETGEN): read it right after a commit to know later
        whether anyone committed since."""
        found = self._get(NFT_MSG_GETGEN, b"", 0, "NFTA_GEN_ID", "read the nftables generation")
        assert found is not None  # every kernel answers GETGEN
        return struct.unpack("!I", found)[0]

    def table_handle(self, family: str, name: str) -> int | None:
        """The handle of table ``family name``, None if there is none (NFT_MSG_GETTABLE). A table
        deleted and made again gets a new handle."""
        body = string("NFTA_TABLE_NAME", name)
        found = self._get(NFT_MSG_GETTABLE, body, NFPROTO[family], "NFTA_TABLE_HANDLE", f"read table {family} {name}")
        return None if found is None else struct.unpack("!Q", found[:8])[0]

    def _get(self, mtype: int, body: bytes, family: int, attr: str, what: str) -> bytes | None:
        """One object's attribute ``attr`` (its payload), by a plain request; None for ENOENT."""
        seq = next(self.seq)
        self.sock.send(self._header((NFNL_SUBSYS_NFTABLES << 8) | mtype, NLM_F_REQUEST, body, family, seq))
        for reply, offset, length, rtype, rseq in self._replies():
            if rseq != seq:
                continue
            if rtype != NLMSG_ERROR:  # the object: nfgenmsg, then the attributes
                attrs = offset + 20
                while attrs + 4 <= offset + length:
                    alen, atype = struct.unpack_from("=HH", reply, attrs)
                    if atype & 0x7FFF == A[attr]:
                        return reply[attrs + 4 : attrs + alen]
                    attrs += max((alen + 3) & ~3, 4)
            code = -struct.unpack_from("=i", reply, offset + 16)[0] if rtype == NLMSG_ERROR else 0
            if code == errno.ENOENT:
                return None
            raise NetlinkError(code or errno.ENODATA, what)
        raise AssertionError("unreachable: _replies() never ends")

    def _replies(self):
        """Every netlink message the kernel sends back: (buffer, offset, length, type, sequence)."""
        while True:
            reply = self.sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(reply):
                length, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", reply, offset)
                yield reply, offset, length, mtype, seq
                offset += max((length + 3) & ~3, 16)

    def send(self, messages: list[Msg], family: str = "ip") -> None:
        """Send begin + messages + end; raise NetlinkError if the kernel refused any of them."""
        if not messages:
            return
        fam = NFPROTO[family]
        seqs: dict[int, Msg] = {}
        chunks = [self._header(BATCH_BEGIN, NLM_F_REQUEST, b"", 0, next(self.seq), NFNL_SUBSYS_NFTABLES)]
        for i, m in enumerate(messages):
            seq = next(self.seq)
            seqs[seq] = m
            flags = NLM_F_REQUEST | m.flags | (NLM_F_ACK if i == len(messages) - 1 else 0)
            chunks.append(self._header((NFNL_SUBSYS_NFTABLES << 8) | m.mtype, flags, m.body, fam, seq))
        chunks.append(self._header(BATCH_END, NLM_F_REQUEST, b"", 0, next(self.seq), NFNL_SUBSYS_NFTABLES))
        data = b"".join(chunks)
        if self.sock.send(data) != len(data):
            raise NetlinkError(errno.EMSGSIZE, f"batch of {len(data)} bytes was cut short")
        last = next(reversed(seqs))
        first_error: NetlinkError | None = None
        for reply, offset, length, mtype, seq in self._replies():
            if mtype == NLMSG_ERROR and length >= 20:  # an error, or the acknowledgement
                code = -struct.unpack_from("=i", reply, offset + 16)[0]
                if code and first_error is None:
                    what = seqs[seq].what if seq in seqs else "the batch"
                    first_error = NetlinkError(code, what)
                if seq == last:
                    if first_error is not None:
                        raise first_error
                    return


def present(family: str) -> tuple[set[str], set[str]]:
    """The chains and the named sets of our table in the kernel now (empty: no table)."""
    from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETCHAIN, NFT_MSG_GETSET, NFTSocket

    check_netns_guard("read nftables")
    sock = NFTSocket(nfgen_family=NFPROTO[family])
    try:
        chains = {m.get_attr("NFTA_CHAIN_NAME") for m in sock.request_get(nft_chain_msg(), NFT_MSG_GETCHAIN)
                  if m.get_attr("NFTA_CHAIN_TABLE") == TABLE}  # fmt: skip
        sets = {m.get_attr("NFTA_SET_NAME") for m in sock.request_get(nft_set_msg(), NFT_MSG_GETSET)
                if m.get_attr("NFTA_SET_TABLE") == TABLE}  # fmt: skip
        return chains, sets
    finally:
        sock.close()


def table_handles(tables: list[tuple[str, str]]) -> dict[tuple[str, str], int | None]:
    """The kernel's handle of each ``(family, name)`` nftables table, None where there is none. A
    table deleted and made again (``nft flush ruleset``, then anyone's first rule) has a new handle."""
    batch = NetlinkBatch()
    try:
        return {(family, name): batch.table_handle(family, name) for family, name in tables}
    finally:
        batch.close()


@dataclass
class Footprint:
    """What nftables held right after svcdns's last commit: its generation, and the handles of the
    tables our rules live in (iptables-nft's too: it commits through nftables). ``drifted``: anyone
    committed since (one round trip); ``lost``: one of those tables was deleted (then also one per
    table), as by ``nft flush ruleset``."""

    tables: list[tuple[str, str]]
    generation: int | None = None  # None: nothing recorded (or legacy iptables): always drifted
    handles: dict[tuple[str, str], int | None] | None = None

    def record(self, batch: NetlinkBatch | None = None) -> None:
        """Right after a commit; on its socket when given."""
        if batch is None:
            self.generation, self.handles = generation(), table_handles(self.tables)
        else:
            self.generation = batch.generation()
            self.handles = {t: batch.table_handle(*t) for t in self.tables}

    def forget(self) -> None:
        self.generation = self.handles = None

    def drifted(self) -> bool:
        return self.generation is None or generation() != self.generation

    def lost(self) -> bool:
        return self.handles is not None and self.drifted() and table_handles(self.tables) != self.handles


def generation() -> int:
    """This namespace's nftables generation: the kernel moves it at every commit, svcdns's or anyone's."""
    batch = NetlinkBatch()
    try:
        return batch.generation()
    finally:
        batch.close()


def delete_table(family: str) -> bool:
    """Remove svcdns's table of ``family`` (and everything in it); False if there was none."""
    batch = NetlinkBatch()
    try:
        batch.send(
            [Msg(NFT_MSG_DELTABLE, 0, string("NFTA_TABLE_NAME", TABLE), f"delete table {family} {TABLE}")], family
        )
        return True
    except NetlinkError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    finally:
        batch.close()
