"""The one ``host:port`` grammar: listen addresses, upstream resolvers, etcd members.

Accepted: ``HOST:PORT``, ``[IPv6]:PORT``, and, where a default port is given, ``HOST``, ``[IPv6]``
or a bare IPv6 address. ``HOST`` is an IP address unless ``names`` allows host names (etcd members).
A bad value raises :class:`~svcdns.errors.UsageError` (exit 2) naming the field and the value.
"""

from __future__ import annotations

import ipaddress
import re

from .errors import UsageError

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def parse_hostport(
    text: str, field: str = "address", *, default_port: int | None = None, names: bool = False, where: str = ""
) -> tuple[str, int]:
    """``(host, port)`` from ``text``; the host as written (IPv6 without brackets)."""
    value = text.strip()
    if value.startswith("["):
        host, close, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("?" if rest or not close else "")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    elif value.count(":") > 1:  # a bare IPv6 address
        host, port = value, ""
    else:
        host, port = value, ""
    example = "127.0.0.1:53 or [::1]:53"
    expected = f"expected ADDRESS:PORT{'' if default_port is None else ' or ADDRESS'}, e.g. {example}"
    if not port and default_port is not None:
        number = default_port
    elif port.isascii() and port.isdigit() and len(port) <= 5:
        number = int(port)
    else:
        raise UsageError.invalid(field, text, expected, where)
    if not 0 < number < 65536:
        raise UsageError.invalid(field, text, f"port {number} is not 1 to 65535", where)
    if not _is_ip(host) and not (names and _HOSTNAME.match(host)):
        raise UsageError.invalid(field, text, expected, where)
    return host, number


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (as URLs and gRPC targets want it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


__all__ = ["format_hostport", "parse_hostport"]
