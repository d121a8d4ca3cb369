"""The dataplane: makes the kernel's packet rewriting match the ServiceTable.

dp = open_dataplane("nftables")
result = dp.sync(table)          # one atomic transaction per family; raises DataplaneError
dp.sync(table, full=True)        # re-read the kernel, repair drift (also what the first sync does)
dp.cleanup()                     # remove svcdns's tables, nothing else

This face defines nothing of its own that a submodule imports back: the contract lives in
:mod:`.contract`, the backends in :mod:`.nftables` and :mod:`.iptables`.
"""

from __future__ import annotations

from ..errors import DataplaneError, UsageError
from .contract import Dataplane, SyncResult


def open_dataplane(kind: str = "nftables", **options) -> Dataplane:
    # The backends are imported here, not at the top: the CLI imports this face for every command,
    # and only the commands that program the kernel should pay for pyroute2.
    if kind == "nftables":
        from .nftables.backend import NftablesDataplane

        return NftablesDataplane(**options)
    if kind == "iptables":
        from .iptables.backend import IptablesDataplane

        return IptablesDataplane(**options)
    raise UsageError(f"--dataplane {kind!r}: expected nftables or iptables")


__all__ = ["Dataplane", "DataplaneError", "SyncResult", "open_dataplane"]
