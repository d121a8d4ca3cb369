"""A planned Transaction -> the netlink messages of one batch.

The messages are packed here with ``struct``, because pyroute2's generic encoder costs ~0.4 ms a
message and a 10k-Service full sync has ~50k of them; register numbers, payload offsets, set key
types and verdicts live here, attribute numbers in :mod:`.netlink`.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import socket
import struct
from collections.abc import Callable, Iterable

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
    NFT_FIB_RESULT_ADDRTYPE,
    NFT_GOTO,
    NFT_JUMP,
    NFT_META_IIFKIND,
    NFT_META_L4PROTO,
    NFT_META_OIFKIND,
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
    NFTA_FIB_F_DADDR,
    NLA_F_NESTED,
    NLM_F_APPEND,
    NLM_F_CREATE,
    PROTO_NUMBERS,
    RTN_LOCAL,
    T_IPV4,
    T_IPV6,
    T_MARK,
    T_PROTO,
    T_SERVICE,
    A,
    Msg,
    be32,
    nest,
    nla,
    string,
    value,
    verdict,
)
from .objects import (
    TABLE,
    Chain,
    Comment,
    DnatMap,
    Draw,
    Element,
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
    Statement,
    Update,
    VerdictMap,
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
)


def expr(kind: str, *attrs: bytes) -> bytes:
    return nest(LIST_ELEM, string("NFTA_EXPR_NAME", kind), nest("NFTA_EXPR_DATA", *attrs))


def payload(dreg: int, base: int, offset: int, length: int) -> bytes:
    return expr("payload", be32("NFTA_PAYLOAD_DREG", dreg), be32("NFTA_PAYLOAD_BASE", base),
                be32("NFTA_PAYLOAD_OFFSET", offset), be32("NFTA_PAYLOAD_LEN", length))  # fmt: skip


def meta_l4proto(dreg: int) -> bytes:
    return expr("meta", be32("NFTA_META_KEY", NFT_META_L4PROTO), be32("NFTA_META_DREG", dreg))


def cmp(op: int, data: bytes) -> bytes:
    """Register 1 compared with ``data`` (op 0: equal, 1: not equal); the rule ends unless it holds."""
    return expr("cmp", be32("NFTA_CMP_SREG", 1), be32("NFTA_CMP_OP", op), value("NFTA_CMP_DATA", data))


def l4proto_is(proto: int) -> bytes:
    return meta_l4proto(1) + cmp(0, bytes([proto]))


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



# nft's datatype numbers and widths of the set types svcdns uses (the width of a concatenated
# component is rounded up to 4 bytes; "addr" is the family's)
TYPES = {"inet_proto": (T_PROTO, 4), "inet_service": (T_SERVICE, 4), "mark": (T_MARK, 4)}
_PROTO_BYTES = {name: bytes([n, 0, 0, 0]) for name, n in PROTO_NUMBERS.items()}
_PORT = struct.Struct("!H2x")
_MARK = struct.Struct("=I")  # in host byte order, as ct mark loads it


class Encoder:
    """Turns a Transaction into netlink messages for one family's table."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.nfproto = NFPROTO[family]
        v6 = family == "ip6"
        self.alen = 16 if v6 else 4
        self.saddr, self.daddr = (8, 24) if v6 else (12, 16)
        self.addr_type = T_IPV6 if v6 else T_IPV4
        self.af = socket.AF_INET6 if v6 else socket.AF_INET
        self.unreach_code = 4 if v6 else 3  # ICMPv6 / ICMP port unreachable
        self.ids = itertools.count(1)
        self._packers: dict[tuple[str, ...], Callable[[tuple], bytes]] = {}

    @staticmethod
    def reg(unit: int) -> int:
        """The register holding 32-bit unit ``unit`` of a concatenation (nft's numbering)."""
        return 1 + unit // 4 if unit % 4 == 0 else 8 + unit

    def pack(self, address: str) -> bytes:
        # the planner's addresses are ipaddress's text already: inet_pton parses them ~10x cheaper;
        # ipaddress only for what it alone takes (an IPv6 scope, which the kernel never sees)
        try:
            return socket.inet_pton(self.af, address)
        except OSError:
            return ipaddress.ip_address(address).packed

    def encode(self, tx: Transaction) -> list[Msg]:
        out: list[Msg] = []
        for op in tx:
            out.extend(self.op(op))
        return out

    def op(self, op: Op) -> list[Msg]:
        match op:
            case AddTable():
                return [Msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, string("NFTA_TABLE_NAME", TABLE), f"add table {self.family} {TABLE}")]
            case AddChain(chain):
                return [self.add_chain(chain)]
            case FlushChain(name):
                body = string("NFTA_RULE_TABLE", TABLE) + string("NFTA_RULE_CHAIN", name)
                return [Msg(NFT_MSG_DELRULE, 0, body, f"flush chain {name}")]
            case DeleteChain(name):
                body = string("NFTA_CHAIN_TABLE", TABLE) + string("NFTA_CHAIN_NAME", name)
                return [Msg(NFT_MSG_DELCHAIN, 0, body, f"delete chain {name}")]
            case AddRules(chain):
                return [self._commented(self._rule(chain.name, *self.rule(r)), r) for r in chain.body()]
            case AddSet(decl):
                return [self.add_set(decl)]
            case FlushSet(name):
                body = string("NFTA_SET_ELEM_LIST_TABLE", TABLE) + string("NFTA_SET_ELEM_LIST_SET", name)
                return [Msg(NFT_MSG_DELSETELEM, 0, body, f"flush set {name}")]
            case DeleteSet(name):
                body = string("NFTA_SET_TABLE", TABLE) + string("NFTA_SET_NAME", name)
                return [Msg(NFT_MSG_DELSET, 0, body, f"delete set {name}")]
            case AddElements(decl, elements):
                return self._elements(NFT_MSG_NEWSETELEM, NLM_F_CREATE, decl, elements, "add")
            case DeleteElements(decl, keys):
                return self._elements(NFT_MSG_DELSETELEM, 0, decl, [(k, None) for k in keys], "delete")
        raise TypeError(f"not an nftables operation: {op!r}")

    # -- chains and sets
    def add_chain(self, chain: Chain) -> Msg:
        body = string("NFTA_CHAIN_TABLE", TABLE) + string("NFTA_CHAIN_NAME", chain.name)
        if chain.hook is not None:
            hook = be32("NFTA_HOOK_HOOKNUM", HOOKS[chain.hook]) + be32("NFTA_HOOK_PRIORITY", chain.priority)
            body += nest("NFTA_CHAIN_HOOK", hook) + string("NFTA_CHAIN_TYPE", chain.kind) + be32("NFTA_CHAIN_POLICY", 1)
        return Msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, body, f"add chain {chain.name}")

    def _type(self, names: tuple[str, ...]) -> tuple[int, int]:
        """A (concatenated) type's number and length."""
        if names == ("verdict",):
            return NFT_DATA_VERDICT, 16
        number, length = 0, 0
        for name in names:
            t, n = (self.addr_type, self.alen) if name == "addr" else TYPES[name]
            number, length = (number << 6) | t, length + n
        return number, length

    def add_set(self, decl: SetDecl) -> Msg:
        flags = (NFT_SET_MAP if decl.data else 0) | (NFT_SET_TIMEOUT | NFT_SET_EVAL if decl.timeout else 0)
        key_type, key_len = self._type(decl.key)
        body = string("NFTA_SET_TABLE", TABLE) + string("NFTA_SET_NAME", decl.name) + be32("NFTA_SET_ID", next(self.ids))
        if flags:
            body += be32("NFTA_SET_FLAGS", flags)
        body += be32("NFTA_SET_KEY_TYPE", key_type) + be32("NFTA_SET_KEY_LEN", key_len)
        if decl.data:
            data_type, data_len = self._type(decl.data)
            body += be32("NFTA_SET_DATA_TYPE", data_type) + be32("NFTA_SET_DATA_LEN", data_len)
        if decl.timeout:
            body += nla("NFTA_SET_TIMEOUT", struct.pack("!Q", decl.timeout * 1000))
        return Msg(NFT_MSG_NEWSET, NLM_F_CREATE, body, f"add set {decl.name}")

    # -- elements
    def _value(self, values: tuple, types: tuple[str, ...]) -> bytes:
        out = b""
        for v, t in zip(values, types, strict=True):
            if t == "addr":
                out += self.pack(v)
            elif t == "inet_proto":
                out += bytes([PROTO_NUMBERS[v], 0, 0, 0])
            elif t == "inet_service":
                out += struct.pack("!H", v) + b"\0\0"
            else:  # mark: in host byte order, as ct mark loads it
                out += struct.pack("=I", v)
        return out

    def _element(self, decl: SetDecl, element: Element) -> bytes:
        key, data = element
        attrs = value("NFTA_SET_ELEM_KEY", self._value(key, decl.key))
        if isinstance(data, str):
            attrs += verdict("NFTA_SET_ELEM_DATA", NFT_GOTO, data)
        elif data is not None:
            attrs += value("NFTA_SET_ELEM_DATA", self._value(data, decl.data))
        return nest(LIST_ELEM, attrs)

    def _packer(self, types: tuple[str, ...]) -> Callable[[tuple], bytes]:
        """``_value`` for one (concatenated) type, compiled once: a full sync packs ~10 elements per Service."""
        found = self._packers.get(types)
        if found is None:
            found = self._packers[types] = self._compile(types)
        return found

    def _compile(self, types: tuple[str, ...]) -> Callable[[tuple], bytes]:
        parts: list[Callable] = []
        for t in types:
            if t == "addr":
                parts.append(self.pack)
            elif t == "inet_proto":
                parts.append(_PROTO_BYTES.__getitem__)
            elif t == "inet_service":
                parts.append(_PORT.pack)
            else:
                parts.append(_MARK.pack)
        # unrolled for the arities the table has (a loop over zip was half a full sync's encoding);
        # unpacking still refuses a value of the wrong arity, as zip(strict=True) does
        if len(parts) == 1:
            (p0,) = parts
            return lambda v: p0(*v)
        if len(parts) == 2:
            p0, p1 = parts

            def two(v: tuple) -> bytes:
                a, b = v
                return p0(a) + p1(b)

            return two
        if len(parts) == 3:
            p0, p1, p2 = parts

            def three(v: tuple) -> bytes:
                a, b, c = v
                return p0(a) + p1(b) + p2(c)

            return three
        if len(parts) == 4:
            p0, p1, p2, p3 = parts

            def four(v: tuple) -> bytes:
                a, b, c, d = v
                return p0(a) + p1(b) + p2(c) + p3(d)

            return four
        return lambda values: b"".join([f(v) for f, v in zip(parts, values, strict=True)])

    def _fixed_elements(self, decl: SetDecl, items: list[Element]) -> list[bytes] | None:
        """The elements of a set or data map (not a verdict map) with their attribute headers
        precomputed: every key (and value) of one set has the same length. None: not that case."""
        if decl.data == ("verdict",):
            return None
        key, klen = self._packer(decl.key), self._type(decl.key)[1]
        hk = struct.pack("=HH", 8 + klen, A["NFTA_SET_ELEM_KEY"] | NLA_F_NESTED) + struct.pack("=HH", 4 + klen, A["NFTA_DATA_VALUE"])
        if not decl.data or items[0][1] is None:
            head = struct.pack("=HH", 4 + len(hk) + klen, LIST_ELEM | NLA_F_NESTED) + hk
            return [head + key(k) for k, _ in items]
        data, dlen = self._packer(decl.data), self._type(decl.data)[1]
        hd = struct.pack("=HH", 8 + dlen, A["NFTA_SET_ELEM_DATA"] | NLA_F_NESTED) + struct.pack("=HH", 4 + dlen, A["NFTA_DATA_VALUE"])
        head = struct.pack("=HH", 4 + len(hk) + klen + len(hd) + dlen, LIST_ELEM | NLA_F_NESTED) + hk
        return [head + key(k) + hd + data(d) for k, d in items]  # type: ignore[arg-type]

    def _elements(self, mtype: int, flags: int, decl: SetDecl, elements: Iterable[Element], verb: str) -> list[Msg]:
        # a message's worth at a time: a full sync's 110k elements (10k Services), as tuples and
        # packed, all alive at once were tens of MiB of the agent's peak at start
        source = iter(elements)
        out = []
        while chunk := list(itertools.islice(source, ELEMENTS_PER_MESSAGE)):
            packed = self._fixed_elements(decl, chunk) or [self._element(decl, it) for it in chunk]
            body = (string("NFTA_SET_ELEM_LIST_TABLE", TABLE) + string("NFTA_SET_ELEM_LIST_SET", decl.name)
                    + nest("NFTA_SET_ELEM_LIST_ELEMENTS", b"".join(packed)))  # fmt: skip
            out.append(Msg(mtype, flags, body, f"{verb} {decl.name} elements"))
        return out

    # -- rules
    def _rule(self, chain: str, *exprs: bytes) -> Msg:
        body = (
            string("NFTA_RULE_TABLE", TABLE) + string("NFTA_RULE_CHAIN", chain) + nest("NFTA_RULE_EXPRESSIONS", *exprs)
        )
        return Msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, body, f"add rule to {chain}")

    @staticmethod
    def _commented(msg: Msg, rule: Rule) -> Msg:
        """A rule's comment goes in its userdata (libnftnl's TLV: type 0, the length, the text's bytes
        and a NUL), which ``nft list`` shows as ``comment "..."``."""
        notes = [s.note.encode()[:127] + b"\0" for s in rule if isinstance(s, Comment)]
        if not notes:
            return msg
        userdata = bytes([0, len(notes[0])]) + notes[0]
        return Msg(msg.mtype, msg.flags, msg.body + nla("NFTA_RULE_USERDATA", userdata), msg.what)

    def rule(self, rule: Rule) -> list[bytes]:
        return [e for s in rule for e in self.statement(s)]

    def load(self, fields: tuple[str, ...]) -> tuple[list[bytes], int]:
        """Expressions that load a concatenation into registers from register 1 on, as nft lays it
        out for a set lookup; and the number of 32-bit units it took."""
        out, units = [], 0
        for f in fields:
            reg = self.reg(units)
            if f in ("saddr", "daddr"):
                out.append(payload(reg, 1, self.saddr if f == "saddr" else self.daddr, self.alen))
                units += self.alen // 4
            elif f == "ct-original-daddr":
                out.append(ct_load(NFT_CT_DST_IP6 if self.alen == 16 else NFT_CT_DST_IP, reg, NFT_CT_DIR_ORIGINAL))
                units += self.alen // 4
            elif f == "l4proto":
                out.append(meta_l4proto(reg))
                units += 1
            elif f == "dport":
                out.append(payload(reg, 2, 2, 2))
                units += 1
            else:  # ctmark
                out.append(ct_load(NFT_CT_MARK, reg))
                units += 1
        return out, units

    def statement(self, s: Statement) -> list[bytes]:
        match s:
            case Match(fields, name):
                return [*self.load(fields)[0], lookup(name, 1)]
            case Proto(protocol):
                return [l4proto_is(PROTO_NUMBERS[protocol])]
            case VerdictMap(fields, name):
                return [*self.load(fields)[0], lookup(name, 1, dreg=0)]
            case Jump(chain):
                return [expr("immediate", be32("NFTA_IMMEDIATE_DREG", 0), verdict("NFTA_IMMEDIATE_DATA", NFT_JUMP, chain))]
            case DnatMap(fields, name):
                return [*self.load(fields)[0], lookup(name, 1, dreg=1), self._nat]
            case SetMark(Draw(modulus)):
                # neither numgen nor ct set makes the kernel re-validate the table: rewriting a draw is cheap
                return [expr("numgen", be32("NFTA_NG_DREG", 1), be32("NFTA_NG_MODULUS", modulus),
                             be32("NFTA_NG_TYPE", 1), be32("NFTA_NG_OFFSET", 1)), ct_set_mark(1)]  # fmt: skip
            case SetMark(MapValue(fields, name)):
                exprs, units = self.load(fields)
                mark = self.reg(units)
                return [*exprs, lookup(name, 1, dreg=mark), ct_set_mark(mark)]
            case SetMark(int(mark)):
                return [expr("immediate", be32("NFTA_IMMEDIATE_DREG", 1), value("NFTA_IMMEDIATE_DATA", struct.pack("=I", mark))),
                        ct_set_mark(1)]  # fmt: skip
            case Update(name, fields, timeout):
                exprs, units = self.load(fields)
                mark = self.reg(units)
                remember = expr("dynset", string("NFTA_DYNSET_SET_NAME", name), be32("NFTA_DYNSET_OP", NFT_DYNSET_OP_UPDATE),
                                be32("NFTA_DYNSET_SREG_KEY", 1), be32("NFTA_DYNSET_SREG_DATA", mark),
                                nla("NFTA_DYNSET_TIMEOUT", struct.pack("!Q", timeout * 1000)))  # fmt: skip
                return [*exprs, ct_load(NFT_CT_MARK, mark), remember]
            case InNet(field, network):
                net = ipaddress.ip_network(network)
                exprs, _ = self.load((field,))
                if net.prefixlen < net.max_prefixlen:
                    exprs.append(expr("bitwise", be32("NFTA_BITWISE_SREG", 1), be32("NFTA_BITWISE_DREG", 1),
                                      be32("NFTA_BITWISE_LEN", self.alen), value("NFTA_BITWISE_MASK", net.netmask.packed),
                                      value("NFTA_BITWISE_XOR", bytes(self.alen))))  # fmt: skip
                return [*exprs, cmp(0, net.network_address.packed)]
            case NotLocal():
                fib = expr("fib", be32("NFTA_FIB_DREG", 1), be32("NFTA_FIB_RESULT", NFT_FIB_RESULT_ADDRTYPE),
                           be32("NFTA_FIB_FLAGS", NFTA_FIB_F_DADDR))  # fmt: skip
                return [fib, cmp(1, struct.pack("=I", RTN_LOCAL))]
            case Comment():
                return []  # userdata, not an expression (_commented)
            case Masquerade():
                return [expr("masq")]
            case Kind(direction, kind):
                key = NFT_META_IIFKIND if direction == "iif" else NFT_META_OIFKIND
                return [expr("meta", be32("NFTA_META_KEY", key), be32("NFTA_META_DREG", 1)),
                        expr("cmp", be32("NFTA_CMP_SREG", 1), be32("NFTA_CMP_OP", 0),
                             value("NFTA_CMP_DATA", kind.encode().ljust(16, b"\0")))]  # fmt: skip
            case Reject(tcp_reset):
                return [reject(1, 0) if tcp_reset else reject(0, self.unreach_code)]
        raise TypeError(f"not an nftables statement: {s!r}")

    @functools.cached_property
    def _nat(self) -> bytes:
        proto_reg = self.reg(self.alen // 4)
        return expr("nat", be32("NFTA_NAT_TYPE", 1), be32("NFTA_NAT_FAMILY", self.nfproto),
                    be32("NFTA_NAT_REG_ADDR_MIN", 1), be32("NFTA_NAT_REG_ADDR_MAX", 1),
                    be32("NFTA_NAT_REG_PROTO_MIN", proto_reg), be32("NFTA_NAT_REG_PROTO_MAX", proto_reg),
                    be32("NFTA_NAT_FLAGS", NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED))  # fmt: skip


def encode(tx: Transaction) -> list[Msg]:
    return Encoder(tx.family).encode(tx)
