"""The etcd registry's URL: ``etcd://[user[:password]@]host[:port][,host[:port]...][/prefix][?options]``.

Options: ``cacert=``, ``cert=`` and ``key=`` (TLS files), ``username=`` and ``password=`` (etcd's
authentication, the same as ``user:password@``), ``timeout=`` (seconds per call, default 5). Members
are ``host:port``, ``[IPv6]:port`` or a bare host (port 2379), as :func:`svcdns.addr.parse_hostport`
reads them. The password belongs in a file (the agent's ``password_file``), passed here as
``password``: a URL is logged, shown in /status and may sit on a command line, so it is only ever
shown by :func:`redact`, and a password in it is accepted with a warning (by the configuration).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

from ...addr import format_hostport, parse_hostport
from ...errors import UsageError

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/svcdns"
OPTIONS = ("cacert", "cert", "key", "username", "password", "timeout")
_PASSWORD = re.compile(r"([?&]password=)[^&#]*")
_USERINFO = re.compile(r"^(etcd://[^@/?#:]*:)[^/?#]*@")  # the password of user:password@ (up to the last @)


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a message
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 5.0
    password_in_url: bool = False  # the password came from the URL itself (not from a file)

    @property
    def members(self) -> str:
        """The members as the URL lists them, for messages: ``a:2379, [fd00::1]:2379``."""
        return ", ".join(format_hostport(h, p) for h, p in self.endpoints)


def parse_url(url: str, password: str | None = None) -> EtcdOptions:
    """The options of an ``etcd://`` registry URL, with ``password`` (read from a file) if given;
    UsageError (exit 2) naming what is wrong, the URL always redacted."""
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError as err:
        raise UsageError(f"registry {redact(url)!r}: not a URL ({err})") from None
    shown = redact(url)
    if parsed.scheme != "etcd" or not parsed.netloc:
        raise UsageError(f"registry {shown!r}: expected etcd://host:port[,host:port]/prefix")
    userinfo, _, hosts = parsed.netloc.rpartition("@")
    if not hosts:
        raise UsageError(f"registry {shown!r}: expected etcd://host:port[,host:port]/prefix")
    endpoints = []
    for member in hosts.split(","):
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
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        for name, value in (("username", user), ("password", secret if colon else None)):
            if value is not None and name in query:
                raise UsageError(f"registry {shown!r}: {name} given twice (before @ and as {name}=): give it once")
        query["username"] = urllib.parse.unquote(user)
        if colon:
            query["password"] = urllib.parse.unquote(secret)
    if password is not None:
        if "password" in query:
            raise UsageError(f"registry {shown!r} holds a password and password_file gives one too: "
                             "keep the file, and remove the password from the URL")  # fmt: skip
        if not query.get("username"):
            raise UsageError(f"registry {shown!r}: password_file needs a user name: "
                             "etcd://USER@host:port/prefix (or username=USER)")  # fmt: skip
    try:
        timeout = float(query.get("timeout", 5.0))
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise UsageError(f"registry {shown!r}: timeout={query['timeout']!r} is not a positive number of seconds")
    return EtcdOptions(
        endpoints=tuple(endpoints),
        prefix="/" + parsed.path.strip("/") if parsed.path.strip("/") else DEFAULT_PREFIX,
        username=query.get("username") or None,
        password=password if password is not None else query.get("password"),
        ca_file=query.get("cacert"),
        cert_file=query.get("cert"),
        key_file=query.get("key"),
        timeout=timeout,
        password_in_url="password" in query,
    )


def redact(url: str) -> str:
    """``url`` with its password (``password=`` or ``user:password@``) shown as ``***``: what
    messages, logs, /healthz and /status may show."""
    return _PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1***@", url))


__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "EtcdOptions", "parse_url", "redact"]
