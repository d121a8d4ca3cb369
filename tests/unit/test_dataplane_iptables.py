"""The iptables planner, without root: the whole restore text for a small table, names, the plan
against what iptables-save shows, the reference file; and the shell against a fake iptables."""

import dataclasses
import importlib.util
import subprocess
from pathlib import Path

import pytest

from svcdns.dataplane import DataplaneError, conntrack, footprint, open_dataplane
from svcdns.dataplane.iptables import backend as iptables
from svcdns.dataplane.iptables.rules import (
    JUMPS,
    Present,
    build,
    delta,
    parse_save,
    removal_text,
    render,
    restore_text,
    sep_chain,
    service_rule_map,
    service_rules,
    svc_chain,
)
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.table import ServiceTable

ROOT = Path(__file__).resolve().parents[2]
WEB = Service(
    "web",
    ports=(ServicePort(80, name="http", target_port=8080), ServicePort(53, "UDP", name="dns")),
    cluster_ips=("10.96.0.10", "fd00:96::a"),
    endpoints=(
        Endpoint("10.244.1.2"),
        Endpoint("10.244.2.2"),
        Endpoint("10.244.3.2", ready=False),
        Endpoint("fd00:244:1::2"),
    ),
)
EMPTY = Service("empty", namespace="prod", ports=(ServicePort(443),), cluster_ips=("10.96.0.11",))
ROLL = Service(  # none ready: the serving, terminating one takes the traffic; the other gets none
    "roll",
    ports=(ServicePort(3868, "SCTP"),),
    cluster_ips=("10.96.0.12",),
    endpoints=(
        Endpoint("10.244.4.2", ready=False, serving=True, terminating=True),
        Endpoint("10.244.5.2", ready=False),
    ),
)
STICKY = Service(
    "sticky",
    ports=(ServicePort(80, target_port=8080),),
    cluster_ips=("10.96.0.13",),
    session_affinity="ClientIP",
    affinity_timeout=60,
    endpoints=(Endpoint("10.244.1.2"), Endpoint("10.244.2.2")),
)
HEADLESS = Service("db", type="Headless", ports=(ServicePort(5432),), endpoints=(Endpoint("10.244.9.9"),))
TABLE = ServiceTable.of([WEB, EMPTY, ROLL, STICKY, HEADLESS])

