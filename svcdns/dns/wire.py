"""DNS wire format for the hot path: parse a query's header, question and OPT; assemble answers.

No DNS objects are built per query: a query is parsed with ``struct`` into a :class:`Query` (its
question's bytes are kept as sent, so the answer echoes the client's case), and answers are the
query's header patched, the client's question, and precompiled sections (:mod:`.zone`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}
TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_PTR, TYPE_HINFO, TYPE_TXT, TYPE_AAAA, TYPE_SRV = (
    1,
    2,
    5,
    6,
    12,
    13,
    16,
    28,
    33,
)
TYPE_OPT, TYPE_IXFR, TYPE_AXFR, TYPE_ANY = 41, 251, 252, 255
CLASS_IN = 1
EDNS_PAYLOAD = 1232  # what we advertise: the DNS flag day 2020 size, no fragmentation
MAX_MESSAGE = 65535

_HEADER = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")
_RR = struct.Struct("!HHIH")


class Malformed(ValueError):
    """The query's header could be read, the rest could not (answer FORMERR)."""


@dataclass(slots=True)
class Query:
    id: int
    flags: int
    qname: bytes  # wire form, as sent (for the case echo)
    key: bytes  # wire form, lower-cased (for lookups)
    qtype: int
    qclass: int
    question: bytes  # the question section as sent
    edns: bool = False
    payload: int = 512  # the client's UDP payload size
    edns_version: int = 0
    do: bool = False
    labels: tuple[int, ...] = ()  # offsets of each label in key (to test zone membership)

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)

    def udp_limit(self) -> int:
        """The largest UDP answer this client takes: 512 without EDNS, else its size capped at ours."""
        return max(512, min(self.payload, EDNS_PAYLOAD)) if self.edns else 512


def parse_name(data: bytes, offset: int) -> tuple[bytes, int, tuple[int, ...]]:
    """An uncompressed name at ``offset``: (wire bytes, the offset after it, label offsets). A
    pointer in a question is refused: no client needs it, and it is how compression loops start."""
    start = offset
    labels = []
    while True:
        if offset >= len(data):
            raise Malformed("name runs past the end")
        n = data[offset]
        if n == 0:
            offset += 1
            break
        if n & 0xC0:
            raise Malformed("compressed or extended label in the question")
        labels.append(offset - start)
        offset += 1 + n
        if offset - start > 255:
            raise Malformed("name longer than 255 bytes")
    return data[start:offset], offset, tuple(labels)


def skip_name(data: bytes, offset: int) -> int:
    """The offset after a possibly compressed name (pointers are not followed, only bounded)."""
    for _ in range(128):
        if offset >= len(data):
            raise Malformed("name runs past the end")
        n = data[offset]
        if n == 0:
            return offset + 1
        if n & 0xC0 == 0xC0:
            if offset + 2 > len(data):
                raise Malformed("truncated pointer")
            return offset + 2
        if n & 0xC0:
            raise Malformed("unknown label type")
        offset += 1 + n
    raise Malformed("too many labels")


def parse_query(data: bytes) -> Query:
    """Parse a query. Raises Malformed (answer FORMERR) once the header is known to be readable;
    the caller drops datagrams shorter than a header or that are responses."""
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if qd != 1:
        raise Malformed(f"QDCOUNT is {qd}, not 1")
    qname, offset, labels = parse_name(data, 12)
    if offset + 4 > len(data):
        raise Malformed("question truncated")
    qtype, qclass = _QTAIL.unpack_from(data, offset)
    offset += 4
    q = Query(ident, flags, qname, qname.lower(), qtype, qclass, data[12:offset], labels=labels)
    if an or ns:
        raise Malformed("a query carries no answer or authority records")
    for _ in range(ar):
        name_start = offset
        offset = skip_name(data, offset)
        if offset + 10 > len(data):
            raise Malformed("additional record truncated")
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, offset)
        offset += 10 + rdlen
        if offset > len(data):
            raise Malformed("additional record data truncated")
        if rtype == TYPE_OPT:
            if q.edns or data[name_start] != 0:
                raise Malformed("more than one OPT record, or an OPT not owned by the root")
            q.edns, q.payload = True, max(512, rclass)
            q.edns_version = (ttl >> 16) & 0xFF
            q.do = bool(ttl & 0x8000)
    if offset != len(data):
        raise Malformed("trailing bytes after the last record")
    return q


def opt_rr(ext_rcode: int = 0) -> bytes:
    """Our OPT record: root owner, payload size, extended rcode, version 0, no options."""
    return b"\x00" + _RR.pack(TYPE_OPT, EDNS_PAYLOAD, (ext_rcode & 0xFF) << 24, 0)


def response(
    q: Query, rcode: int, body: bytes = b"", counts: tuple[int, int, int] = (0, 0, 0), aa: bool = True, ra: bool = False
) -> bytes:
    """Header + the client's question + ``body`` (answer, authority, additional records), with OPT
    appended when the query had one."""
    an, ns, ar = counts
    tail = b""
    if q.edns:
        tail = opt_rr(rcode >> 4)
        ar += 1
    flags = 0x8000 | (q.flags & 0x0100) | (0x0400 if aa else 0) | (0x0080 if ra else 0) | (rcode & 0xF)
    return _HEADER.pack(q.id, flags, 1, an, ns, ar) + q.question + body + tail


def truncated(q: Query, rcode: int = NOERROR, aa: bool = True, ra: bool = False) -> bytes:
    """The answer does not fit the client's UDP size: TC=1, no records, so it retries over TCP.
    The one place a TC answer is built, for the zone's answers and for forwarded ones alike."""
    msg = bytearray(response(q, rcode, aa=aa, ra=ra))
    msg[2] |= 0x02
    return bytes(msg)


def error_from_header(data: bytes, rcode: int) -> bytes | None:
    """An error answer when only the header could be read: the header echoed, no sections."""
    if len(data) < 12:
        return None
    ident, flags = struct.unpack_from("!HH", data)
    flags = 0x8000 | (flags & 0x7900) | (rcode & 0xF)  # QR, the opcode and RD echoed
    return _HEADER.pack(ident, flags, 0, 0, 0, 0)


def name_to_wire(name: str) -> bytes:
    if not name.strip("."):
        return b"\x00"
    return b"".join([bytes((len(label),)) + label for label in name.rstrip(".").encode("ascii").split(b".")]) + b"\x00"


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    """One resource record, uncompressed: safe to place anywhere in a message."""
    return owner + _RR.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata
