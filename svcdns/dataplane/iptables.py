"""The iptables backend (``--dataplane iptables``): for hosts without nftables.

The rules are planned by :mod:`.iptables_rules` (pure); this shell reads what the kernel holds with
``iptables-save -t TABLE`` and writes each table with one ``iptables-restore -w --noflush`` (and
``ip6tables-*`` for IPv6), its input on stdin. A table's restore applies whole or not at all: a
refused one leaves the previous rules and raises :class:`DataplaneError` with iptables-restore's own
message. Every sync rewrites every SVCDNS- chain, as kube-proxy's iptables mode does; a sync that is
not ``full`` trusts what the last successful restore left instead of running iptables-save again
(a full sync re-reads and repairs drift: a jump someone deleted, a chain someone added; the agent
runs one after any failure and, since :meth:`IptablesDataplane.drifted` cannot tell, at every drift
check, every ``full_sync_period``).

What it costs, measured in a network namespace of its own (Debian 12, iptables 1.8.9, 2 cores that
other jobs were loading at the time, so take the figures as +-30%; E = 10 endpoints per Service, one
TCP port, IPv4 nat table; the filter table and IPv6 add little):

    Services  restore input   rendering  restore (nf_tables)        save (nf_tables)    legacy restore / save
    1,000      44k lines      0.15 s     2.1-2.7 s                  1.5 s
    3,000     132k lines                 18 s first, 22 s rewrite    13 s
    10,000    440k lines      ~1.5 s     240 s                       crashed (SIGSEGV)    9.9 s (14 s rewrite) / 1.4 s
    one sync at 1,000 through this class: 2.7 s on an empty host, 4.1 s full (save + restore), 2.3 s partial

``iptables-restore --noflush`` and ``iptables-save`` of the nf_tables variant grow much faster than
linearly with the number of chains (one per endpoint, kube-proxy's shape); without ``--noflush`` the
same 1,000-Service input loads in 0.64 s, but that would flush every other rule of the table, and
iptables-legacy has no such growth. So this backend is for small tables (up to ~1,000 Services);
the nftables backend is the one that scales.
"""

from __future__ import annotations

import argparse
import functools
import logging
import shutil
import subprocess
import sys
import time

from ..lab import check_netns_guard
from ..model import IPV4, IPV6
from ..table import ServiceTable
from .iptables_rules import (
    COMMANDS,
    JUMPS,
    TABLES,
    Present,
    build,
    parse_save,
    reference_text,
    removal_text,
    restore_text,
)

log = logging.getLogger(__name__)


class IptablesDataplane:
    kind = "iptables"

    def __init__(self, families: tuple[str, ...] = (IPV4, IPV6)) -> None:
        self.families = families
        self.known: dict[tuple[str, str], Present] = {}  # (family, table) -> what our last restore left
        self.table: ServiceTable | None = None  # the last table the kernel took
        self.generation: int | None = None  # nftables' generation after our last restore (iptables-nft)

    def sync(self, table: ServiceTable, *, full: bool = False):
        from . import SyncResult, conntrack

        start = time.perf_counter()
        written = 0
        was_full = full or self.table is None
        udp: conntrack.Expected = {}
        for family in self.families:
            rs = build(table, family)
            for name in TABLES:
                present = None if full else self.known.get((family, name))
                if present is None:
                    was_full = True
                    present = parse_save(_save(family, name))
                text = restore_text(rs, name, present)
                self.known.pop((family, name), None)  # until the kernel took it
                _restore(family, name, text)
                self.known[(family, name)] = Present(frozenset(rs.tables[name]), JUMPS[name])
                written += text.count("\n") - 2
            udp.update(conntrack.udp_expectations(table, family))
        if self.table is not None:  # UDP ports that went: every entry to them goes
            for family in self.families:
                for key in conntrack.udp_expectations(self.table, family):
                    udp.setdefault(key, set())
        self.table = table
        self.generation = _nft_generation()
        conntrack.clear_udp(udp)
        return SyncResult(len(table), table.endpoint_count(), written, was_full, time.perf_counter() - start)

    def drifted(self) -> bool:
        """With iptables-nft (Debian's default), iptables-restore commits through nftables, so its
        generation tells whether anyone committed since our last restore, as for the nftables
        backend. Legacy iptables has no such counter: every drift check then converges fully
        (iptables-save, then a restore of every SVCDNS- chain), as kube-proxy's iptables mode does."""
        return self.generation is None or _nft_generation() != self.generation

    def cleanup(self) -> None:
        """Remove every SVCDNS- chain and every jump to one, in both families; nothing else."""
        for family in self.families:
            for name in TABLES:
                self.known.pop((family, name), None)
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


def _nft_generation() -> int | None:
    """nftables' generation when iptables is the nf_tables variant, else None."""
    from .nftables import generation

    return generation() if _nft_backed() else None


@functools.cache
def _nft_backed() -> bool:
    """Whether iptables is the nf_tables variant ('iptables v1.8.9 (nf_tables)'), as on Debian 12."""
    return "nf_tables" in _run(["iptables", "--version"]).stdout


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    from . import DataplaneError

    check_netns_guard(f"run {argv[0]}")
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataplaneError(f"{argv[0]} not found: install the iptables package (apt-get install iptables) "
                             "or use --dataplane nftables") from None  # fmt: skip
    except OSError as err:
        raise DataplaneError(f"{argv[0]}: cannot run it: {err}") from None


def _save(family: str, table: str) -> str:
    from . import DataplaneError

    argv = [COMMANDS[family][0], "-t", table]  # iptables-save takes no -w: it only reads
    proc = _run(argv)
    if proc.returncode != 0:
        raise DataplaneError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _restore(family: str, table: str, text: str) -> None:
    from . import DataplaneError

    argv = [COMMANDS[family][1], "-w", "--noflush"]
    log.debug("dataplane: %s, table %s:\n%s", " ".join(argv), table, text)
    proc = _run(argv, text)
    if proc.returncode != 0:
        raise DataplaneError(f"{argv[0]} refused the {table} table ({proc.returncode}): "
                             f"{' '.join(proc.stderr.split())}; the previous rules stay in place")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m svcdns.dataplane.iptables",
        description="Print the iptables-restore input svcdns writes for a registry directory whose "
        "Services name their VIPs (the operator's reference: iptables/reference.rules).",
    )
    parser.add_argument("--render", metavar="REGISTRY_DIR", required=True)
    args = parser.parse_args(argv)
    sys.stdout.write(reference_text(args.render))
    return 0


if __name__ == "__main__":
    sys.exit(main())
