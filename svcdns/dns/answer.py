"""The answer function: zone + query bytes -> answer bytes (or "forward this"). Pure; no sockets.

Accepted shapes and what they get:

- not a query (QR set), or shorter than a header: dropped (``None``, ``"drop"``);
- an opcode other than QUERY: NOTIMP; QDCOUNT other than 1, or an unreadable question: FORMERR;
- EDNS version other than 0: BADVERS; a class other than IN: REFUSED; AXFR / IXFR: REFUSED;
- a name svcdns has: its precompiled answer, the client's case echoed (headless answers rotate);
- an ExternalName Service's name: its CNAME, whatever the type asked; for A and AAAA, with the
  target's records when the target is in the zone (else the server may chase it upstream);
- ANY for a name in the zone: a minimal answer, ``HINFO "RFC8482" ""`` (RFC 8482);
- a name in the zone without that type: NOERROR, no answer, SOA in authority (NODATA);
- a name in the zone that does not exist: NXDOMAIN, SOA in authority;
- in the zone before the first table arrived: SERVFAIL;
- over UDP, an answer larger than the client takes: without its additional section if that fits
  (RFC 2181 section 9), else TC=1 and no records (the client retries over TCP);
- anything else: ``FORWARD`` (the server forwards it, or answers REFUSED).
"""

from __future__ import annotations

from .wire import (
    BADVERS,
    CLASS_IN,
    FORMERR,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_AXFR,
    TYPE_HINFO,
    TYPE_IXFR,
    Malformed,
    Query,
    error_from_header,
    parse_query,
    response,
    rr,
    truncated,
)
from .zone import Zone

FORWARD = object()  # the query is for a name outside the zone
CHASE = "chase"  # third value of answer_cacheable: a CNAME whose target the server should resolve


def answer(
    zone: Zone, data: bytes, udp: bool = True, ra: bool = False, turn: int = 0
) -> tuple[bytes | None | object, int | None]:
    """Answer one query message. Returns (answer bytes, rcode), or (None, None) to drop it, or
    (FORWARD, None) for a name outside the zone. ``udp``: apply the client's UDP size (TC=1 when the
    answer does not fit). ``ra``: this client may recurse through us (forwarding allowed). ``turn``:
    which rotation of a headless answer to give (the caller counts; this function keeps no state)."""
    out, rcode, _ = answer_cacheable(zone, data, udp, ra, turn)
    return out, rcode


def answer_cacheable(zone: Zone, data: bytes, udp: bool = True, ra: bool = False, turn: int = 0):
    """:func:`answer`, plus whether the same query bytes (ID aside) always get the same answer from
    this zone (everything but the rotating headless answers), for the server's answer cache, or
    CHASE for an ExternalName asked by a client that may recurse (the server appends the target's
    addresses, resolved upstream)."""
    data = bytes(data)
    if len(data) < 12 or data[2] & 0x80:
        return None, None, False  # too short for a header, or a response: never answer those
    opcode = (data[2] >> 3) & 0xF
    if opcode != 0:
        return error_from_header(data, NOTIMP), NOTIMP, True
    try:
        q = parse_query(data)
    except Malformed:
        return error_from_header(data, FORMERR), FORMERR, True
    out, rcode = lookup(zone, q, ra, turn)
    if out is FORWARD:
        return FORWARD, None, False
    if ra and q.qtype in (TYPE_A, TYPE_AAAA) and q.key in zone.cnames and (q.key, q.qtype) not in zone.entries:
        return out, rcode, CHASE  # an ExternalName outside the zone: the server adds the target's addresses
    cacheable = len(zone.entries.get((q.key, q.qtype), ())) <= 1
    if udp and len(out) > q.udp_limit():  # type: ignore[arg-type]
        fit = _without_additional(zone, q, rcode, ra, turn)
        if fit is None or len(fit) > q.udp_limit():
            return truncated(q, ra=ra), rcode, cacheable
        return fit, rcode, cacheable
    return out, rcode, cacheable


def lookup(zone: Zone, q: Query, ra: bool = False, turn: int = 0) -> tuple[bytes | object, int]:
    if q.edns and q.edns_version != 0:
        return response(q, BADVERS, ra=ra), BADVERS
    if q.qclass != CLASS_IN:
        return response(q, REFUSED, aa=False, ra=ra), REFUSED
    if q.qtype in (TYPE_AXFR, TYPE_IXFR):
        return response(q, REFUSED, ra=ra), REFUSED
    variants = zone.entries.get((q.key, q.qtype))
    if variants:
        body, counts, _ = variants[turn % len(variants)] if len(variants) > 1 else variants[0]
        return response(q, NOERROR, body, counts, ra=ra), NOERROR
    cname = zone.cnames.get(q.key)
    if cname is not None:
        return response(q, NOERROR, cname[0], cname[1], ra=ra), NOERROR
    if not zone.in_zone(q.key, q.labels):
        return FORWARD, NOERROR
    if not zone.ready:
        return response(q, SERVFAIL, aa=False, ra=ra), SERVFAIL
    if q.key in zone.names:
        if q.qtype == TYPE_ANY:
            return _rfc8482(q, ra), NOERROR
        return response(q, NOERROR, zone.soa, (0, 1, 0), ra=ra), NOERROR
    return response(q, NXDOMAIN, zone.soa, (0, 1, 0), ra=ra), NXDOMAIN


def _without_additional(zone: Zone, q: Query, rcode: int, ra: bool, turn: int) -> bytes | None:
    """The answer without its additional section, for a client whose UDP size takes the answer but
    not its additional records: RFC 2181 section 9 drops those rather than setting TC (a slice of
    the precompiled body). None when there is no additional section to drop."""
    variants = zone.entries.get((q.key, q.qtype))
    if not variants:
        return None
    body, (an, ns, ar), cut = variants[turn % len(variants)]
    if not ar:
        return None
    return response(q, rcode, body[:cut], (an, ns, 0), ra=ra)


def _rfc8482(q: Query, ra: bool) -> bytes:
    """RFC 8482's minimal answer to ANY: ``HINFO "RFC8482" ""``, owned by the question's name."""
    hinfo = rr(b"\xc0\x0c", TYPE_HINFO, 3600, b"\x07RFC8482\x00")
    return response(q, NOERROR, hinfo, (1, 0, 0), ra=ra)


__all__ = ["answer", "answer_cacheable", "lookup", "FORWARD"]