IPV4_TEXT = """\
*nat
:SVCDNS-MARK-MASQ - [0:0]
:SVCDNS-POSTROUTING - [0:0]
:SVCDNS-SEP-5XSD63H5WITUT47U - [0:0]
:SVCDNS-SEP-6HKD4MHPFI2VG5VE - [0:0]
:SVCDNS-SEP-EONB42ZAXUMGY7KO - [0:0]
:SVCDNS-SEP-IY7CPJRK743SR5PJ - [0:0]
:SVCDNS-SEP-JZGS4HEGWTVUSNYR - [0:0]
:SVCDNS-SEP-N63NZR657BCTJJD2 - [0:0]
:SVCDNS-SEP-NOLGY4OBRZNFS76C - [0:0]
:SVCDNS-SERVICES - [0:0]
:SVCDNS-SVC-5MMVLXQGDJ5VCSLN - [0:0]
:SVCDNS-SVC-BUAPP4HTLMOXGEYN - [0:0]
:SVCDNS-SVC-PUKET7UPTOPA44L3 - [0:0]
:SVCDNS-SVC-QUQIVZQZ73WGGA3X - [0:0]
-I PREROUTING -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES
-I OUTPUT -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES
-I POSTROUTING -m comment --comment "svcdns postrouting rules" -j SVCDNS-POSTROUTING
-A SVCDNS-SERVICES -d 10.96.0.12/32 -p sctp -m comment --comment "default/roll:3868 cluster IP" -m sctp --dport 3868 -j SVCDNS-SVC-PUKET7UPTOPA44L3
-A SVCDNS-SERVICES -d 10.96.0.13/32 -p tcp -m comment --comment "default/sticky:80 cluster IP" -m tcp --dport 80 -j SVCDNS-SVC-5MMVLXQGDJ5VCSLN
-A SVCDNS-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j SVCDNS-SVC-QUQIVZQZ73WGGA3X
-A SVCDNS-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "default/web:dns cluster IP" -m udp --dport 53 -j SVCDNS-SVC-BUAPP4HTLMOXGEYN
-A SVCDNS-MARK-MASQ -j MARK --or-mark 0x4000
-A SVCDNS-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A SVCDNS-POSTROUTING -j MARK --xor-mark 0x4000
-A SVCDNS-POSTROUTING -m comment --comment "svcdns hairpin traffic" -j MASQUERADE
-A SVCDNS-SVC-PUKET7UPTOPA44L3 -m comment --comment "default/roll:3868 -> 10.244.4.2:3868" -j SVCDNS-SEP-JZGS4HEGWTVUSNYR
-A SVCDNS-SEP-JZGS4HEGWTVUSNYR -s 10.244.4.2/32 -j SVCDNS-MARK-MASQ
-A SVCDNS-SEP-JZGS4HEGWTVUSNYR -p sctp -j DNAT --to-destination 10.244.4.2:3868
-A SVCDNS-SVC-5MMVLXQGDJ5VCSLN -m recent --name SVCDNS-SEP-5XSD63H5WITUT47U --rcheck --seconds 60 --reap -j SVCDNS-SEP-5XSD63H5WITUT47U
-A SVCDNS-SVC-5MMVLXQGDJ5VCSLN -m recent --name SVCDNS-SEP-N63NZR657BCTJJD2 --rcheck --seconds 60 --reap -j SVCDNS-SEP-N63NZR657BCTJJD2
-A SVCDNS-SVC-5MMVLXQGDJ5VCSLN -m comment --comment "default/sticky:80 -> 10.244.1.2:8080" -m statistic --mode random --probability 0.5000000000 -j SVCDNS-SEP-5XSD63H5WITUT47U
-A SVCDNS-SVC-5MMVLXQGDJ5VCSLN -m comment --comment "default/sticky:80 -> 10.244.2.2:8080" -j SVCDNS-SEP-N63NZR657BCTJJD2
-A SVCDNS-SEP-5XSD63H5WITUT47U -s 10.244.1.2/32 -j SVCDNS-MARK-MASQ
-A SVCDNS-SEP-5XSD63H5WITUT47U -p tcp -m recent --name SVCDNS-SEP-5XSD63H5WITUT47U --set -j DNAT --to-destination 10.244.1.2:8080
-A SVCDNS-SEP-N63NZR657BCTJJD2 -s 10.244.2.2/32 -j SVCDNS-MARK-MASQ
-A SVCDNS-SEP-N63NZR657BCTJJD2 -p tcp -m recent --name SVCDNS-SEP-N63NZR657BCTJJD2 --set -j DNAT --to-destination 10.244.2.2:8080
-A SVCDNS-SVC-QUQIVZQZ73WGGA3X -m comment --comment "default/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.5000000000 -j SVCDNS-SEP-6HKD4MHPFI2VG5VE
-A SVCDNS-SVC-QUQIVZQZ73WGGA3X -m comment --comment "default/web:http -> 10.244.2.2:8080" -j SVCDNS-SEP-NOLGY4OBRZNFS76C
-A SVCDNS-SEP-6HKD4MHPFI2VG5VE -s 10.244.1.2/32 -j SVCDNS-MARK-MASQ
-A SVCDNS-SEP-6HKD4MHPFI2VG5VE -p tcp -j DNAT --to-destination 10.244.1.2:8080
-A SVCDNS-SEP-NOLGY4OBRZNFS76C -s 10.244.2.2/32 -j SVCDNS-MARK-MASQ
-A SVCDNS-SEP-NOLGY4OBRZNFS76C -p tcp -j DNAT --to-destination 10.244.2.2:8080
-A SVCDNS-SVC-BUAPP4HTLMOXGEYN -m comment --comment "default/web:dns -> 10.244.1.2:53" -m statistic --mode random --probability 0.5000000000 -j SVCDNS-SEP-EONB42ZAXUMGY7KO
-A SVCDNS-SVC-BUAPP4HTLMOXGEYN -m comment --comment "default/web:dns -> 10.244.2.2:53" -j SVCDNS-SEP-IY7CPJRK743SR5PJ
-A SVCDNS-SEP-EONB42ZAXUMGY7KO -s 10.244.1.2/32 -j SVCDNS-MARK-MASQ
-A SVCDNS-SEP-EONB42ZAXUMGY7KO -p udp -j DNAT --to-destination 10.244.1.2:53
-A SVCDNS-SEP-IY7CPJRK743SR5PJ -s 10.244.2.2/32 -j SVCDNS-MARK-MASQ
-A SVCDNS-SEP-IY7CPJRK743SR5PJ -p udp -j DNAT --to-destination 10.244.2.2:53
COMMIT
*filter
:SVCDNS-REJECT - [0:0]
-I FORWARD -m conntrack --ctstate NEW -m comment --comment "svcdns service portals" -j SVCDNS-REJECT
-I OUTPUT -m conntrack --ctstate NEW -m comment --comment "svcdns service portals" -j SVCDNS-REJECT
-A SVCDNS-REJECT -d 10.96.0.12/32 -p tcp -j REJECT --reject-with tcp-reset
-A SVCDNS-REJECT -d 10.96.0.12/32 -j REJECT --reject-with icmp-port-unreachable
-A SVCDNS-REJECT -d 10.96.0.13/32 -p tcp -j REJECT --reject-with tcp-reset
-A SVCDNS-REJECT -d 10.96.0.13/32 -j REJECT --reject-with icmp-port-unreachable
-A SVCDNS-REJECT -d 10.96.0.10/32 -p tcp -j REJECT --reject-with tcp-reset
-A SVCDNS-REJECT -d 10.96.0.10/32 -j REJECT --reject-with icmp-port-unreachable
-A SVCDNS-REJECT -d 10.96.0.11/32 -p tcp -j REJECT --reject-with tcp-reset
-A SVCDNS-REJECT -d 10.96.0.11/32 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""

IPV6_TEXT = """\
*nat
:SVCDNS-MARK-MASQ - [0:0]
:SVCDNS-POSTROUTING - [0:0]
:SVCDNS-SEP-BVV6VDQJANHZ7XS6 - [0:0]
:SVCDNS-SEP-R6STPATDVT5BAKPS - [0:0]
:SVCDNS-SERVICES - [0:0]
:SVCDNS-SVC-BUAPP4HTLMOXGEYN - [0:0]
:SVCDNS-SVC-QUQIVZQZ73WGGA3X - [0:0]
-I PREROUTING -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES
-I OUTPUT -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES
-I POSTROUTING -m comment --comment "svcdns postrouting rules" -j SVCDNS-POSTROUTING
-A SVCDNS-SERVICES -d fd00:96::a/128 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j SVCDNS-SVC-QUQIVZQZ73WGGA3X
-A SVCDNS-SERVICES -d fd00:96::a/128 -p udp -m comment --comment "default/web:dns cluster IP" -m udp --dport 53 -j SVCDNS-SVC-BUAPP4HTLMOXGEYN
-A SVCDNS-MARK-MASQ -j MARK --or-mark 0x4000
-A SVCDNS-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A SVCDNS-POSTROUTING -j MARK --xor-mark 0x4000
-A SVCDNS-POSTROUTING -m comment --comment "svcdns hairpin traffic" -j MASQUERADE
-A SVCDNS-SVC-QUQIVZQZ73WGGA3X -m comment --comment "default/web:http -> [fd00:244:1::2]:8080" -j SVCDNS-SEP-BVV6VDQJANHZ7XS6
-A SVCDNS-SEP-BVV6VDQJANHZ7XS6 -s fd00:244:1::2/128 -j SVCDNS-MARK-MASQ
-A SVCDNS-SEP-BVV6VDQJANHZ7XS6 -p tcp -j DNAT --to-destination [fd00:244:1::2]:8080
-A SVCDNS-SVC-BUAPP4HTLMOXGEYN -m comment --comment "default/web:dns -> [fd00:244:1::2]:53" -j SVCDNS-SEP-R6STPATDVT5BAKPS
-A SVCDNS-SEP-R6STPATDVT5BAKPS -s fd00:244:1::2/128 -j SVCDNS-MARK-MASQ
-A SVCDNS-SEP-R6STPATDVT5BAKPS -p udp -j DNAT --to-destination [fd00:244:1::2]:53
COMMIT
*filter
:SVCDNS-REJECT - [0:0]
-I FORWARD -m conntrack --ctstate NEW -m comment --comment "svcdns service portals" -j SVCDNS-REJECT
-I OUTPUT -m conntrack --ctstate NEW -m comment --comment "svcdns service portals" -j SVCDNS-REJECT
-A SVCDNS-REJECT -d fd00:96::a/128 -p tcp -j REJECT --reject-with tcp-reset
-A SVCDNS-REJECT -d fd00:96::a/128 -j REJECT --reject-with icmp6-port-unreachable
COMMIT
"""


def test_the_whole_ipv4_restore_text():
    # ready endpoints only (10.244.3.2 is not ready); no endpoint: no nat rule, only the reject;
    # none ready: the serving+terminating one; UDP, SCTP, ClientIP affinity; no rule for a headless Service
    assert render(TABLE) == IPV4_TEXT


def test_the_whole_ipv6_restore_text():
    assert render(TABLE, "IPv6") == IPV6_TEXT


def test_a_table_without_services_still_has_the_fixed_chains_and_jumps():
    text = render(ServiceTable())
    assert ":SVCDNS-SERVICES - [0:0]" in text and ":SVCDNS-REJECT - [0:0]" in text
    assert text.count("-I ") == 5 and "SVCDNS-SVC-" not in text


def test_names_are_stable_short_and_distinct():
    assert svc_chain(WEB, "TCP", 80) == "SVCDNS-SVC-QUQIVZQZ73WGGA3X"
    assert sep_chain(WEB, "TCP", 80, "10.244.1.2", 8080) == "SVCDNS-SEP-6HKD4MHPFI2VG5VE"
    names = {svc_chain(WEB, "TCP", 80), svc_chain(WEB, "UDP", 80), svc_chain(WEB, "TCP", 81),
             svc_chain(EMPTY, "TCP", 80), sep_chain(WEB, "TCP", 80, "10.244.1.2", 8081),
             sep_chain(WEB, "TCP", 80, "10.244.1.3", 8080)}  # fmt: skip
    assert len(names) == 6
    long = Service("a" * 63, namespace="b" * 63, ports=(ServicePort(65535, "SCTP"),), cluster_ips=("10.96.0.9",))
    assert all(len(n) <= 28 for n in (*names, svc_chain(long, "SCTP", 65535)))  # iptables' limit


def test_the_cascade_picks_uniformly():
    svc = Service("many", ports=(ServicePort(80),), cluster_ips=("10.96.0.20",),
                  endpoints=tuple(Endpoint(f"10.244.{i}.2") for i in range(1, 5)))  # fmt: skip
    (chain, rules), *_ = service_rules(svc, "IPv4").chains
    probabilities = [r.split("--probability ")[1].split()[0] if "--probability" in r else None for r in rules]
    assert probabilities == ["0.2500000000", "0.3333333333", "0.5000000000", None]  # 1/4, 3/4*1/3, ... each 1/4


def test_an_endpoint_change_rewrites_only_that_service_text_and_keeps_names():
    before, after = build(TABLE), build(TABLE.replace([WEB.with_endpoints(WEB.endpoints[1:])]))
    changed = {n for n in {*before.tables["nat"], *after.tables["nat"]}
               if before.tables["nat"].get(n) != after.tables["nat"].get(n)}  # fmt: skip
    assert changed == {svc_chain(WEB, "TCP", 80), svc_chain(WEB, "UDP", 53),
                       sep_chain(WEB, "TCP", 80, "10.244.1.2", 8080), sep_chain(WEB, "UDP", 53, "10.244.1.2", 53)}  # fmt: skip


SAVED = """\
# Generated by iptables-save v1.8.9 (nf_tables) on Wed Nov 25 07:22:19 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:SVCDNS-MARK-MASQ - [0:0]
:SVCDNS-SEP-OLDOLDOLDOLDOLD1 - [0:0]
:SVCDNS-SERVICES - [0:0]
-A PREROUTING -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES
-A OUTPUT -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES
-A POSTROUTING -j SVCDNS-POSTROUTING
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A SVCDNS-SERVICES -d 10.96.0.99/32 -p tcp -m tcp --dport 80 -j SVCDNS-SEP-OLDOLDOLDOLDOLD1
COMMIT
"""


def test_parse_save_finds_our_chains_and_the_jumps_to_them_only():
    present = parse_save(SAVED)
    assert present.chains == {"SVCDNS-MARK-MASQ", "SVCDNS-SEP-OLDOLDOLDOLDOLD1", "SVCDNS-SERVICES"}
    assert present.jumps == (
        ("PREROUTING", '-m comment --comment "svcdns service portals" -j SVCDNS-SERVICES'),
        ("OUTPUT", '-m comment --comment "svcdns service portals" -j SVCDNS-SERVICES'),
        ("OUTPUT", '-m comment --comment "svcdns service portals" -j SVCDNS-SERVICES'),
        ("POSTROUTING", "-j SVCDNS-POSTROUTING"),
    )


def test_restore_against_the_kernel_keeps_jumps_once_and_deletes_stale_chains():
    text = restore_text(build(ServiceTable.of([EMPTY])), "nat", parse_save(SAVED))
    lines = text.splitlines()
    assert lines[:5] == ["*nat", ":SVCDNS-MARK-MASQ - [0:0]", ":SVCDNS-POSTROUTING - [0:0]",
                         ":SVCDNS-SERVICES - [0:0]", ":SVCDNS-SEP-OLDOLDOLDOLDOLD1 - [0:0]"]  # fmt: skip
    assert lines[5:9] == [
        '-D OUTPUT -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES',  # the duplicate
        "-D POSTROUTING -j SVCDNS-POSTROUTING",  # not our jump's form: replaced
        '-I POSTROUTING -m comment --comment "svcdns postrouting rules" -j SVCDNS-POSTROUTING',
        "-A SVCDNS-MARK-MASQ -j MARK --or-mark 0x4000",
    ]
    assert lines[-2:] == ["-X SVCDNS-SEP-OLDOLDOLDOLDOLD1", "COMMIT"]
    assert "DOCKER" not in text and "-I PREROUTING" not in text and "-I OUTPUT" not in text


def test_a_second_restore_against_its_own_result_inserts_nothing():
    rs = build(TABLE)
    for table in ("nat", "filter"):
        present = Present(frozenset(rs.tables[table]), JUMPS[table])
        text = restore_text(rs, table, present)
        assert "-I " not in text and "-D " not in text and "-X " not in text


def test_removal_deletes_exactly_our_jumps_and_chains():
    assert removal_text("nat", parse_save(SAVED)) == (
        "*nat\n"
        '-D PREROUTING -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES\n'
        '-D OUTPUT -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES\n'
        '-D OUTPUT -m comment --comment "svcdns service portals" -j SVCDNS-SERVICES\n'
        "-D POSTROUTING -j SVCDNS-POSTROUTING\n"
        ":SVCDNS-MARK-MASQ - [0:0]\n:SVCDNS-SEP-OLDOLDOLDOLDOLD1 - [0:0]\n:SVCDNS-SERVICES - [0:0]\n"
        "-X SVCDNS-MARK-MASQ\n-X SVCDNS-SEP-OLDOLDOLDOLDOLD1\n-X SVCDNS-SERVICES\n"
        "COMMIT\n"
    )
    assert removal_text("filter", parse_save("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n")) is None


def test_the_reference_ruleset_matches_the_generator():
    spec = importlib.util.spec_from_file_location("iptables_render", ROOT / "iptables" / "render.py")
    assert spec is not None and spec.loader is not None
    render_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_script)
    current = (ROOT / "iptables" / "reference.rules").read_text()
    assert current == render_script.reference_text(ROOT / "iptables" / "sample-registry"), (
        "iptables/reference.rules is out of date: regenerate it with\n"
        "  python iptables/render.py iptables/sample-registry > iptables/reference.rules"
    )


def test_udp_expectations_from_the_model():
    assert conntrack.udp_expectations(TABLE, "IPv4") == {("10.96.0.10", 53): {("10.244.1.2", 53), ("10.244.2.2", 53)}}
    assert conntrack.udp_expectations(TABLE, "IPv6") == {("fd00:96::a", 53): {("fd00:244:1::2", 53)}}
    gone = Service("q", ports=(ServicePort(53, "UDP", 5353),), cluster_ips=("10.96.0.30",))
    assert conntrack.udp_expectations([gone], "IPv4") == {("10.96.0.30", 53): set()}


# ---- the shell, against a fake iptables ---------------------------------------------------------------------


def unstamped(text):
    """A restore's input without the two lines of its stamp (SVCDNS-COMMIT), which every restore has."""
    lines = text.splitlines(keepends=True)
    stamp = [line for line in lines if "SVCDNS-COMMIT" in line]
    assert len(stamp) == 2 * lines.count("COMMIT\n"), text
    return "".join(line for line in lines if "SVCDNS-COMMIT" not in line)


