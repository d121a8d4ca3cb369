"""The iptables planner: ServiceTable -> the ``iptables-restore --noflush`` text of each table, per family.

Pure functions over plain data; the shell (:mod:`.backend`) runs iptables-save / iptables-restore.
The shape is kube-proxy's iptables mode, every chain prefixed ``SVCDNS-``:

    nat    PREROUTING, OUTPUT  -j SVCDNS-SERVICES          (one jump each, ensured exactly once)
           POSTROUTING         -j SVCDNS-POSTROUTING
           SVCDNS-SERVICES     -d VIP -p tcp --dport 80 -j SVCDNS-SVC-<hash>   one rule per port with endpoints
           SVCDNS-SVC-<hash>   (affinity: -m recent --rcheck per endpoint, first)
                               -m statistic --mode random --probability 1/N     -j SVCDNS-SEP-<hash ep0>
                               -m statistic --mode random --probability 1/(N-1) -j SVCDNS-SEP-<hash ep1>
                               ...                                               -j SVCDNS-SEP-<hash epN-1>
           SVCDNS-SEP-<hash>   -s ep -j SVCDNS-MARK-MASQ       (hairpin: a pod reaching itself)
                               -p tcp -j DNAT --to-destination ep:targetPort
           SVCDNS-MARK-MASQ    -j MARK --or-mark 0x4000
           SVCDNS-POSTROUTING  marked packets: clear the bit, MASQUERADE
    filter FORWARD, OUTPUT     -m conntrack --ctstate NEW -j SVCDNS-REJECT
           SVCDNS-REJECT       -d VIP -p tcp -j REJECT --reject-with tcp-reset; -d VIP -j REJECT

A packet that reaches the filter table still addressed to a VIP was not translated (its port has no
usable endpoint, or the Service has no such port): it is rejected at once. Only NEW packets walk
SVCDNS-REJECT; a rejected first packet never confirms its conntrack entry, so every retry is NEW again.

Chain names are ``SVCDNS-SVC-`` / ``SVCDNS-SEP-`` plus the first 16 characters of the base32 SHA-256 of
``ns/name/proto/port`` (and ``/address:targetPort`` for an endpoint), as kube-proxy does: stable across
restarts and hosts, and 27 characters, under iptables' 28. Rule comments carry the readable names.

A full sync (:func:`restore_text`) rewrites everything: one restore per table, whose ``:CHAIN - [0:0]``
lines flush our chains before they are refilled, and whose ``-X`` lines delete the SVCDNS- chains no
longer wanted (flushed first, in the same restore). Other syncs (:func:`delta`) write only what
changed, as kube-proxy's iptables mode does since its MinimizeIPTablesRestore: the changed Services'
own chains, and SVCDNS-SERVICES / SVCDNS-REJECT only when one of their rules changed. The kernel
takes a table's restore whole or not at all.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass

from ...model import IPV4, IPV6, Service
from ...table import Key, ServiceTable

PREFIX = "SVCDNS-"
SERVICES = "SVCDNS-SERVICES"
POSTROUTING = "SVCDNS-POSTROUTING"
MARK_MASQ = "SVCDNS-MARK-MASQ"
REJECT = "SVCDNS-REJECT"
COMMIT = "SVCDNS-COMMIT"  # no packet walks it: its one rule's comment names svcdns's last restore (footprint.py)
MASQ_MARK = "0x4000"  # kube-proxy's bit
TABLES = ("nat", "filter")
COMMANDS = {IPV4: ("iptables-save", "iptables-restore"), IPV6: ("ip6tables-save", "ip6tables-restore")}

_PORTALS = '-m comment --comment "svcdns service portals"'
# The jumps from the built-in chains, written as iptables-save prints them back, so that the check
# against iptables-save's output is a comparison of text: (built-in chain, rule spec), per table.
JUMPS: dict[str, tuple[tuple[str, str], ...]] = {
    "nat": (
        ("PREROUTING", f"{_PORTALS} -j {SERVICES}"),
        ("OUTPUT", f"{_PORTALS} -j {SERVICES}"),
        ("POSTROUTING", f'-m comment --comment "svcdns postrouting rules" -j {POSTROUTING}'),
    ),
    "filter": (
        ("FORWARD", f"-m conntrack --ctstate NEW {_PORTALS} -j {REJECT}"),
        ("OUTPUT", f"-m conntrack --ctstate NEW {_PORTALS} -j {REJECT}"),
    ),
}
FIXED: dict[str, dict[str, tuple[str, ...]]] = {  # the chains every sync writes, whatever the Services
    "nat": {
        SERVICES: (),
        MARK_MASQ: (f"-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK}",),
        POSTROUTING: (
            f"-A {POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
            f"-A {POSTROUTING} -j MARK --xor-mark {MASQ_MARK}",  # clear it: a packet goes out unmarked
            f'-A {POSTROUTING} -m comment --comment "svcdns hairpin traffic" -j MASQUERADE',
        ),
    },
    "filter": {REJECT: ()},
}


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def port_ref(svc: Service, protocol: str, port: int) -> str:
    return f"{svc.namespace}/{svc.name}/{protocol.lower()}/{port}"


def svc_chain(svc: Service, protocol: str, port: int) -> str:
    """``SVCDNS-SVC-<16 base32>`` of ``ns/name/proto/port``: stable, 27 characters."""
    return "SVCDNS-SVC-" + _hash(port_ref(svc, protocol, port))


def sep_chain(svc: Service, protocol: str, port: int, address: str, target: int) -> str:
    """``SVCDNS-SEP-<16 base32>`` of ``ns/name/proto/port/address:targetPort``."""
    return "SVCDNS-SEP-" + _hash(f"{port_ref(svc, protocol, port)}/{address}:{target}")


def _host(address: str, family: str) -> str:
    return f"{address}/{128 if family == IPV6 else 32}"


def _dest(address: str, port: int, family: str) -> str:
    return f"[{address}]:{port}" if family == IPV6 else f"{address}:{port}"


@dataclass(frozen=True)
class ServiceRules:
    """What one Service contributes to one family: rules in the shared chains, and chains of its own."""

    services: tuple[str, ...]  # rules of SVCDNS-SERVICES (nat)
    reject: tuple[str, ...]  # rules of SVCDNS-REJECT (filter)
    chains: tuple[tuple[str, tuple[str, ...]], ...]  # (SVC / SEP chain, its rules), nat


def service_rules(svc: Service, family: str) -> ServiceRules | None:
    """One Service's rules in one family (None: it has no VIP of that family)."""
    vip = svc.vip(family)  # None for a Headless or ExternalName Service too
    if vip is None:
        return None
    vip_s = str(vip)
    affinity = svc.affinity_seconds
    services: list[str] = []
    chains: list[tuple[str, tuple[str, ...]]] = []
    for port in svc.ports:
        targets = svc.targets(port, family)
        if not targets:
            continue  # untranslated: SVCDNS-REJECT rejects it
        proto = port.protocol.lower()
        label = f"{svc.namespace}/{svc.name}:{port.name or port.port}"
        chain = svc_chain(svc, port.protocol, port.port)
        services.append(
            f"-A {SERVICES} -d {_host(vip_s, family)} -p {proto} -m comment --comment "
            f'"{label} cluster IP" -m {proto} --dport {port.port} -j {chain}'
        )
        seps = [(sep_chain(svc, port.protocol, port.port, a, tp), a, tp) for a, tp in targets]
        rules = []
        if affinity:
            for sep, _, _ in seps:
                rules.append(f"-A {chain} -m recent --name {sep} --rcheck --seconds {affinity} --reap -j {sep}")
        for i, (sep, address, tp) in enumerate(seps):
            left = len(seps) - i
            pick = f"-m statistic --mode random --probability {1 / left:.10f} " if left > 1 else ""
            rules.append(f'-A {chain} -m comment --comment "{label} -> {_dest(address, tp, family)}" {pick}-j {sep}')
        chains.append((chain, tuple(rules)))
        for sep, address, tp in seps:
            sticky = f"-m recent --name {sep} --set " if affinity else ""
            chains.append((sep, (
                f"-A {sep} -s {_host(address, family)} -j {MARK_MASQ}",
                f"-A {sep} -p {proto} {sticky}-j DNAT --to-destination {_dest(address, tp, family)}",
            )))  # fmt: skip
    unreachable = "icmp6-port-unreachable" if family == IPV6 else "icmp-port-unreachable"
    reject = (
        f"-A {REJECT} -d {_host(vip_s, family)} -p tcp -j REJECT --reject-with tcp-reset",
        f"-A {REJECT} -d {_host(vip_s, family)} -j REJECT --reject-with {unreachable}",
    )
    return ServiceRules(tuple(services), reject, tuple(chains))


@dataclass(frozen=True)
class Ruleset:
    """Everything svcdns wants in one family: per table, each SVCDNS- chain and its rules, in the
    order they are written."""

    family: str
    tables: dict[str, dict[str, tuple[str, ...]]]


def service_rule_map(table: ServiceTable, family: str = IPV4) -> dict[Key, ServiceRules]:
    """Each Service's rules in one family, by key (Services without a VIP of that family left out)."""
    out = {}
    for svc in table:
        rules = service_rules(svc, family)
        if rules is not None:
            out[svc.key] = rules
    return out


def cidr_rules(cidrs: tuple[str, ...], family: str) -> tuple[str, ...]:
    """The end of SVCDNS-REJECT: what is still addressed to a service CIDR of ``family`` after the
    nat table (an address no Service holds) is rejected, unless it is the node's own (the cluster
    DNS address; a pod's packets to it are delivered, never forwarded)."""
    version = 6 if family == IPV6 else 4
    unreachable = "icmp6-port-unreachable" if family == IPV6 else "icmp-port-unreachable"
    out: list[str] = []
    for net in (n for n in map(ipaddress.ip_network, cidrs) if n.version == version):
        head = f"-A {REJECT} -d {net} -m addrtype ! --dst-type LOCAL"
        out += [f"{head} -p tcp -j REJECT --reject-with tcp-reset", f"{head} -j REJECT --reject-with {unreachable}"]
    return tuple(out)


