"""What nftables held right after svcdns's last commit, to tell drift, loss and a foreign rewrite
cheaply (both backends: iptables-nft commits through nftables too)."""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field

from .nftables import netlink
from .nftables.netlink import NetlinkBatch

log = logging.getLogger(__name__)


@dataclass
class Footprint:
    """What nftables held right after svcdns's last commit: its generation, the handles of the
    tables our rules live in (iptables-nft's too), and the rules of our ``marks`` chains, each
    holding one rule whose comment names our last commit (:meth:`note`) and whose handle is new at
    every rewrite. ``drifted``: anyone committed since (one round trip); ``lost``: then also one
    read of those handles and rules, in the same send: a table deleted (``nft flush ruleset``) or
    rewritten by another process (a second agent, an ``nft -f``) is told within the agent's
    one-second check."""

    tables: list[tuple[str, str]]
    marks: list[tuple[str, str, str]] = field(default_factory=list)  # (family, table, chain)
    generation: int | None = None  # None: nothing recorded (or legacy iptables): always drifted
    handles: dict[tuple[str, str], int | None] | None = None
    rules: dict[tuple[str, str, str], bytes | None] | None = None
    commits: itertools.count = field(default_factory=lambda: itertools.count(1))

    def note(self) -> str:
        """The comment of the next commit's mark: this process and its commit's number."""
        return f"svcdns pid {os.getpid()} commit {next(self.commits)}"

    def _read(self, batch: NetlinkBatch | None) -> netlink.Footprint:
        return batch.footprint(self.tables, self.marks) if batch is not None else netlink.footprint(self.tables, self.marks)

    def record(self, batch: NetlinkBatch | None = None) -> None:
        """Right after a commit; on its socket when given."""
        self.generation, self.handles, self.rules = self._read(batch)

    def forget(self) -> None:
        self.generation = self.handles = self.rules = None

    def drifted(self, batch: NetlinkBatch | None = None) -> bool:
        """On ``batch``'s socket when given (else a socket of its own)."""
        if self.generation is None:
            return True
        return (batch.generation() if batch is not None else netlink.footprint([])[0]) != self.generation

    def lost(self, batch: NetlinkBatch | None = None) -> bool:
        if self.handles is None or not self.drifted(batch):
            return False
        _, handles, rules = self._read(batch)
        if handles != self.handles:
            return True
        rewritten = [f"{f} {t}" for (f, t, c), r in rules.items() if self.rules is not None and r != self.rules.get((f, t, c))]
        if rewritten:
            log.warning("dataplane: %s rewritten by another process (its commit mark is not svcdns's last); "
                        "converging fully", ", ".join(f"table {t}" for t in rewritten))  # fmt: skip
            return True
        return False
