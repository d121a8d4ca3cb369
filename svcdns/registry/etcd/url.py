"""The etcd registry's URL: ``etcd://host[:port][,host[:port]...][/prefix][?options]``.

Options: ``cacert=``, ``cert=`` and ``key=`` (TLS files), ``username=`` and ``password=`` (etcd's
authentication), ``timeout=`` (seconds per call, default 5). Members are ``host:port``,
``[IPv6]:port`` or a bare host (port 2379), as :func:`svcdns.addr.parse_hostport` reads them.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from ...addr import format_hostport, parse_hostport
from ...errors import UsageError

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/svcdns"
OPTIONS = ("cacert", "cert", "key", "username", "password", "timeout")
_PASSWORD = re.compile(r"([?&]password=)[^&#]*")


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 5.0

    @property
    def members(self) -> str:
        """The members as the URL lists them, for messages: ``a:2379, [fd00::1]:2379``."""
        return ", ".join(format_hostport(h, p) for h, p in self.endpoints)


def parse_url(url: str) -> EtcdOptions:
    """The options of an ``etcd://`` registry URL; UsageError (exit 2) naming what is wrong."""
    parsed = urllib.parse.urlsplit(url)
    shown = redact(url)
    if parsed.scheme != "etcd" or not parsed.netloc:
        raise UsageError(f"registry {shown!r}: expected etcd://host:port[,host:port]/prefix")
    endpoints = []
    for member in parsed.netloc.split(","):
        try:
            endpoints.append(parse_hostport(member, "member", names=True, default_port=DEFAULT_PORT))
        except UsageError:
            raise UsageError(
                f"registry {shown!r}: bad host or port in {member!r} (expected host, host:port or [IPv6]:port)"
            ) from None
    query = dict(urllib.parse.parse_qsl(parsed.query))
    unknown = set(query) - set(OPTIONS)
    if unknown:
        raise UsageError(f"registry {shown!r}: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(OPTIONS)}")
    if ("cert" in query) != ("key" in query):
        given, missing = ("cert", "key") if "cert" in query else ("key", "cert")
        raise UsageError(f"registry {shown!r}: {given}={query[given]} needs {missing}= too (a certificate and its key)")
    try:
        timeout = float(query.get("timeout", 5.0))
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise UsageError(f"registry {shown!r}: timeout={query['timeout']!r} is not a positive number of seconds")
    return EtcdOptions(
        endpoints=tuple(endpoints),
        prefix="/" + parsed.path.strip("/") if parsed.path.strip("/") else DEFAULT_PREFIX,
        username=query.get("username"),
        password=query.get("password"),
        ca_file=query.get("cacert"),
        cert_file=query.get("cert"),
        key_file=query.get("key"),
        timeout=timeout,
    )


def redact(url: str) -> str:
    """``url`` with its password shown as ``***``: what messages, logs and /status may show."""
    return _PASSWORD.sub(r"\1***", url)


__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "EtcdOptions", "parse_url", "redact"]