class FakeIptables:
    """iptables-save / iptables-restore for the shell's subprocess calls: records each call, applies
    each restore to its table (declare/flush, -A, -I, -D, -X) or, on demand, refuses it whole."""

    BUILTIN = {"nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"), "filter": ("INPUT", "FORWARD", "OUTPUT")}

    def __init__(self):
        self.calls, self.tables, self.fail, self.variant = [], {}, None, "legacy"

    def chains(self, family, table):
        return self.tables.setdefault((family, table), {c: [] for c in self.BUILTIN[table]})

    def save(self, family, table):
        chains = self.chains(family, table)
        lines = [f"*{table}", *(f":{c} {'ACCEPT' if c in self.BUILTIN[table] else '-'} [0:0]" for c in chains)]
        lines += [f"-A {c} {spec}" for c, specs in chains.items() for spec in specs]
        return "\n".join([*lines, "COMMIT", ""])

    def __call__(self, argv, input=None, **kw):
        if argv[1:] == ["--version"]:
            return subprocess.CompletedProcess(argv, 0, f"iptables v1.8.9 ({self.variant})\n", "")
        self.calls.append((tuple(argv), input))
        family = "6" if argv[0].startswith("ip6") else "4"
        if argv[0].endswith("-save"):
            return subprocess.CompletedProcess(argv, 0, self.save(family, argv[2]), "")
        table = input.split("\n", 1)[0][1:]
        if self.fail and self.fail in input:
            return subprocess.CompletedProcess(
                argv, 2, "", "iptables-restore: line 7 failed\nError occurred at line: 7\n"
            )
        chains = {c: list(specs) for c, specs in self.chains(family, table).items()}
        for line in input.splitlines()[1:-1]:
            if line.startswith(":"):
                chains[line[1:].split()[0]] = []
                continue
            verb, chain, spec = line.split(" ", 2) if " " in line[3:] else (*line.split(" ", 1), "")
            if verb == "-A":
                chains[chain].append(spec)
            elif verb == "-I":
                chains[chain].insert(0, spec)
            elif verb == "-D":
                chains[chain].remove(spec)
            elif verb == "-X":
                del chains[chain]
        self.tables[(family, table)] = chains
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.fixture
def fake(monkeypatch):
    fake, guarded, cleared = FakeIptables(), [], []
    monkeypatch.setattr(iptables.subprocess, "run", fake)
    monkeypatch.setattr(iptables, "check_netns_guard", guarded.append)
    monkeypatch.setattr(iptables, "clear_udp", cleared.append)
    fake.guarded, fake.cleared = guarded, cleared
    iptables._nft_backed.cache_clear()  # the fake says which variant it is
    yield fake
    iptables._nft_backed.cache_clear()


