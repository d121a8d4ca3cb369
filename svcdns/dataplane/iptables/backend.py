"""The iptables backend (``--dataplane iptables``): for hosts without nftables.

The rules are planned by :mod:`.rules` (pure); this shell reads what the kernel holds with
``iptables-save -t TABLE`` and writes each table with one ``iptables-restore -w --noflush`` (and
``ip6tables-*`` for IPv6), its input on stdin. A table's restore applies whole or not at all: a
refused one leaves the previous rules and raises :class:`DataplaneError` with iptables-restore's own
message. A full sync (the first, one after a failure, or ``full=True``) reads the table with
iptables-save and rewrites every SVCDNS- chain, which repairs drift: a jump someone deleted, a chain
someone added (the agent runs one at every drift check where :meth:`IptablesDataplane.drifted` says
so, every ``full_sync_period``). Any other sync trusts what its last restore left and writes only
the changed Services' chains (:func:`.rules.delta`), as kube-proxy's iptables mode does.

What it costs, measured in a network namespace of its own (Debian 12, iptables 1.8.9, 2 cores that
other jobs were loading at the time, so take the figures as +-30%; E = 10 endpoints per Service, one
TCP port, IPv4 nat table; the filter table and IPv6 add little):

    Services  restore input   rendering  restore (nf_tables)        save (nf_tables)    legacy restore / save
    1,000      44k lines      0.15 s     2.1-2.7 s                  1.5 s
    3,000     132k lines                 18 s first, 22 s rewrite    13 s
    10,000    440k lines      ~1.5 s     240 s                       crashed (SIGSEGV)    9.9 s (14 s rewrite) / 1.4 s
    one sync at 1,000 through this class: 2.7 s on an empty host, 4.1 s full (save + restore), 2.3 s partial
    (before syncs wrote only what changed)

``iptables-restore --noflush`` and ``iptables-save`` of the nf_tables variant grow much faster than
linearly with the number of chains (one per endpoint, kube-proxy's shape); without ``--noflush`` the
same 1,000-Service input loads in 0.64 s, but that would flush every other rule of the table, and
iptables-legacy has no such growth. A restore of only the changed chains stays cheap; through this
class, iptables-nft, IPv4, E = 10 (medians of 5):

    Services  first sync  endpoint replaced  new Service (SERVICES rewritten)  full resync (save + restore)
    1,000     2.95 s      39 ms (16 lines)   183 ms (3k lines)                 5.9 s
    3,000     21.1 s      123 ms (16 lines)  543 ms (9k lines)                 40.3 s

So day-to-day changes are cheap up to a few thousand Services, but the first sync and every full
resync (after a failure, or when someone else changed the tables) still cost seconds to tens of
seconds; the nftables backend is the one that scales.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import time
from collections.abc import Iterable

from ...errors import DataplaneError
from ...model import IPV4, IPV6
from ...table import ServiceTable, changed_keys
from ..conntrack import Expected, clear_udp, sync_expectations
from ..contract import SyncResult
from ..footprint import Footprint
from ..guard import check_netns_guard
from ..nftables.objects import FAMILIES
from .rules import (
    COMMANDS,
    COMMIT,
    TABLES,
    delta,
    parse_save,
    removal_text,
    restore_text,
    ruleset_of,
    service_rule_map,
    stamp,
)

log = logging.getLogger(__name__)


class IptablesDataplane:
    kind = "iptables"

    def __init__(self, families: tuple[str, ...] = (IPV4, IPV6), service_cidrs: Iterable[str] = ()) -> None:
        self.families = families
        self.service_cidrs = tuple(service_cidrs)  # inside them, an address no Service holds is rejected
        # family -> each Service's rules as our last restores left them (absent: read the kernel next)
        self.written: dict[str, dict] = {}
        self.table: ServiceTable | None = None  # the last table the kernel took
        # with iptables-nft: nftables' generation and its nat and filter tables after our last restore
        tables = [(FAMILIES[f], name) for f in families for name in TABLES]
        self.footprint = Footprint(tables, [(*t, COMMIT) for t in tables])

    def sync(self, table: ServiceTable, *, full: bool = False) -> SyncResult:
        start = time.perf_counter()
        written = 0
        was_full = False
        keys = changed_keys(self.table, table) if self.table is not None and not full else None
        udp: Expected = {}
        note = self.footprint.note()
        for family in self.families:
            before = self.written.pop(family, None)  # until the kernel took all of it
            if keys is None or before is None:
                was_full = True
                after = service_rule_map(table, family)
                rs = ruleset_of(after, family, self.service_cidrs)
                texts = {name: restore_text(rs, name, parse_save(_save(family, name))) for name in TABLES}
                udp.update(sync_expectations(self.table, table, None, family))
            else:
                after, texts = delta(before, table, keys, family, self.service_cidrs)
                udp.update(sync_expectations(self.table, table, keys, family))
            for name, text in texts.items():
                _restore(family, name, stamp(text, note))
                written += text.count("\n") - 2
            self.written[family] = after
        self.table = table
        if _nft_backed():
            self.footprint.record()
        else:
            self.footprint.forget()  # legacy iptables: no counter, every drift check converges
        clear_udp(udp)
        return SyncResult(len(table), table.endpoint_count(), written, was_full, time.perf_counter() - start)

    def drifted(self) -> bool:
        """With iptables-nft (Debian's default), iptables-restore commits through nftables, so its
        generation tells whether anyone committed since our last restore, as for the nftables
        backend. Legacy iptables has no such counter: every drift check then converges fully
        (iptables-save, then a restore of every SVCDNS- chain), as kube-proxy's iptables mode does."""
        return self.footprint.drifted()

    def lost(self) -> bool:
        """With iptables-nft: whether its nat or filter tables were deleted and made again since our
        last restore (``nft flush ruleset``), taking our chains with them; see the nftables backend.
        Legacy iptables has no cheap way to tell: the periodic drift check covers it."""
        return self.footprint.lost()

    def cleanup(self) -> None:
        """Remove every SVCDNS- chain and every jump to one, in both families; nothing else."""
        for family in self.families:
            self.written.pop(family, None)
            for name in TABLES:
                if shutil.which(COMMANDS[family][0]) is None:
                    log.info(
                        "dataplane: %s is not installed: no iptables rules of svcdns to remove", COMMANDS[family][0]
                    )
                    break
                present = parse_save(_save(family, name))
                text = removal_text(name, present)
                if text is not None:
                    _restore(family, name, text)
                    log.info("dataplane: removed %d SVCDNS- chains and %d jumps from %s table %s",
                             len(present.chains), len(present.jumps), COMMANDS[family][0].split("-")[0], name)  # fmt: skip
        self.table = None
        self.footprint.forget()


@functools.cache
def _nft_backed() -> bool:
    """Whether iptables is the nf_tables variant ('iptables v1.8.9 (nf_tables)'), as on Debian 12."""
    return "nf_tables" in _run(["iptables", "--version"]).stdout


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    check_netns_guard(f"run {argv[0]}")
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataplaneError(f"{argv[0]} not found: install the iptables package (apt-get install iptables) "
                             "or use --dataplane nftables") from None  # fmt: skip
    except OSError as err:
        raise DataplaneError(f"{argv[0]}: cannot run it: {err}", err.errno) from None


def _save(family: str, table: str) -> str:
    argv = [COMMANDS[family][0], "-t", table]  # iptables-save takes no -w: it only reads
    proc = _run(argv)
    if proc.returncode != 0:
        raise DataplaneError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _restore(family: str, table: str, text: str) -> None:
    argv = [COMMANDS[family][1], "-w", "--noflush"]
    log.debug("dataplane: %s, table %s:\n%s", " ".join(argv), table, text)
    proc = _run(argv, text)
    if proc.returncode != 0:
        raise DataplaneError(f"{argv[0]} refused the {table} table ({proc.returncode}): "
                             f"{' '.join(proc.stderr.split())}; the previous rules stay in place")  # fmt: skip
