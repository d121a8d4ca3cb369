"""Every netlink detail of nftables: attribute numbers (from pyroute2's nla_map tables, which follow
the kernel's uapi), the NETLINK_NETFILTER socket that sends a batch and reads the kernel's verdict,
and the few reads svcdns makes (its chains and sets, the generation, table handles).

The batch is begin, the messages, end, on a socket of its own; only the last message asks for an
acknowledgement, and the kernel reports every refused message before it, so a failed batch raises
with the kernel's errno and what the message was doing, and leaves the previous ruleset fully in
place (the kernel aborted the whole transaction).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pyroute2.netlink.nfnetlink.nftsocket import (  # noqa: F401 (message types: encode takes them from here)
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSET,
    NFT_MSG_DELSETELEM,
    NFT_MSG_DELTABLE,
    NFT_MSG_GETCHAIN,
    NFT_MSG_GETGEN,
    NFT_MSG_GETRULE,
    NFT_MSG_GETSET,
    NFT_MSG_GETTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM,
    NFT_MSG_NEWTABLE,
    NFTSocket,
    nft_chain_msg,
    nft_contains_expr,
    nft_data,
    nft_gen_msg,
    nft_rule_msg,
    nft_set_elem_list_msg,
    nft_set_msg,
    nft_table_msg,
)

from ...errors import DataplaneError
from ..edge import converted
from ..guard import check_netns_guard
from .objects import TABLE

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x400, 0x800
NLA_F_NESTED = 0x8000
NFPROTO = {"ip": 2, "ip6": 10}
HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
ELEMENTS_PER_MESSAGE = 500
BATCH_BEGIN, BATCH_END = 0x10, 0x11
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_DUMP = 0x300
# nft's datatype numbers (for `nft list` to print our sets legibly; the kernel only checks lengths)
T_IPV4, T_IPV6, T_PROTO, T_SERVICE, T_MARK = 7, 8, 12, 13, 19
NFT_DATA_VERDICT = 0xFFFFFF00
NFT_JUMP, NFT_GOTO = -3, -4
NFT_SET_MAP, NFT_SET_TIMEOUT, NFT_SET_EVAL = 0x8, 0x10, 0x20
NFT_DYNSET_OP_UPDATE = 1
NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PROTO_SPECIFIED = 0x1, 0x2
NFT_META_L4PROTO = 16
NFT_META_IIFKIND, NFT_META_OIFKIND = 26, 27
NFT_CT_MARK, NFT_CT_DST_IP, NFT_CT_DST_IP6 = 3, 20, 22
NFT_CT_DIR_ORIGINAL = 0
NFT_FIB_RESULT_ADDRTYPE, NFTA_FIB_F_DADDR, RTN_LOCAL = 3, 2, 2
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
                        _EXPR.nft_numgen, _EXPR.nft_nat, _EXPR.nft_reject, _EXPR.nft_dynset, _EXPR.nft_ct,
                        _EXPR.nft_bitwise, _EXPR.nft_fib)
       for k, v in _numbers(cls.nla_map).items()},
}  # fmt: skip


def refused(code: int, what: str) -> DataplaneError:
    """The kernel refused a message: its errno, and what the message was doing."""
    return DataplaneError(f"{os.strerror(code)} ({what})", code)


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


# ---- messages ----------------------------------------------------------------------------------------------


# what footprint() reads: the generation, table handles, and chains' rules as the kernel dumps them
Footprint = tuple[int, dict[tuple[str, str], "int | None"], dict[tuple[str, str, str], "bytes | None"]]


@dataclass(frozen=True)
class Msg:
    mtype: int
    flags: int
    body: bytes  # the attributes
    what: str  # for the error a user reads



class NetlinkBatch:
    """A NETLINK_NETFILTER socket that sends a batch and reports the kernel's verdict on it."""

    def __init__(self) -> None:
        check_netns_guard("program nftables")
        with converted("open a netlink socket to nftables"):
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
        return self.footprint([])[0]

    def footprint(self, tables: list[tuple[str, str]], chains: Sequence[tuple[str, str, str]] = ()) -> Footprint:
        """The generation, the handle of each ``(family, name)`` table (None: there is none; a table
        deleted and made again gets a new handle), and the rules of each ``(family, table, chain)``
        as the kernel dumps them (their handles and comments; None: no such chain), asked in one
        send (the kernel answers a buffer of requests one after the other) and read back in one go."""
        requests = [(NFT_MSG_GETGEN, b"", 0, "NFTA_GEN_ID", "read the nftables generation")]
        requests += [(NFT_MSG_GETTABLE, string("NFTA_TABLE_NAME", name), NFPROTO[family], "NFTA_TABLE_HANDLE",
                      f"read table {family} {name}") for family, name in tables]  # fmt: skip
        requests += [(NFT_MSG_GETRULE, string("NFTA_RULE_TABLE", table) + string("NFTA_RULE_CHAIN", chain),
                      NFPROTO[family], "", f"read chain {family} {table} {chain}") for family, table, chain in chains]  # fmt: skip
        found = self._get(requests)
        gen = found[0]
        assert gen is not None  # every kernel answers GETGEN
        handles = {t: None if h is None else struct.unpack("!Q", h[:8])[0]
                   for t, h in zip(tables, found[1 : 1 + len(tables)], strict=True)}  # fmt: skip
        rules = dict(zip(chains, found[1 + len(tables) :], strict=True))
        return struct.unpack("!I", gen)[0], handles, rules

    def _get(self, requests: list[tuple[int, bytes, int, str, str]]) -> list[bytes | None]:
        """For each request (type, body, family, attribute, what it does): its object's attribute
        (the payload), or, for a dump (no attribute named), the objects' attributes one after the
        other; None for ENOENT. The plain requests go in one send; a socket runs one dump at a time
        (another gets EBUSY), so each dump is a round trip of its own."""
        out: list[bytes | None] = [None] * len(requests)
        plain = [i for i, r in enumerate(requests) if r[3]]
        for group in [plain] * bool(plain) + [[i] for i, r in enumerate(requests) if not r[3]]:
            self._ask([requests[i] for i in group], group, out)
        return out

    def _ask(self, requests: list[tuple[int, bytes, int, str, str]], slots: list[int], out: list[bytes | None]) -> None:
        seqs: dict[int, tuple[int, str, str]] = {}
        chunks = []
        for slot, (mtype, body, family, attr, what) in zip(slots, requests, strict=True):
            seq = next(self.seq)
            seqs[seq] = (slot, attr, what)
            flags = NLM_F_REQUEST | (0 if attr else NLM_F_DUMP)
            chunks.append(self._header((NFNL_SUBSYS_NFTABLES << 8) | mtype, flags, body, family, seq))
        with converted(requests[0][4]):
            self.sock.send(b"".join(chunks))
        for reply, offset, length, rtype, rseq in self._replies():
            if rseq not in seqs:
                continue
            i, attr, what = seqs[rseq]
            if rtype == NLMSG_ERROR:
                code = -struct.unpack_from("=i", reply, offset + 16)[0]
                if code and code != errno.ENOENT:
                    raise refused(code, what)
                del seqs[rseq]
            elif not attr:  # a dump: every object's attributes (after nfgenmsg, whose res_id is the generation)
                if rtype == NLMSG_DONE:
                    out[i] = out[i] or b""
                    del seqs[rseq]
                else:
                    out[i] = (out[i] or b"") + reply[offset + 20 : offset + length]
            else:  # the object: nfgenmsg, then the attributes
                attrs = offset + 20
                while attrs + 4 <= offset + length:
                    alen, atype = struct.unpack_from("=HH", reply, attrs)
                    if atype & 0x7FFF == A[attr]:
                        out[i] = reply[attrs + 4 : attrs + alen]
                        break
                    attrs += max((alen + 3) & ~3, 4)
                else:
                    raise refused(errno.ENODATA, what)
                del seqs[rseq]
            if not seqs:
                return
        raise AssertionError("unreachable: _replies() never ends")

    def _replies(self):
        """Every netlink message the kernel sends back: (buffer, offset, length, type, sequence)."""
        while True:
            with converted("read nftables' answer"):
                reply = self.sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(reply):
                length, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", reply, offset)
                yield reply, offset, length, mtype, seq
                offset += max((length + 3) & ~3, 16)

    def send(self, messages: list[Msg], family: str = "ip") -> None:
        """Send begin + messages + end; raise DataplaneError (with the kernel's errno and what the
        first refused message was doing) if the kernel refused any of them."""
        if not messages:
            return
        fam = NFPROTO[family]
        seqs: dict[int, Msg] = {}
        # one buffer, each body copied once into it (a list of framed copies, then their join, were
        # two more copies of a full sync's ~15 MB at 10k Services)
        data = bytearray(self._header(BATCH_BEGIN, NLM_F_REQUEST, b"", 0, next(self.seq), NFNL_SUBSYS_NFTABLES))
        for i, m in enumerate(messages):
            seq = next(self.seq)
            seqs[seq] = m
            flags = NLM_F_REQUEST | m.flags | (NLM_F_ACK if i == len(messages) - 1 else 0)
            data += self._header((NFNL_SUBSYS_NFTABLES << 8) | m.mtype, flags, b"", fam, seq)
            struct.pack_into("=I", data, len(data) - 20, 20 + len(m.body))
            data += m.body
        data += self._header(BATCH_END, NLM_F_REQUEST, b"", 0, next(self.seq), NFNL_SUBSYS_NFTABLES)
        with converted(f"send a batch of {len(messages)} messages to nftables"):
            sent = self.sock.send(data)
        if sent != len(data):
            raise refused(errno.EMSGSIZE, f"batch of {len(data)} bytes was cut short")
        last = next(reversed(seqs))
        first_error: DataplaneError | None = None
        for reply, offset, length, mtype, seq in self._replies():
            if mtype == NLMSG_ERROR and length >= 20:  # an error, or the acknowledgement
                code = -struct.unpack_from("=i", reply, offset + 16)[0]
                if code and first_error is None:
                    what = seqs[seq].what if seq in seqs else "the batch"
                    first_error = refused(code, what)
                if seq == last:
                    if first_error is not None:
                        raise first_error
                    return


def present(family: str) -> tuple[set[str], set[str]]:
    """The chains and the named sets of our table in the kernel now (empty: no table)."""
    check_netns_guard("read nftables")
    with converted(f"read the chains and sets of table {family} {TABLE}"):
        sock = NFTSocket(nfgen_family=NFPROTO[family])
        try:
            chains = {m.get_attr("NFTA_CHAIN_NAME") for m in sock.request_get(nft_chain_msg(), NFT_MSG_GETCHAIN)
                      if m.get_attr("NFTA_CHAIN_TABLE") == TABLE}  # fmt: skip
            sets = {m.get_attr("NFTA_SET_NAME") for m in sock.request_get(nft_set_msg(), NFT_MSG_GETSET)
                    if m.get_attr("NFTA_SET_TABLE") == TABLE}  # fmt: skip
            return chains, sets
        finally:
            sock.close()


def footprint(tables: list[tuple[str, str]], chains: Sequence[tuple[str, str, str]] = ()) -> Footprint:
    """:meth:`NetlinkBatch.footprint` on a socket of its own."""
    batch = NetlinkBatch()
    try:
        return batch.footprint(tables, chains)
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
    except DataplaneError as err:
        if err.is_not_found():
            return False
        raise
    finally:
        batch.close()