def test_drift_and_loss_checks_use_nftables_with_iptables_nft_only(fake, monkeypatch):
    gen, handle = [7], [3]

    def read(tables, marks=()):  # what nftables holds: iptables-nft's tables, and our SVCDNS-COMMIT chains' rules
        rules = {m: str(fake.chains("6" if m[0] == "ip6" else "4", m[1]).get(m[2])).encode() for m in marks}
        return gen[0], {t: handle[0] for t in tables}, rules

    monkeypatch.setattr(footprint.netlink, "footprint", read)
    dp = open_dataplane("iptables")
    dp.sync(TABLE)
    assert dp.drifted()  # legacy iptables: no counter, every check converges
    assert not dp.lost()  # and no cheap way to tell: left to the drift check
    fake.variant = "nf_tables"
    iptables._nft_backed.cache_clear()
    dp.sync(TABLE)
    assert not dp.drifted() and not dp.lost()  # nobody committed since our restore
    gen[0] = 8
    assert dp.drifted() and not dp.lost()  # someone did, and left iptables-nft's tables in place
    handle[0] = 9
    assert dp.lost()  # the tables were deleted and made again (nft flush ruleset)
    dp.sync(TABLE, full=True)
    assert not dp.lost()
    gen[0] = 10  # a second agent's restore: its own stamp in SVCDNS-COMMIT
    fake.chains("4", "filter")["SVCDNS-COMMIT"] = ['-m comment --comment "svcdns pid 1 commit 1" -j RETURN']
    assert dp.lost()


