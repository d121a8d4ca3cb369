"""The nftables backend: plans each sync (pure, :mod:`.ruleset`), encodes it and sends it to the
kernel as one netlink batch per family, all or nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from ...errors import DataplaneError
from ...model import IPV4, IPV6
from ...table import ServiceTable, changed_keys
from ..conntrack import Expected, clear_udp, sync_expectations
from ..contract import SyncResult
from ..footprint import Footprint
from .encode import encode
from .netlink import NetlinkBatch, delete_table, present
from .objects import COMMIT, FAMILIES, TABLE
from .ruleset import Ruleset, build, plan, stamp

log = logging.getLogger(__name__)


class NftablesDataplane:
    kind = "nftables"

    def __init__(self, families: tuple[str, ...] = (IPV4, IPV6), service_cidrs: Iterable[str] = ()) -> None:
        self.families = families
        self.service_cidrs = tuple(service_cidrs)  # inside them, an address no Service holds is rejected
        self.current: dict[str, Ruleset | None] = {f: None for f in families}
        self.table: ServiceTable | None = None  # the last table the kernel took
        self.footprint = Footprint([(FAMILIES[f], TABLE) for f in families],  # after our last commit
                                   [(FAMILIES[f], TABLE, COMMIT) for f in families])  # fmt: skip
        # One socket for every sync and check: closing a netfilter netlink socket right after a
        # commit waits for the kernel to free the transaction (an RCU grace period, ~10 ms); it is
        # dropped only after a failure, when replies of the failed exchange may still be queued on it.
        self.batch: NetlinkBatch | None = None

    def _socket(self) -> NetlinkBatch:
        if self.batch is None:
            self.batch = NetlinkBatch()
        return self.batch

    def _drop_socket(self) -> None:
        if self.batch is not None:
            self.batch.close()
            self.batch = None

    def sync(self, table: ServiceTable, *, full: bool = False) -> SyncResult:
        start = time.perf_counter()
        written = 0
        udp: Expected = {}
        was_full = False
        keys = changed_keys(self.table, table) if self.table is not None and not full else None
        batch = self._socket()
        note = self.footprint.note()
        try:
            for family in self.families:
                current = self.current[family]
                if keys is None or current is None:
                    was_full = True
                    desired = build(table, family, self.service_cidrs)
                    tx = plan(desired, *present(desired.family))
                    udp.update(sync_expectations(self.table, table, None, family))
                else:
                    desired, tx = current.apply(table, keys)
                    udp.update(sync_expectations(self.table, table, keys, family))
                self.current[family] = None  # until the kernel took it
                if len(tx):
                    stamp(tx, note)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("dataplane: %s transaction:\n%s", desired.family, tx.text())
                messages = encode(tx)
                try:
                    batch.send(messages, desired.family)
                except DataplaneError as err:
                    raise DataplaneError(f"nftables refused the {desired.family} sync: {err}; "
                                         "the previous rules stay in place", err.errno) from None  # fmt: skip
                self.current[family] = desired
                written += len(messages)
            self.footprint.record(batch)
        except BaseException:
            self._drop_socket()
            raise
        self.table = table
        clear_udp(udp)
        return SyncResult(len(table), table.endpoint_count(), written, was_full, time.perf_counter() - start)

    def drifted(self) -> bool:
        """Whether the kernel may hold something else than the last sync left: nftables' generation
        moved since (anyone committed: someone flushed our table, or changed another one). One
        netlink round trip, so the agent can look often and converge fully only when needed."""
        try:
            return self.footprint.drifted(self._socket())
        except BaseException:
            self._drop_socket()
            raise

    def lost(self) -> bool:
        """Whether our tables are gone or were replaced since the last sync: ``nft flush ruleset``,
        which Debian's nftables.service runs at every start, restart and reload. Cheap enough to
        ask every second: one round trip while nobody else committed, one per family after."""
        try:
            return self.footprint.lost(self._socket())
        except BaseException:
            self._drop_socket()
            raise

    def cleanup(self) -> None:
        self._drop_socket()
        for family in self.families:
            if delete_table(FAMILIES[family]):
                log.info("dataplane: removed table %s svcdns", FAMILIES[family])
            self.current[family] = None
        self.footprint.forget()
