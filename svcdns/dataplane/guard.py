"""The host-namespace guard: every kernel shell (nftables, iptables, conntrack) asks it first.

The test harness sets ``$SVCDNS_FORBID_NETNS`` to the inode of the host's own network namespace; a
shell that finds itself there refuses to program anything, so a test that forgot to enter its
namespace fails loudly instead of touching the host. In production the variable is unset.
"""

from __future__ import annotations

import os

from ..errors import DataplaneError

GUARD_ENV = "SVCDNS_FORBID_NETNS"


def netns_inode(pid: str | int = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def host_netns_inode() -> int:
    """The host's own namespace: PID 1's where it can be read (some sandboxes hide it), else the
    caller's own (the test runner starts in the host namespace)."""
    try:
        return netns_inode(1)
    except OSError:
        return netns_inode()


def check_netns_guard(what: str) -> None:
    """Raise :class:`DataplaneError` if this process is in the namespace ``$SVCDNS_FORBID_NETNS`` names."""
    forbidden = os.environ.get(GUARD_ENV)
    if forbidden and str(netns_inode()) == forbidden.strip():
        raise DataplaneError(
            f"refusing to {what} in the host network namespace (inode {forbidden}); "
            f"run inside a namespace of the lab (svcdns.testing.lab) or unset {GUARD_ENV} outside tests"
        )


__all__ = ["GUARD_ENV", "check_netns_guard", "host_netns_inode", "netns_inode"]