def test_every_restore_stamps_its_table_and_a_full_one_keeps_the_stamp_chain(fake):
    dp = open_dataplane("iptables")
    dp.sync(TABLE)
    stamps = {t: fake.chains("4", t)["SVCDNS-COMMIT"] for t in ("nat", "filter")}
    assert all(len(s) == 1 and "svcdns pid" in s[0] and "-j RETURN" in s[0] for s in stamps.values()), stamps
    dp.sync(TABLE.replace([WEB.with_endpoints(WEB.endpoints[1:])]))  # only nat changes
    assert fake.chains("4", "nat")["SVCDNS-COMMIT"] != stamps["nat"]
    assert fake.chains("4", "filter")["SVCDNS-COMMIT"] == stamps["filter"]
    dp.sync(TABLE, full=True)  # iptables-save shows SVCDNS-COMMIT: not a stale chain to delete
    assert len(fake.chains("4", "filter")["SVCDNS-COMMIT"]) == 1


def test_the_service_cidrs_are_rejected_after_the_vips_but_not_local_addresses(fake):
    dp = open_dataplane("iptables", service_cidrs=("10.96.0.0/12", "fd00:96::/108"))
    dp.sync(TABLE)
    four, six = fake.chains("4", "filter")["SVCDNS-REJECT"], fake.chains("6", "filter")["SVCDNS-REJECT"]
    assert four[-2:] == ["-d 10.96.0.0/12 -m addrtype ! --dst-type LOCAL -p tcp -j REJECT --reject-with tcp-reset",
                         "-d 10.96.0.0/12 -m addrtype ! --dst-type LOCAL -j REJECT --reject-with icmp-port-unreachable"]
    assert six[-1] == "-d fd00:96::/108 -m addrtype ! --dst-type LOCAL -j REJECT --reject-with icmp6-port-unreachable"
    dp.sync(TABLE.replace(deletes=[WEB.key]))  # SVCDNS-REJECT rewritten by a delta: the CIDRs stay last
    assert fake.chains("4", "filter")["SVCDNS-REJECT"][-2:] == four[-2:]
    assert all("10.96.0.10" not in r for r in fake.chains("4", "filter")["SVCDNS-REJECT"])


