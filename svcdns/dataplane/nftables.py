"""The nftables shell: a planned Transaction -> one netlink batch, sent to the kernel, all or nothing.

pyroute2 encodes every message (its nftables message and expression classes); this module only
decides what to put in them and talks to a NETLINK_NETFILTER socket of its own, so the batch, its
acknowledgement and its errors are handled in one place: the batch is begin, the messages, end;
only the last message asks for an acknowledgement, and the kernel reports every failing message
before it, so a failed batch raises with the kernel's errno and what it was doing, and leaves the
previous ruleset fully in place (the kernel aborted the whole transaction).

Every netlink detail of nftables lives here (pyroute2 calls its own high-level nftables API a
prototype): register numbers, payload offsets, set key types, verdict codes.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import os
import socket
import struct

from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSETELEM,
    NFT_MSG_DELTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM,
    NFT_MSG_NEWTABLE,
    nft_chain_msg,
    nft_rule_msg,
    nft_set_elem_list_msg,
    nft_set_msg,
    nft_table_msg,
)
from pyroute2.nftables.expressions import genex

from ..lab import check_netns_guard
from .ruleset import TABLE, Chain, Transaction

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFPROTO = {"ip": 2, "ip6": 10}
HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
ELEMENTS_PER_MESSAGE = 500
BATCH_BEGIN, BATCH_END = 0x10, 0x11
# nft's datatype numbers (for `nft list` to print our sets legibly; the kernel only checks lengths)
T_INTEGER, T_IPV4, T_IPV6, T_PROTO, T_SERVICE = 4, 7, 8, 12, 13
NFT_DATA_VERDICT = 0xFFFFFF00
NFT_JUMP, NFT_GOTO = -3, -4


class NetlinkError(OSError):
    """The kernel refused a batch: ``errno`` and the message it refused."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, f"{os.strerror(code)} ({what})")
        self.what = what


def _concat_type(*types: int) -> int:
    value = 0
    for t in types:
        value = (value << 6) | t
    return value


