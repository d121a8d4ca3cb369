"""What nftables held right after svcdns's last commit, to tell drift and loss cheaply (both backends:
iptables-nft commits through nftables too)."""

from __future__ import annotations

from dataclasses import dataclass

from .nftables.netlink import NetlinkBatch, generation, table_handles


@dataclass
class Footprint:
    """What nftables held right after svcdns's last commit: its generation, and the handles of the
    tables our rules live in (iptables-nft's too: it commits through nftables). ``drifted``: anyone
    committed since (one round trip); ``lost``: one of those tables was deleted (then also one per
    table), as by ``nft flush ruleset``."""

    tables: list[tuple[str, str]]
    generation: int | None = None  # None: nothing recorded (or legacy iptables): always drifted
    handles: dict[tuple[str, str], int | None] | None = None

    def record(self, batch: NetlinkBatch | None = None) -> None:
        """Right after a commit; on its socket when given."""
        if batch is None:
            self.generation, self.handles = generation(), table_handles(self.tables)
        else:
            self.generation, self.handles = batch.footprint(self.tables)

    def forget(self) -> None:
        self.generation = self.handles = None

    def drifted(self, batch: NetlinkBatch | None = None) -> bool:
        """On ``batch``'s socket when given (else a socket of its own)."""
        if self.generation is None:
            return True
        return (batch.generation() if batch is not None else generation()) != self.generation

    def lost(self, batch: NetlinkBatch | None = None) -> bool:
        if self.handles is None or not self.drifted(batch):
            return False
        return (batch.footprint(self.tables)[1] if batch is not None else table_handles(self.tables)) != self.handles