def test_a_full_sync_saves_then_restores_each_table_of_each_family(fake):
    result = open_dataplane("iptables").sync(TABLE, full=True)
    argv = [c[0] for c in fake.calls]
    # a family's tables are all read before any is written
    assert argv == [("iptables-save", "-t", "nat"), ("iptables-save", "-t", "filter"),
                    ("iptables-restore", "-w", "--noflush"), ("iptables-restore", "-w", "--noflush"),
                    ("ip6tables-save", "-t", "nat"), ("ip6tables-save", "-t", "filter"),
                    ("ip6tables-restore", "-w", "--noflush"), ("ip6tables-restore", "-w", "--noflush")]  # fmt: skip
    assert len(fake.guarded) == 8 + 1  # the namespace guard before every call (and `iptables --version`)
    assert unstamped(fake.calls[2][1] + fake.calls[3][1]) == IPV4_TEXT
    assert result.full and result.services == 5 and result.rules > 0
    assert fake.cleared == [{("10.96.0.10", 53): {("10.244.1.2", 53), ("10.244.2.2", 53)},
                             ("fd00:96::a", 53): {("fd00:244:1::2", 53)}}]  # fmt: skip


def test_a_partial_sync_trusts_its_last_restore_and_a_gone_udp_port_is_cleared(fake):
    dp = open_dataplane("iptables", families=("IPv4",))
    dp.sync(TABLE, full=True)
    fake.calls.clear()
    result = dp.sync(TABLE.replace(deletes=[WEB.key]))
    assert [c[0][0] for c in fake.calls] == ["iptables-restore", "iptables-restore"]  # no save
    assert "-I " not in fake.calls[0][1] and "-X SVCDNS-SVC-QUQIVZQZ73WGGA3X" in fake.calls[0][1]
    assert not result.full
    assert fake.cleared[-1] == {("10.96.0.10", 53): set()}


