"""The DNS listening sockets, and keeping them across a restart in systemd's file-descriptor store.

Each worker has one UDP socket and one TCP listener per listen address, all in one SO_REUSEPORT
group per address and protocol. Under systemd the supervisor pushes every one of them into the
store (``FDSTORE=1``, named by :func:`fd_name`), and the next process of the service takes them
back ($LISTEN_FDS): the sockets never close, so a query that arrives while the agent restarts waits
in its queue and is answered by the next process instead of being refused. At start, a stored
socket is reused only if its name is a configured one *and* the socket itself is what the name says
(family, type, bound address, listening); everything else handed back is closed and removed from
the store, and what is missing is bound.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

from ..addr import format_hostport
from ..errors import DNSError
from ..notify import Notifier, listen_fds

log = logging.getLogger(__name__)

PREFIX = "dns"
UDP_RCVBUF = 4 << 20  # bursts: queue up to ~16k queries instead of dropping them
TCP_BACKLOG = 1024  # (net.core.somaxconn caps it: 4096 since Linux 5.4)
IPV6_FREEBIND = 78  # linux/in6.h (the socket module does not name it)


@dataclass(frozen=True, slots=True)
class SocketName:
    proto: str  # "udp" | "tcp"
    host: str
    port: int
    index: int  # the worker's

    def __str__(self) -> str:
        return fd_name(self.proto, self.host, self.port, self.index)


def fd_name(proto: str, host: str, port: int, index: int) -> str:
    """``dns/udp/127.0.0.1/53/0``; an IPv6 address's colons become ``_`` (FDNAME= may hold no ':')."""
    return f"{PREFIX}/{proto}/{host.replace(':', '_')}/{port}/{index}"


def parse_fd_name(name: str) -> SocketName | None:
    """The socket a stored name stands for, or None when the name is not one of :func:`fd_name`'s."""
    parts = name.split("/")
    if len(parts) != 5 or parts[0] != PREFIX or parts[1] not in ("udp", "tcp"):
        return None
    _, proto, host, port, index = parts
    if not (port.isascii() and port.isdigit() and index.isascii() and index.isdigit()) or int(port) > 65535:
        return None
    try:
        host = str(ipaddress.ip_address(host.replace("_", ":")))
    except ValueError:
        return None
    return SocketName(proto, host, int(port), int(index))


def _matches(sock: socket.socket, want: SocketName) -> bool:
    """Whether ``sock`` is the socket ``want`` names: family, type, bound address (any port when
    the configured one is 0), and, for TCP, listening."""
    fam = socket.AF_INET6 if ":" in want.host else socket.AF_INET
    kind = socket.SOCK_DGRAM if want.proto == "udp" else socket.SOCK_STREAM
    try:
        if sock.family != fam or sock.type != kind:
            return False
        host, port = sock.getsockname()[:2]
        if ipaddress.ip_address(host) != ipaddress.ip_address(want.host) or (want.port and port != want.port):
            return False
        return kind == socket.SOCK_DGRAM or bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


class SocketStore:
    """The sockets systemd handed back at start, and the store the current ones go to. Without
    $NOTIFY_SOCKET (not under systemd) it hands back nothing and keeps nothing: a restart closes
    the sockets, and queries in between are refused."""

    def __init__(self, notifier: Notifier | None = None, inherited: list[tuple[str, int]] | None = None) -> None:
        self.notifier = notifier or Notifier(env={})
        self.inherited: dict[str, socket.socket] = {}
        self.stale: list[str] = []  # names handed back that nothing configured takes
        for name, fd in inherited or []:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                self.stale.append(name)
                continue
            if name in self.inherited or parse_fd_name(name) is None:
                sock.close()
                self.stale.append(name)
            else:
                self.inherited[name] = sock
        self.published: dict[str, int] = {}  # name -> fd, what the store holds of ours now

    @classmethod
    def from_environment(cls) -> SocketStore:
        """This process's store: what systemd passed (taken once: the variables are removed)."""
        notifier = Notifier()
        return cls(notifier, listen_fds() if notifier.address else [])

    @property
    def active(self) -> bool:
        return bool(self.notifier.address)

    def take(self, want: SocketName) -> socket.socket | None:
        """The inherited socket ``want`` names, ready to use; None when there is none or it is not
        what its name says (then it is closed and dropped from the store)."""
        sock = self.inherited.pop(str(want), None)
        if sock is None:
            return None
        if not _matches(sock, want):
            log.warning("dns: the stored socket %s is not what its name says; binding a new one", want)
            sock.close()
            self.stale.append(str(want))
            return None
        sock.setblocking(False)
        if want.proto == "tcp":
            sock.listen(TCP_BACKLOG)  # a listener from an older version keeps working with today's backlog
        return sock

    def publish(self, sockets: dict[str, socket.socket]) -> None:
        """Make the store hold exactly ``sockets`` (by name): what was handed back and not taken
        is closed here and removed there, names no longer used are removed, new ones stored."""
        for name, sock in self.inherited.items():
            sock.close()
            self.stale.append(name)
        self.inherited.clear()
        if not self.active:
            self.stale.clear()
            return
        gone = set(self.stale) | {n for n, fd in self.published.items() if sockets.get(n) is None
                                  or sockets[n].fileno() != fd}  # fmt: skip
        for name in sorted(gone):
            self.notifier.remove_fds(name)
        for name, sock in sockets.items():
            if self.published.get(name) != sock.fileno() or name in gone:
                if not self.notifier.store_fd(name, sock.fileno()):
                    log.warning("dns: systemd did not take the socket %s into its store; a restart will drop "
                                "queries (FileDescriptorStoreMax= in the unit?)", name)  # fmt: skip
        self.stale.clear()
        self.published = {name: sock.fileno() for name, sock in sockets.items()}
        if sockets:
            log.info("dns: %d listening sockets kept in systemd's store across restarts", len(sockets))


def bind_one(proto: str, host: str, port: int, freebind: bool = False) -> socket.socket:
    """One UDP socket or TCP listener on ``host:port``, in the address's SO_REUSEPORT group.
    ``freebind``: the address may not be on the host yet (IP_FREEBIND: the agent puts the cluster
    DNS address on its interface once DNS answers, so a restart answers before pyroute2 loads)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if freebind:
            if fam == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15), 1)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if proto == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise DNSError(f"cannot listen on {format_hostport(host, port)} ({proto.upper()}): {err.strerror}") from None
        s.setblocking(False)
        if proto == "udp":
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            except OSError:
                pass
        else:
            s.listen(TCP_BACKLOG)
    except BaseException:
        s.close()
        raise
    return s


__all__ = ["SocketName", "SocketStore", "bind_one", "fd_name", "parse_fd_name"]
