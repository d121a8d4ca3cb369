"""The dataplane contract: what the agent may rely on, whichever backend programs the kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..table import ServiceTable


@dataclass(frozen=True)
class SyncResult:
    services: int
    endpoints: int
    rules: int  # netlink messages (nftables) or restore lines (iptables) written
    full: bool
    duration: float  # seconds


@runtime_checkable
class Dataplane(Protocol):
    """Makes the kernel's packet rewriting match a ServiceTable.

    Every method raises only :class:`~svcdns.errors.DataplaneError` (the kernel refused, or could
    not be asked); after a refused ``sync`` the previous rules are still in place."""

    kind: str  # "nftables" or "iptables"
    service_cidrs: tuple[str, ...]  # inside them, an address no Service holds is rejected (from the next full sync)

    def sync(self, table: ServiceTable, *, full: bool = False) -> SyncResult:
        """One atomic change per family; ``full``: re-read the kernel and converge everything."""
        ...

    def drifted(self) -> bool:
        """Whether someone else may have changed the kernel's rules since the last sync."""
        ...

    def lost(self) -> bool:
        """Whether svcdns's tables are gone or replaced since the last sync (cheap: asked every second)."""
        ...

    def cleanup(self) -> None:
        """Remove svcdns's rules and nothing else."""
        ...


__all__ = ["Dataplane", "SyncResult"]