def test_a_refused_restore_raises_with_its_message_and_the_next_sync_reads_the_kernel(fake):
    dp = open_dataplane("iptables", families=("IPv4",))
    dp.sync(TABLE, full=True)
    fake.calls.clear()
    fake.fail = "*filter"
    with pytest.raises(
        DataplaneError, match="iptables-restore refused the filter table.*line 7 failed.*previous rules"
    ):
        dp.sync(TABLE.replace(deletes=[WEB.key]))
    fake.fail, fake.calls[:] = None, []
    dp.sync(TABLE.replace(deletes=[WEB.key]))  # after a failure the family is read and written whole
    assert [c[0][0] for c in fake.calls] == ["iptables-save", "iptables-save", "iptables-restore", "iptables-restore"]


def test_cleanup_removes_ours_in_both_families_and_is_a_no_op_after(fake):
    dp = open_dataplane("iptables")
    dp.sync(TABLE, full=True)
    fake.chains("4", "nat")["POSTROUTING"].append("-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE")  # not ours
    fake.calls.clear()
    dp.cleanup()
    assert len([c for c in fake.calls if c[0][0].endswith("-restore")]) == 4
    assert fake.tables[("4", "nat")] == {"PREROUTING": [], "INPUT": [], "OUTPUT": [],
                                         "POSTROUTING": ["-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"]}  # fmt: skip
    assert all("SVCDNS" not in fake.save(f, t) for f in "46" for t in ("nat", "filter"))
    fake.calls.clear()
    dp.cleanup()
    assert [c[0][0] for c in fake.calls if c[0][0].endswith("-restore")] == []


def test_a_missing_iptables_is_a_clear_error(monkeypatch):
    def missing(argv, **kw):
        raise FileNotFoundError(argv[0])

    monkeypatch.setattr(iptables.subprocess, "run", missing)
    monkeypatch.setattr(iptables, "check_netns_guard", lambda what: None)
    with pytest.raises(DataplaneError, match="iptables-save not found: install the iptables package"):
        open_dataplane("iptables").sync(TABLE)


def test_the_shell_refuses_the_host_namespace(monkeypatch):
    def never(*a, **kw):
        raise AssertionError("iptables ran in the host namespace")

    monkeypatch.setattr(iptables.subprocess, "run", never)
    with pytest.raises(DataplaneError, match="refusing to run iptables-save in the host network namespace"):
        open_dataplane("iptables").sync(TABLE)


def test_repeated_full_syncs_keep_each_jump_exactly_once(fake):
    dp = open_dataplane("iptables", families=("IPv4",))
    dp.sync(TABLE, full=True)
    first = fake.save("4", "nat"), fake.save("4", "filter")
    fake.calls.clear()
    open_dataplane("iptables", families=("IPv4",)).sync(TABLE, full=True)  # a restart
    assert not any("-I " in (c[1] or "") for c in fake.calls)
    assert (fake.save("4", "nat"), fake.save("4", "filter")) == first
    assert fake.save("4", "nat").count("-j SVCDNS-SERVICES") == 2  # PREROUTING and OUTPUT, once each


# ---- syncs that write only what changed ------------------------------------------------------------------

