"""A stub upstream resolver for the tests' forwarding checks: ``example.org`` A 192.0.2.1 (a
documentation address), NXDOMAIN for every other name, over UDP and TCP. Run it inside a namespace
the test made: ``python -m svcdns.testing.upstream --listen 127.0.0.2``; it prints ``listening``
once both sockets are bound."""

from __future__ import annotations

import argparse
import threading

from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSServer


class Stub(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        if str(request.q.qname).lower() == "example.org." and request.q.qtype == QTYPE.A:
            reply.add_answer(RR("example.org.", QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        else:
            reply.header.rcode = 3  # NXDOMAIN
        return reply


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", default="127.0.0.2")
    p.add_argument("--port", type=int, default=53)
    args = p.parse_args()
    for tcp in (False, True):
        DNSServer(Stub(), address=args.listen, port=args.port, tcp=tcp).start_thread()
    print("listening", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
