"""Packing a compiled answer's sections without building a dnslib message.

The zone compiles every answer once per change (:mod:`.zone`), and packing each one through
``DNSRecord.pack`` was most of a compile: a dnslib buffer, a header and question that are then cut
off, an object per field. The records a Service gives (A, AAAA, SRV, PTR, CNAME) are packed here
with dnslib's name compression: a name's suffixes are remembered at their first offset, and a name
is written up to its first remembered suffix, then a pointer (within the 14 bits a pointer holds). As dnslib does, an SRV target
is written uncompressed (RFC 2782) and not remembered. The bytes are dnslib's, so answers do not
change with the path that packed them (a unit test compares the two over every shape the zone
makes). Any other record type returns None, and the caller packs through dnslib.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from dnslib import RR

from .wire import TYPE_A, TYPE_AAAA, TYPE_PTR, TYPE_SRV

TYPE_CNAME = 5
_RR = struct.Struct("!HHIH")
_SRV = struct.Struct("!HHH")
_POINTER = struct.Struct("!H")
HEADER_LEN = 12

Labels = tuple[bytes, ...]


class _Packer:
    def __init__(self, qname: Labels) -> None:
        self.out = bytearray()
        self.names: dict[Labels, int] = {}
        self.offset = HEADER_LEN  # where ``out`` starts in the message
        self.name(qname)
        self.out += b"\x00\x00\x00\x00"  # the question's type and class: cut off with it

    def name(self, labels: Labels) -> None:
        names, out = self.names, self.out
        while labels:
            pointer = names.get(labels)
            if pointer is not None:
                out += _POINTER.pack(0xC000 | pointer)
                return
            pos = self.offset + len(out)
            if pos < 0x4000:  # a pointer holds 14 bits (dnslib would point at the offset's low bits)
                names[labels] = pos
            head = labels[0]
            out.append(len(head))
            out += head
            labels = labels[1:]
        out.append(0)

    def record(self, rec: RR) -> bool:
        rtype, rdata = rec.rtype, rec.rdata
        self.name(rec.rname.label)
        out = self.out
        at = len(out)
        out += _RR.pack(rtype, rec.rclass, rec.ttl, 0)
        start = len(out)
        if rtype in (TYPE_A, TYPE_AAAA):
            out += bytes(rdata.data)
        elif rtype == TYPE_SRV:
            out += _SRV.pack(rdata.priority, rdata.weight, rdata.port)
            for label in rdata.target.label:
                out.append(len(label))
                out += label
            out.append(0)
        elif rtype in (TYPE_PTR, TYPE_CNAME):
            self.name(rdata.label.label)
        else:
            return False
        struct.pack_into("!H", out, at + 8, len(out) - start)
        return True


def pack_sections(qname: Labels, answers: Sequence[RR], additional: Sequence[RR] = ()):
    """The bytes after the question for ``answers`` and ``additional``, their counts, and where the
    additional section starts in them (a ``Body``); None if a record is of a type packed elsewhere."""
    p = _Packer(qname)
    skip = len(p.out)
    for rec in answers:
        if not p.record(rec):
            return None
    cut = len(p.out) - skip
    for rec in additional:
        if not p.record(rec):
            return None
    return bytes(p.out[skip:]), (len(answers), 0, len(additional)), cut


__all__ = ["pack_sections"]
