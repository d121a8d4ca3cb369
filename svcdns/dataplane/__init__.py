"""The dataplane: makes the kernel's packet rewriting match the ServiceTable.

dp = open_dataplane("nftables")
result = dp.sync(table)          # one atomic transaction per family; raises DataplaneError
dp.sync(table, full=True)        # re-read the kernel, repair drift (also what the first sync does)
dp.cleanup()                     # remove svcdns's tables, nothing else
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..errors import SvcdnsError, UsageError
from ..model import IPV4, IPV6
from ..table import ServiceTable

log = logging.getLogger(__name__)


class DataplaneError(SvcdnsError):
    """The kernel refused a sync; the previous ruleset is still in place."""


@dataclass(frozen=True)
class SyncResult:
    services: int
    endpoints: int
    rules: int  # netlink messages written
    full: bool
    duration: float  # seconds


class NftablesDataplane:
    kind = "nftables"

    def __init__(self, families: tuple[str, ...] = (IPV4, IPV6)) -> None:
        from .ruleset import Ruleset

        self.families = families
        self.current: dict[str, Ruleset | None] = {f: None for f in families}

    def sync(self, table: ServiceTable, *, full: bool = False) -> SyncResult:
        from . import conntrack
        from .nftables import Encoder, NetlinkBatch, NetlinkError, describe, present_chains
        from .ruleset import build, plan

        start = time.perf_counter()
        written = 0
        stale: list = []
        was_full = False
        batch = NetlinkBatch()
        try:
            for family in self.families:
                desired = build(table, family)
                current = None if full else self.current[family]
                was_full |= current is None
                present = present_chains(desired.family) if current is None else None
                tx = plan(current, desired, present)
                messages = Encoder(desired.family).encode(tx)
                try:
                    batch.send(messages, describe)
                except NetlinkError as err:
                    self.current[family] = None  # unknown now: the next sync converges fully
                    raise DataplaneError(f"nftables refused the {desired.family} sync: {err}; "
                                         "the previous rules stay in place") from None  # fmt: skip
                stale += _stale_udp(self.current[family], desired)
                self.current[family] = desired
                written += len(messages)
        finally:
            batch.close()
        conntrack.clear_udp(stale)
        return SyncResult(len(table), table.endpoint_count(), written, was_full, time.perf_counter() - start)

    def cleanup(self) -> None:
        from .nftables import delete_table
        from .ruleset import FAMILIES

        for family in self.families:
            if delete_table(FAMILIES[family]):
                log.info("dataplane: removed table %s svcdns", FAMILIES[family])
            self.current[family] = None


def _stale_udp(old, new) -> list[tuple[str, int, str | None, int | None]]:
    """UDP flows to forget after a sync: to endpoints that left, and to VIPs that had none."""
    out = []
    old_map = old.service_ips if old is not None else {}
    for key, chain_name in new.service_ips.items():
        vip, proto, port = key
        if proto != "UDP":
            continue
        targets = set(new.chains[chain_name].dnat.targets)
        before = set(old.chains[old_map[key]].dnat.targets) if key in old_map and old_map[key] in old.chains else None
        if before is None or not before:
            if targets:
                out.append((vip, port, None, None))
            continue
        out += [(vip, port, addr, tport) for addr, tport in before - targets]
    return out


def open_dataplane(kind: str = "nftables", **options) -> NftablesDataplane:
    if kind == "nftables":
        return NftablesDataplane(**options)
    if kind == "iptables":
        raise UsageError("--dataplane iptables: the iptables backend is not available yet; use nftables")
    raise UsageError(f"--dataplane {kind!r}: expected nftables or iptables")


__all__ = ["DataplaneError", "SyncResult", "NftablesDataplane", "open_dataplane"]
