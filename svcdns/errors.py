"""The exception base for everything svcdns reports to a user.

``UsageError`` (exit 2): the user asked for something invalid (bad flag, bad field, a VIP that is
taken). ``SvcdnsError`` (exit 1): something failed at run time (the kernel refused a ruleset, the
registry is unreachable). Messages say what was wrong and, where it helps, what to do.
"""

from __future__ import annotations


class SvcdnsError(Exception):
    """svcdns failed at run time."""


class UsageError(SvcdnsError):
    """The request or the configuration is not valid."""


class NotFound(SvcdnsError):
    """A named object does not exist."""