CHANGES = [  # each step's table, from TABLE on; every kind of change a sync meets
    ("an endpoint goes", lambda t: t.replace([WEB.with_endpoints(WEB.endpoints[1:])])),
    ("an endpoint comes", lambda t: t.replace([WEB.with_endpoints((*WEB.endpoints, Endpoint("10.244.6.2")))])),
    ("a port gets its first endpoint", lambda t: t.replace([EMPTY.with_endpoints((Endpoint("10.244.7.2"),))])),
    (
        "a Service comes",
        lambda t: t.replace(
            [
                Service(
                    "new", ports=(ServicePort(8443),), cluster_ips=("10.96.0.20",), endpoints=(Endpoint("10.244.8.2"),)
                )
            ]
        ),
    ),  # fmt: skip
    ("affinity is switched off", lambda t: t.replace([dataclasses.replace(STICKY, session_affinity="None")])),
    ("a port's last endpoint goes", lambda t: t.replace([t.get("prod", "empty").with_endpoints(())])),
    ("a Service goes", lambda t: t.replace(deletes=[WEB.key])),
    ("nothing changes", lambda t: t),
]


def ours(fake, table: str) -> dict[str, list[str]]:
    """Our chains in the fake kernel, as full rules ("-A CHAIN spec"), but the stamp's."""
    return {
        c: [f"-A {c} {spec}" for spec in specs]
        for c, specs in fake.chains("4", table).items()
        if c.startswith("SVCDNS-") and c != "SVCDNS-COMMIT"
    }


def test_each_change_writes_only_what_changed_and_leaves_what_a_full_sync_would(fake):
    dp = open_dataplane("iptables", families=("IPv4",))
    table = TABLE
    dp.sync(table, full=True)
    for what, change in CHANGES:
        fake.calls.clear()
        before_nat = ours(fake, "nat")
        table = change(table)
        result = dp.sync(table)
        assert not result.full and all(argv[0] == "iptables-restore" for argv, _ in fake.calls), what  # no save
        want = build(table)
        assert ours(fake, "nat") == {c: list(r) for c, r in want.tables["nat"].items()}, what
        assert ours(fake, "filter") == {c: list(r) for c, r in want.tables["filter"].items()}, what
        written = [line.split()[0][1:] for _, text in fake.calls for line in text.splitlines() if line.startswith(":")]
        rewritten = {
            c for c in {*before_nat, *want.tables["nat"]} if before_nat.get(c) != list(want.tables["nat"].get(c, []))
        }
        assert set(written) - {"SVCDNS-REJECT", "SVCDNS-COMMIT"} == rewritten, what  # the chains that differ, the stamp
    assert fake.save("4", "nat").count("-j SVCDNS-SERVICES") == 2  # the jumps, untouched


def test_an_endpoint_change_is_one_small_nat_restore():
    before = service_rule_map(TABLE)
    table = TABLE.replace([WEB.with_endpoints(WEB.endpoints[1:])])
    after, texts = delta(before, table, {WEB.key}, "IPv4")
    assert list(texts) == ["nat"]  # SVCDNS-SERVICES and SVCDNS-REJECT are not touched
    gone = sep_chain(WEB, "TCP", 80, "10.244.1.2", 8080)
    assert texts["nat"].splitlines() == [
        "*nat",
        f":{svc_chain(WEB, 'TCP', 80)} - [0:0]",
        f":{svc_chain(WEB, 'UDP', 53)} - [0:0]",
        f":{gone} - [0:0]",
        f":{sep_chain(WEB, 'UDP', 53, '10.244.1.2', 53)} - [0:0]",
        *[r for c in (svc_chain(WEB, "TCP", 80), svc_chain(WEB, "UDP", 53)) for r in build(table).tables["nat"][c]],
        f"-X {gone}",
        f"-X {sep_chain(WEB, 'UDP', 53, '10.244.1.2', 53)}",
        "COMMIT",
    ]
    assert after == service_rule_map(table)


def test_a_new_service_rewrites_the_shared_chains_of_both_tables():
    new = Service("new", ports=(ServicePort(8443),), cluster_ips=("10.96.0.20",), endpoints=(Endpoint("10.244.8.2"),))
    table = TABLE.replace([new])
    _, texts = delta(service_rule_map(TABLE), table, {new.key}, "IPv4")
    want = build(table).tables
    assert texts["nat"].count(":SVCDNS-SERVICES - [0:0]") == 1 and all(
        r in texts["nat"] for r in want["nat"]["SVCDNS-SERVICES"]
    )
    assert texts["filter"] == "\n".join(
        ["*filter", ":SVCDNS-REJECT - [0:0]", *want["filter"]["SVCDNS-REJECT"], "COMMIT", ""]
    )