class Family:
    """Offsets, lengths and registers of one address family."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nfproto = NFPROTO[name]
        v6 = name == "ip6"
        self.alen = 16 if v6 else 4
        self.saddr = 8 if v6 else 12
        self.daddr = 24 if v6 else 16
        self.addr_type = T_IPV6 if v6 else T_IPV4
        self.unreach_code = 4 if v6 else 3  # ICMPv6 port unreachable / ICMP port unreachable

    def pack(self, address: str) -> bytes:
        return ipaddress.ip_address(address).packed

    @staticmethod
    def reg(unit: int) -> int:
        """The register holding 32-bit unit ``unit`` of a concatenation (nft's numbering)."""
        return 1 + unit // 4 if unit % 4 == 0 else 8 + unit


def _payload(dreg: int, base: int, offset: int, length: int) -> dict:
    return genex("payload", {"dreg": dreg, "base": base, "offset": offset, "len": length})


def _lookup(set_name: str, sreg: int, dreg: int | None = None, set_id: int | None = None) -> dict:
    args: dict = {"set": set_name, "sreg": sreg}
    if dreg is not None:
        args["dreg"] = dreg
    if set_id is not None:
        args["set_id"] = set_id
    return genex("lookup", args)


def _verdict(code: int, chain: str | None = None) -> dict:
    attrs: list = [("NFTA_VERDICT_CODE", code)]
    if chain:
        attrs.append(("NFTA_VERDICT_CHAIN", chain))
    return {"attrs": [("NFTA_DATA_VERDICT", {"attrs": attrs})]}


def _numgen(modulus: int) -> dict:
    """``numgen random mod N`` into register 1 (pyroute2's genex would name the attributes
    NFTA_NUMGEN_*; the kernel's are NFTA_NG_*)."""
    data = [("NFTA_NG_DREG", 1), ("NFTA_NG_MODULUS", modulus), ("NFTA_NG_TYPE", 1), ("NFTA_NG_OFFSET", 0)]
    return {"attrs": [("NFTA_EXPR_NAME", "numgen"), ("NFTA_EXPR_DATA", {"attrs": data})]}


def _l4proto_is(proto: int) -> list[dict]:
    return [
        genex("meta", {"key": 16, "dreg": 1}),  # NFT_META_L4PROTO
        genex("cmp", {"sreg": 1, "op": 0, "data": {"attrs": [("NFTA_DATA_VALUE", bytes([proto]))]}}),
    ]


class Encoder:
    """Turns a Transaction into netlink messages (pyroute2 message objects)."""

    def __init__(self, family: str) -> None:
        self.f = Family(family)
        self.ids = itertools.count(1)

    def message(self, cls, mtype: int, attrs: list, flags: int = 0):
        m = cls()
        m["attrs"] = attrs
        m["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | mtype
        m["header"]["flags"] = NLM_F_REQUEST | flags
        m["nfgen_family"] = self.f.nfproto
        return m

    def encode(self, tx: Transaction) -> list:
        out = []
        for op in tx:
            out.extend(getattr(self, "op_" + op[0].replace("-", "_"))(*op[1:]))
        return out

    # -- tables, chains, sets
    def op_table(self) -> list:
        return [self.message(nft_table_msg, NFT_MSG_NEWTABLE, [("NFTA_TABLE_NAME", TABLE)], NLM_F_CREATE)]

    def op_chain(self, chain: Chain) -> list:
        attrs: list = [("NFTA_CHAIN_TABLE", TABLE), ("NFTA_CHAIN_NAME", chain.name)]
        if chain.base:
            hook = {"attrs": [("NFTA_HOOK_HOOKNUM", HOOKS[chain.hook]), ("NFTA_HOOK_PRIORITY", chain.priority)]}
            attrs += [("NFTA_CHAIN_HOOK", hook), ("NFTA_CHAIN_TYPE", chain.kind), ("NFTA_CHAIN_POLICY", 1)]
        return [self.message(nft_chain_msg, NFT_MSG_NEWCHAIN, attrs, NLM_F_CREATE)]

    def op_flush_chain(self, name: str) -> list:
        return [self.message(nft_rule_msg, NFT_MSG_DELRULE, [("NFTA_RULE_TABLE", TABLE), ("NFTA_RULE_CHAIN", name)])]

    def op_delete_chain(self, name: str) -> list:
        return [self.message(nft_chain_msg, NFT_MSG_DELCHAIN, [("NFTA_CHAIN_TABLE", TABLE), ("NFTA_CHAIN_NAME", name)])]

    def op_set(self, name: str) -> list:
        f = self.f
        attrs: list = [("NFTA_SET_TABLE", TABLE), ("NFTA_SET_NAME", name), ("NFTA_SET_ID", next(self.ids))]
        if name == "vips":
            attrs += [("NFTA_SET_KEY_TYPE", f.addr_type), ("NFTA_SET_KEY_LEN", f.alen)]
        elif name == "hairpin":
            attrs += [("NFTA_SET_KEY_TYPE", _concat_type(f.addr_type, f.addr_type)), ("NFTA_SET_KEY_LEN", 2 * f.alen)]
        else:  # service-ips
            attrs += [
                ("NFTA_SET_FLAGS", {"NFT_SET_MAP"}),
                ("NFTA_SET_KEY_TYPE", _concat_type(f.addr_type, T_PROTO, T_SERVICE)),
                ("NFTA_SET_KEY_LEN", f.alen + 8),
                ("NFTA_SET_DATA_TYPE", NFT_DATA_VERDICT),
                ("NFTA_SET_DATA_LEN", 16),
            ]
        return [self.message(nft_set_msg, NFT_MSG_NEWSET, attrs, NLM_F_CREATE)]

    def op_flush_set(self, name: str) -> list:
        attrs = [("NFTA_SET_ELEM_LIST_TABLE", TABLE), ("NFTA_SET_ELEM_LIST_SET", name)]
        return [self.message(nft_set_elem_list_msg, NFT_MSG_DELSETELEM, attrs)]

    # -- elements
    def _key(self, name: str, item) -> tuple[bytes, dict | None]:
        f = self.f
        if name == "vips":
            return f.pack(item), None
        if name == "hairpin":
            return f.pack(item[0]) + f.pack(item[1]), None
        (vip, proto, port), chain = item
        key = f.pack(vip) + bytes([PROTO_NUMBERS[proto]]) + b"\0\0\0" + struct.pack("!H", port) + b"\0\0"
        return key, _verdict(NFT_GOTO, chain)

    def _element_messages(self, mtype: int, name: str, items, flags: int, keys_only: bool = False) -> list:
        out = []
        items = list(items)
        for i in range(0, len(items), ELEMENTS_PER_MESSAGE):
            elems = []
            for item in items[i : i + ELEMENTS_PER_MESSAGE]:
                key, data = self._key(name, item if not keys_only or name != "service-ips" else (item, ""))
                attrs: list = [("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", key)]})]
                if data is not None and not keys_only:
                    attrs.append(("NFTA_SET_ELEM_DATA", data))
                elems.append({"attrs": attrs})
            attrs = [("NFTA_SET_ELEM_LIST_TABLE", TABLE), ("NFTA_SET_ELEM_LIST_SET", name),
                     ("NFTA_SET_ELEM_LIST_ELEMENTS", elems)]  # fmt: skip
            out.append(self.message(nft_set_elem_list_msg, mtype, attrs, flags))
        return out

    def op_elements(self, name: str, items) -> list:
        return self._element_messages(NFT_MSG_NEWSETELEM, name, items, NLM_F_CREATE)

    def op_delete_elements(self, name: str, items) -> list:
        return self._element_messages(NFT_MSG_DELSETELEM, name, items, 0, keys_only=True)

    # -- rules
    def _rule(self, chain: str, exprs: list) -> object:
        attrs = [("NFTA_RULE_TABLE", TABLE), ("NFTA_RULE_CHAIN", chain), ("NFTA_RULE_EXPRESSIONS", exprs)]
        return self.message(nft_rule_msg, NFT_MSG_NEWRULE, attrs, NLM_F_CREATE | NLM_F_APPEND)

    def op_rules(self, chain: Chain) -> list:
        out = [self._rule(chain.name, self.fixed(rule)) for rule in chain.rules]
        if chain.dnat is not None and chain.dnat.targets:
            out += self.dnat_rule(chain)
        return out

    def fixed(self, rule: str) -> list[dict]:
        f = self.f
        if rule == "service-vmap":
            units = f.alen // 4
            return [
                _payload(1, 1, f.daddr, f.alen),
                genex("meta", {"key": 16, "dreg": f.reg(units)}),
                _payload(f.reg(units + 1), 2, 2, 2),
                _lookup("service-ips", 1, dreg=0),
            ]
        if rule == "jump-services":
            return [genex("immediate", {"dreg": 0, "data": _verdict(NFT_JUMP, "services")})]
        if rule == "hairpin-masquerade":
            return [_payload(1, 1, f.saddr, f.alen), _payload(f.reg(f.alen // 4), 1, f.daddr, f.alen),
                    _lookup("hairpin", 1), genex("masq", {})]  # fmt: skip
        if rule == "reject-vips-tcp":
            return [_payload(1, 1, f.daddr, f.alen), _lookup("vips", 1), *_l4proto_is(6),
                    genex("reject", {"type": 1, "icmp_code": 0})]  # fmt: skip
        if rule == "reject-vips":
            return [_payload(1, 1, f.daddr, f.alen), _lookup("vips", 1),
                    genex("reject", {"type": 0, "icmp_code": f.unreach_code})]  # fmt: skip
        raise ValueError(f"unknown fixed rule {rule!r}")

    def dnat_rule(self, chain: Chain) -> list:
        """``meta l4proto P dnat to numgen random mod N map { i : addr . port }``: an anonymous
        constant map, created in the same batch and referenced by its transaction-local id."""
        f = self.f
        d = chain.dnat
        assert d is not None
        set_id = next(self.ids)
        anon = "__map%d"
        set_attrs = [
            ("NFTA_SET_TABLE", TABLE), ("NFTA_SET_NAME", anon),
            ("NFTA_SET_FLAGS", {"NFT_SET_ANONYMOUS", "NFT_SET_CONSTANT", "NFT_SET_MAP"}),
            ("NFTA_SET_KEY_TYPE", T_INTEGER), ("NFTA_SET_KEY_LEN", 4),
            ("NFTA_SET_DATA_TYPE", _concat_type(f.addr_type, T_SERVICE)), ("NFTA_SET_DATA_LEN", f.alen + 4),
            ("NFTA_SET_DESC", {"attrs": [("NFTA_SET_DESC_SIZE", len(d.targets))]}),
            ("NFTA_SET_ID", set_id),
            ("NFTA_SET_USERDATA", [("NFTNL_UDATA_SET_KEYBYTEORDER", b"\x01\x00\x00\x00")]),
        ]  # fmt: skip
        elems = [
            {"attrs": [
                ("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", struct.pack("=I", i))]}),
                ("NFTA_SET_ELEM_DATA", {"attrs": [("NFTA_DATA_VALUE", f.pack(addr) + struct.pack("!H", port) + b"\0\0")]}),
            ]}
            for i, (addr, port) in enumerate(d.targets)
        ]  # fmt: skip
        elem_attrs = [("NFTA_SET_ELEM_LIST_TABLE", TABLE), ("NFTA_SET_ELEM_LIST_SET", anon),
                      ("NFTA_SET_ELEM_LIST_ELEMENTS", elems), ("NFTA_SET_ELEM_LIST_SET_ID", set_id)]  # fmt: skip
        proto_reg = f.reg(f.alen // 4)
        exprs = [
            *_l4proto_is(PROTO_NUMBERS[d.protocol]),
            _numgen(len(d.targets)),
            _lookup(anon, 1, dreg=1, set_id=set_id),
            genex("nat", {"type": 1, "family": f.nfproto, "reg_addr_min": 1, "reg_addr_max": 1,
                          "reg_proto_min": proto_reg, "reg_proto_max": proto_reg,
                          "flags": {"NF_NAT_RANGE_MAP_IPS", "NF_NAT_RANGE_PROTO_SPECIFIED"}}),
        ]  # fmt: skip
        return [
            self.message(nft_set_msg, NFT_MSG_NEWSET, set_attrs, NLM_F_CREATE),
            self.message(nft_set_elem_list_msg, NFT_MSG_NEWSETELEM, elem_attrs, NLM_F_CREATE),
            self._rule(chain.name, exprs),
        ]


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

    def send(self, messages: list, describe) -> None:
        """Send begin + messages + end; raise NetlinkError if the kernel refused any of them."""
        if not messages:
            return
        seqs: dict[int, object] = {}
        chunks = [self._marker(BATCH_BEGIN)]
        for i, m in enumerate(messages):
            seq = next(self.seq)
            m["header"]["sequence_number"] = seq
            if i == len(messages) - 1:
                m["header"]["flags"] |= NLM_F_ACK
            m.encode()
            seqs[seq] = m
            chunks.append(m.data)
        chunks.append(self._marker(BATCH_END))
        self.sock.sendall(b"".join(chunks)) if hasattr(self.sock, "sendall") else self.sock.send(b"".join(chunks))
        last = next(reversed(seqs))
        first_error: NetlinkError | None = None
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if mtype == 2 and length >= 20:  # NLMSG_ERROR: an error, or the acknowledgement
                    code = -struct.unpack_from("=i", data, offset + 16)[0]
                    if code and first_error is None:
                        first_error = NetlinkError(code, describe(seqs.get(seq)))
                    if seq == last:
                        if first_error is not None:
                            raise first_error
                        return
                offset += max(length + 3 & ~3, 16)

    def _marker(self, mtype: int) -> bytes:
        m = nfgen_msg()
        m["res_id"] = NFNL_SUBSYS_NFTABLES
        m["header"]["type"] = mtype
        m["header"]["flags"] = NLM_F_REQUEST
        m["header"]["sequence_number"] = next(self.seq)
        m.encode()
        return m.data


def describe(message) -> str:
    """What a refused message was doing, for the error a user reads."""
    if message is None:
        return "unknown message"
    kind = type(message).__name__.removeprefix("nft_").removesuffix("_msg")
    mtype = message["header"]["type"] & 0xFF
    verb = {NFT_MSG_NEWTABLE: "add table", NFT_MSG_NEWCHAIN: "add chain", NFT_MSG_DELCHAIN: "delete chain",
            NFT_MSG_NEWRULE: "add rule", NFT_MSG_DELRULE: "flush chain", NFT_MSG_NEWSET: "add set",
            NFT_MSG_NEWSETELEM: "add elements", NFT_MSG_DELSETELEM: "delete elements",
            NFT_MSG_DELTABLE: "delete table"}.get(mtype, f"message {mtype} ({kind})")  # fmt: skip
    names = [
        v for k, v in message["attrs"] if k.endswith(("_CHAIN", "_NAME", "_SET", "LIST_SET")) and isinstance(v, str)
    ]
    return f"{verb} {' '.join(names)}".strip()


def present_chains(family: str) -> set[str] | None:
    """The chains of our table in the kernel now (None: no table)."""
    from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETCHAIN, NFTSocket

    check_netns_guard("read nftables")
    sock = NFTSocket(nfgen_family=NFPROTO[family])
    try:
        chains = {m.get_attr("NFTA_CHAIN_NAME") for m in sock.request_get(nft_chain_msg(), NFT_MSG_GETCHAIN)
                  if m.get_attr("NFTA_CHAIN_TABLE") == TABLE}  # fmt: skip
    finally:
        sock.close()
    return chains or None


def delete_table(family: str) -> bool:
    """Remove svcdns's table of ``family`` (and everything in it); False if there was none."""
    batch = NetlinkBatch()
    try:
        enc = Encoder(family)
        batch.send([enc.message(nft_table_msg, NFT_MSG_DELTABLE, [("NFTA_TABLE_NAME", TABLE)])], describe)
        return True
    except NetlinkError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    finally:
        batch.close()
