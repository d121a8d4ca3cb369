"""The one exception hierarchy for everything svcdns reports to a user.

Every shell converts what its library raises (pyroute2, OSError, gRPC, YAML, JSON) into one of these
at its own edge, so the agent and the CLI handle failures by kind, never by library:

- :class:`SvcdnsError` (exit 1): something failed at run time.
- :class:`UsageError` (exit 2): the user asked for something invalid (a flag, a config key, a field
  of a Service); it names the field, the value (cut to :data:`MAX_VALUE` characters) and what is valid.
- :class:`NotFound` (exit 1): a named object does not exist.
- :class:`RegistryUnavailable` / :class:`RegistryAuthFailed`: the registry cannot be read right now.
- :class:`DataplaneError`: the kernel refused a sync (the previous rules stay); carries the errno.
- :class:`DNSError`: the DNS server or one of its workers failed.
"""

from __future__ import annotations

import errno as _errno
from typing import Any

MAX_VALUE = 300  # characters of a bad value shown in a message or a log line


def shorten(value: Any, limit: int = MAX_VALUE) -> str:
    """``repr(value)``, cut to ``limit`` characters: a hostile value never makes a huge message.

    The repr of a deeply nested or huge object is itself costly, so containers are summarised."""
    if isinstance(value, (dict, list, tuple, set)) and len(value) > 20:
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SvcdnsError(Exception):
    """svcdns failed at run time."""

    exit_code = 1


class UsageError(SvcdnsError):
    """The request or the configuration is not valid.

    ``UsageError("message")`` for a whole message, or ``UsageError.invalid(field, value, expected)``
    for the common shape: ``<field> = <value>: <expected>``."""

    exit_code = 2

    def __init__(self, message: str, *, field: str = "", value: Any = None, expected: str = "") -> None:
        super().__init__(message)
        self.field, self.value, self.expected = field, value, expected

    @classmethod
    def invalid(cls, field: str, value: Any, expected: str, where: str = "") -> UsageError:
        prefix = f"{where}: " if where else ""
        return cls(f"{prefix}{field} = {shorten(value)}: {expected}", field=field, value=value, expected=expected)


class NotFound(SvcdnsError):
    """A named object does not exist."""


class RegistryUnavailable(SvcdnsError):
    """The registry cannot be read or written right now (unreachable, timed out, no quorum)."""


class RegistryAuthFailed(RegistryUnavailable):
    """The registry refused our credentials."""


class DataplaneError(SvcdnsError):
    """The kernel refused a change, or could not be asked; the previous rules are still in place.

    ``errno`` is the kernel's error number when there is one (knftables' error type does the same)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    def is_not_found(self) -> bool:
        return self.errno == _errno.ENOENT

    def is_already_exists(self) -> bool:
        return self.errno == _errno.EEXIST

    def is_busy(self) -> bool:
        return self.errno in (_errno.EBUSY, _errno.EAGAIN)


class DNSError(SvcdnsError):
    """The DNS server, or one of its worker processes, failed."""


__all__ = [
    "MAX_VALUE",
    "DNSError",
    "DataplaneError",
    "NotFound",
    "RegistryAuthFailed",
    "RegistryUnavailable",
    "SvcdnsError",
    "UsageError",
    "shorten",
]