def shared_rules(rules: dict[Key, ServiceRules], family: str = IPV4,
                 cidrs: tuple[str, ...] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:  # fmt: skip
    """The rules of SVCDNS-SERVICES (nat) and SVCDNS-REJECT (filter), Services by namespace/name,
    then the service CIDRs' rejection."""
    services, reject = list(FIXED["nat"][SERVICES]), list(FIXED["filter"][REJECT])
    for key in sorted(rules):
        services.extend(rules[key].services)
        reject.extend(rules[key].reject)
    return tuple(services), (*reject, *cidr_rules(cidrs, family))


def build(table: ServiceTable, family: str = IPV4, cidrs: tuple[str, ...] = ()) -> Ruleset:
    """The desired rules of one family for every Service with a VIP of that family. Chains in the
    order their rules are written: the shared ones, then each Service's (by namespace/name), each
    Service port chain followed by its endpoint chains."""
    return ruleset_of(service_rule_map(table, family), family, cidrs)


def ruleset_of(rules: dict[Key, ServiceRules], family: str, cidrs: tuple[str, ...] = ()) -> Ruleset:
    """The whole ruleset from each Service's rules (:func:`service_rule_map`)."""
    services, reject = shared_rules(rules, family, cidrs)
    nat = {**FIXED["nat"], SERVICES: services}
    for key in sorted(rules):
        nat.update(rules[key].chains)
    return Ruleset(family, {"nat": nat, "filter": {**FIXED["filter"], REJECT: reject}})


def delta(
    before: dict[Key, ServiceRules], table: ServiceTable, keys: set[Key], family: str, cidrs: tuple[str, ...] = ()
) -> tuple[dict[Key, ServiceRules], dict[str, str]]:
    """The ``--noflush`` restore input, per iptables table, that takes the kernel from ``before`` (each
    Service's rules as the last restore wrote them) to ``table``, given the keys of the Services that
    changed. Only those Services' own chains are written (created, or flushed and refilled) and their
    chains no longer wanted deleted; SVCDNS-SERVICES and SVCDNS-REJECT are rewritten only when a rule
    of theirs changed (a Service or a port came or went, a port got its first endpoint or lost its
    last). A table with nothing to write is left out. Returns the new per-Service rules too."""
    after = dict(before)
    old_chains: dict[str, tuple[str, ...]] = {}
    new_chains: dict[str, tuple[str, ...]] = {}
    services_changed = reject_changed = False
    for key in sorted(keys):
        old = before.get(key)
        svc = table.services.get(key)
        new = service_rules(svc, family) if svc is not None else None
        if new is None:
            after.pop(key, None)
        else:
            after[key] = new
        if old == new:
            continue
        old_chains.update(old.chains if old else ())
        new_chains.update(new.chains if new else ())
        services_changed |= (old.services if old else ()) != (new.services if new else ())
        reject_changed |= (old.reject if old else ()) != (new.reject if new else ())
    services, reject = shared_rules(after, family, cidrs) if services_changed or reject_changed else ((), ())
    texts = {}
    nat = {SERVICES: services} if services_changed else {}
    nat.update((name, rules) for name, rules in new_chains.items() if old_chains.get(name) != rules)
    stale = sorted(set(old_chains) - set(new_chains))
    if nat or stale:
        texts["nat"] = _restore_lines("nat", nat, stale)
    if reject_changed:
        texts["filter"] = _restore_lines("filter", {REJECT: reject}, [])
    return after, texts


def _restore_lines(table: str, chains: dict[str, tuple[str, ...]], stale: list[str]) -> str:
    """Chains declared (created, or flushed) and filled; stale ones flushed and deleted."""
    lines = [f"*{table}", *(f":{name} - [0:0]" for name in (*chains, *stale))]
    for rules in chains.values():
        lines.extend(rules)
    lines += [f"-X {name}" for name in stale]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# ---- what the kernel holds, from iptables-save -------------------------------------------------------------


@dataclass(frozen=True)
class Present:
    """Our part of one table as ``iptables-save -t TABLE`` shows it: the SVCDNS- chains, and the rules
    of other chains that jump to one (as (chain, rule spec), in order, duplicates kept)."""

    chains: frozenset[str] = frozenset()
    jumps: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.chains and not self.jumps


_JUMP = re.compile(r"(?:^|\s)-[jg] " + PREFIX)


def parse_save(text: str) -> Present:
    """Parse ``iptables-save -t TABLE`` output (one table) into what svcdns owns in it."""
    chains, jumps = set(), []
    for line in text.splitlines():
        if line.startswith(":" + PREFIX):
            chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            _, chain, spec = line.split(" ", 2)
            if not chain.startswith(PREFIX) and _JUMP.search(spec):
                jumps.append((chain, spec))
    return Present(frozenset(chains), tuple(jumps))


# ---- the restore text ------------------------------------------------------------------------------------


def restore_text(rs: Ruleset, table: str, present: Present = Present()) -> str:
    """The ``iptables-restore --noflush`` input that takes ``table`` from ``present`` to ``rs``:
    our chains declared (created or flushed), stale ones too; jumps from the built-in chains made to
    exist exactly once (missing ones inserted first in their chain, duplicates and strangers deleted);
    every rule written; stale chains deleted. Deterministic: chains sorted, rules in order."""
    wanted = rs.tables[table]
    stale = sorted(present.chains - set(wanted) - {COMMIT})  # the stamp of this restore rewrites that one
    lines = [f"*{table}"]
    lines += [f":{name} - [0:0]" for name in (*sorted(wanted), *stale)]
    seen = set()
    for chain, spec in present.jumps:
        if (chain, spec) in JUMPS[table] and (chain, spec) not in seen:
            seen.add((chain, spec))
        else:
            lines.append(f"-D {chain} {spec}")
    lines += [f"-I {chain} {spec}" for chain, spec in JUMPS[table] if (chain, spec) not in seen]
    for rules in wanted.values():
        lines.extend(rules)
    lines += [f"-X {name}" for name in stale]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def stamp(text: str, note: str) -> str:
    """A table's restore input that also rewrites SVCDNS-COMMIT's one rule with ``note`` (what names
    this restore as svcdns's own): a process that rewrites our chains without it leaves another
    rule, or none, there."""
    head, rest = text.split("\n", 1)
    body, end = rest.rsplit("COMMIT\n", 1)
    return (f"{head}\n:{COMMIT} - [0:0]\n{body}-A {COMMIT} -m comment --comment \"{note}\" -j RETURN\nCOMMIT\n{end}")


def removal_text(table: str, present: Present) -> str | None:
    """The restore input that removes every SVCDNS- chain and every jump to one, nothing else
    (None: there is nothing of ours in ``table``)."""
    if present.empty:
        return None
    lines = [f"*{table}"]
    lines += [f"-D {chain} {spec}" for chain, spec in present.jumps]
    lines += [f":{name} - [0:0]" for name in sorted(present.chains)]
    lines += [f"-X {name}" for name in sorted(present.chains)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render(table: ServiceTable, family: str = IPV4) -> str:
    """Both tables' restore text for a host with nothing of ours yet: what tests and the reference
    file compare."""
    rs = build(table, family)
    return "".join(restore_text(rs, t) for t in TABLES)
