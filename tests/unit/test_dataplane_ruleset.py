"""The ruleset planner, without root: the whole ruleset as text, and the minimal change per event."""

import dataclasses

from svcdns.dataplane.nftables.encode import encode
from svcdns.dataplane.nftables.objects import chain_name
from svcdns.dataplane.nftables.ruleset import build, plan, render
from svcdns.dataplane.nftables.transaction import AddRules
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.table import ServiceTable, changed_keys

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
HEADLESS = Service("db", type="Headless", ports=(ServicePort(5432),), endpoints=(Endpoint("10.244.9.9"),))
TABLE = ServiceTable.of([WEB, EMPTY, HEADLESS])

DNAT = [f"meta l4proto {p} dnat ip to ip daddr . meta l4proto . th dport . ct mark map @endpoints" for p in ("tcp", "udp", "sctp")]
BASE = {
    "commit": [],  # the backend's stamp goes here (test_dataplane_fake: a foreign rewrite)
    "filter-forward": ["type filter hook forward priority -10; policy accept;",
                       "ip daddr @vips meta l4proto tcp reject with tcp reset", "ip daddr @vips reject"],
    "filter-output": ["type filter hook output priority -10; policy accept;",
                      "ip daddr @vips meta l4proto tcp reject with tcp reset", "ip daddr @vips reject"],
    "nat-output": ["type nat hook output priority -100; policy accept;", "jump services", *DNAT],
    "nat-postrouting": ["type nat hook postrouting priority 100; policy accept;",
                        "ct original ip daddr @vips ct mark set 0", "ip saddr . ip daddr @hairpin masquerade",
                        'ct original ip daddr @vips meta iifkind "bridge" meta oifkind "bridge" masquerade'],
    "nat-prerouting": ["type nat hook prerouting priority -100; policy accept;", "jump services", *DNAT],
    "services": ["ip daddr . meta l4proto . th dport vmap @service-ips",
                 "ct mark set ip daddr . meta l4proto . th dport map @counts", "ip daddr @vips ct mark vmap @draws"],
}  # fmt: skip


def test_the_whole_ipv4_ruleset():
    chains = dict(BASE)
    chains["draw-2"] = ["ct mark set numgen random mod 2 offset 1"]  # draws 1 or 2: an endpoint's number
    expected = [
        "table ip svcdns {",
        "\tset vips { type ipv4_addr; elements = { 10.96.0.10, 10.96.0.11 } }",
        "\tset hairpin { type ipv4_addr . ipv4_addr; elements = { 10.244.1.2 . 10.244.1.2, 10.244.2.2 . 10.244.2.2 } }",
        "\tmap service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }",  # no sticky port
        # web's two ports draw among 2; empty's port has none: no count, nothing drawn, the filter chains reject
        "\tmap counts { type ipv4_addr . inet_proto . inet_service : mark; elements = { "
        "10.96.0.10 . tcp . 80 : 2, 10.96.0.10 . udp . 53 : 2 } }",
        "\tmap draws { type mark : verdict; elements = { 2 : goto draw-2 } }",
        "\tmap endpoints { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service; elements = { "
        "10.96.0.10 . tcp . 80 . 1 : 10.244.1.2 . 8080, 10.96.0.10 . tcp . 80 . 2 : 10.244.2.2 . 8080, "
        "10.96.0.10 . udp . 53 . 1 : 10.244.1.2 . 53, 10.96.0.10 . udp . 53 . 2 : 10.244.2.2 . 53 } }",
    ]
    for name in sorted(chains):
        expected += [f"\tchain {name} {{", *(f"\t\t{line}" for line in chains[name]), "\t}"]
    expected.append("}")
    assert render(build(TABLE)).splitlines() == expected


def test_an_address_of_the_service_cidrs_that_no_service_holds_is_rejected_but_not_a_local_one():
    cidrs = ("10.96.0.0/12", "fd00:96::/108")
    text = render(build(TABLE, "IPv4", cidrs))
    chains = {c.split(" {")[0].strip(): c for c in text.split("\tchain ")[1:]}
    tail = ["ip daddr 10.96.0.0/12 meta l4proto tcp reject with tcp reset", "ip daddr 10.96.0.0/12 reject"]
    assert chains["filter-forward"].splitlines()[2:-1] == [f"\t\t{r}" for r in BASE["filter-forward"][1:] + tail]
    local = [r.replace("0/12 ", "0/12 fib daddr type != local ") for r in tail]  # the cluster DNS address is local
    assert chains["filter-output"].splitlines()[2:-1] == [f"\t\t{r}" for r in BASE["filter-output"][1:] + local]
    six = render(build(TABLE, "IPv6", cidrs))
    assert "ip6 daddr fd00:96::/108 fib daddr type != local reject" in six and "10.96.0.0" not in six
    assert render(build(TABLE, "IPv4")) == render(build(TABLE))  # no CIDRs given: VIPs only


def test_ipv6_has_its_own_table():
    got = render(build(TABLE, "IPv6"))
    assert got.startswith("table ip6 svcdns {")
    assert "fd00:96::a . tcp . 80" in got and "10.96.0.10" not in got
    assert "fd00:96::a . tcp . 80 . 1 : fd00:244:1::2 . 8080" in got
    assert "meta l4proto tcp dnat ip6 to ip6 daddr . meta l4proto . th dport . ct mark map @endpoints" in got


def test_chain_names_are_stable_readable_and_marked():
    name = chain_name(WEB, "TCP", 80)
    assert name.startswith("svc-") and name.endswith("-default/web/tcp/80")
    assert name == chain_name(WEB.with_endpoints(()), "TCP", 80)  # endpoints do not rename it


def test_serving_terminating_endpoints_take_over_when_none_is_ready():
    svc = WEB.with_endpoints((Endpoint("10.244.5.5", ready=False, serving=True, terminating=True),
                              Endpoint("10.244.6.6", ready=False)))  # fmt: skip
    rs = build(ServiceTable.of([svc]))
    assert rs.endpoint_elements() == {("10.96.0.10", "TCP", 80, 1): ("10.244.5.5", 8080),
                                      ("10.96.0.10", "UDP", 53, 1): ("10.244.5.5", 53)}  # fmt: skip


def advance(table, new_table):
    return build(table).apply(new_table, changed_keys(table, new_table))


def lines(tx):
    return str(tx).splitlines()


def test_adding_an_endpoint_touches_that_service_only():
    more = TABLE.replace([WEB.with_endpoints(WEB.endpoints + (Endpoint("10.244.4.2"),))])
    rs, tx = advance(TABLE, more)
    assert lines(tx) == [
        "add chain ip svcdns draw-3",  # no port drew among 3 yet
        "add rule ip svcdns draw-3 ct mark set numgen random mod 3 offset 1",
        "add element ip svcdns draws { 3 : goto draw-3 }",
        "add element ip svcdns hairpin { 10.244.4.2 . 10.244.4.2 }",
        "add element ip svcdns endpoints { 10.96.0.10 . tcp . 80 . 3 : 10.244.4.2 . 8080, "
        "10.96.0.10 . udp . 53 . 3 : 10.244.4.2 . 53 }",
        "delete element ip svcdns counts { 10.96.0.10 . tcp . 80, 10.96.0.10 . udp . 53 }",
        "add element ip svcdns counts { 10.96.0.10 . tcp . 80 : 3, 10.96.0.10 . udp . 53 : 3 }",
        "delete element ip svcdns draws { 2 }",  # no port draws among 2 now
        "flush chain ip svcdns draw-2",
        "delete chain ip svcdns draw-2",
    ]
    assert rs.counts()[("10.96.0.10", "TCP", 80)] == (3,) and sorted(rs.draws) == [3]
    again = more.replace([EMPTY.with_endpoints((Endpoint("10.244.9.1"), Endpoint("10.244.9.2"), Endpoint("10.244.9.3")))])
    _, tx = rs.apply(again, changed_keys(more, again))
    # the common case: a count that some port has already: data-map elements only, which the kernel
    # commits without validating anything, and no rule
    assert all(line.split()[:2] in (["add", "element"], ["delete", "element"]) for line in lines(tx))
    assert not any("draws" in line or "service-ips" in line for line in lines(tx))


def test_a_replaced_endpoint_changes_elements_only():
    """A pod replaced by another at a new address (a rolling update's step): no rule is rewritten."""
    moved = TABLE.replace([WEB.with_endpoints((Endpoint("10.244.1.2"), Endpoint("10.244.7.7")))])
    assert lines(advance(TABLE, moved)[1]) == [
        "delete element ip svcdns hairpin { 10.244.2.2 . 10.244.2.2 }",
        "add element ip svcdns hairpin { 10.244.7.7 . 10.244.7.7 }",
        "delete element ip svcdns endpoints { 10.96.0.10 . tcp . 80 . 2, 10.96.0.10 . udp . 53 . 2 }",
        "add element ip svcdns endpoints { 10.96.0.10 . tcp . 80 . 2 : 10.244.7.7 . 8080, "
        "10.96.0.10 . udp . 53 . 2 : 10.244.7.7 . 53 }",
    ]


def test_no_change_no_ops():
    assert len(advance(TABLE, TABLE)[1]) == 0
    assert len(build(TABLE).apply(TABLE, [WEB.key])[1]) == 0  # looked at, unchanged: nothing sent


def test_apply_returns_a_new_ruleset_and_leaves_the_old_one():
    rs = build(TABLE)
    text = render(rs)
    after, tx = rs.apply(TABLE.replace(deletes=[WEB.key]), [WEB.key])
    assert len(tx) and render(rs) == text and render(after) == render(build(TABLE.replace(deletes=[WEB.key])))


def test_removing_a_service_removes_its_elements_before_its_chain():
    assert lines(advance(TABLE, TABLE.replace(deletes=[EMPTY.key]))[1]) == ["delete element ip svcdns vips { 10.96.0.11 }"]
    sticky = Service("sticky", ports=(ServicePort(80),), cluster_ips=("10.96.0.13",), session_affinity="ClientIP",
                     endpoints=(Endpoint("10.244.1.2"),))  # fmt: skip
    with_sticky = TABLE.replace([sticky])
    chain = chain_name(sticky, "TCP", 80)
    tx = lines(advance(with_sticky, TABLE)[1])
    assert tx.index("delete element ip svcdns service-ips { 10.96.0.13 . tcp . 80 }") < tx.index(f"delete chain ip svcdns {chain}")


def test_a_renamed_service_is_a_delete_and_an_add():
    renamed = Service("web2", ports=WEB.ports, cluster_ips=WEB.cluster_ips, endpoints=WEB.endpoints,
                      session_affinity="ClientIP")  # fmt: skip
    was = TABLE.replace([dataclasses.replace(WEB, session_affinity="ClientIP")])
    tx = lines(advance(was, was.replace([renamed], [WEB.key]))[1])
    added, deleted = f"add chain ip svcdns {chain_name(renamed, 'TCP', 80)}", f"delete chain ip svcdns {chain_name(WEB, 'TCP', 80)}"
    assert tx.index(added) < tx.index(deleted)


def test_full_convergence_rewrites_everything_and_drops_foreign_chains_of_ours():
    tx = lines(plan(build(TABLE), present={"services", "svc-deadbeef-old/gone/tcp/80"}))
    assert tx[0] == "add table ip svcdns"
    assert tx[1:3] == ["add set ip svcdns vips { type ipv4_addr; }", "flush set ip svcdns vips"]
    assert "flush map ip svcdns service-ips" in tx and "flush chain ip svcdns services" in tx
    assert "add chain ip svcdns nat-prerouting { type nat hook prerouting priority -100; policy accept; }" in tx
    assert tx[-2:] == ["flush chain ip svcdns svc-deadbeef-old/gone/tcp/80", "delete chain ip svcdns svc-deadbeef-old/gone/tcp/80"]


def test_every_planned_message_encodes():
    for family in ("IPv4", "IPv6"):
        messages = encode(plan(build(TABLE, family), present=set()))
        assert len(messages) > 20 and all(len(m.body) >= 8 and m.what for m in messages)


def test_the_packed_dnat_rule_reads_back_with_pyroute2():
    """The fast packer and pyroute2's definitions agree: pyroute2 decodes what we send."""
    import struct

    from pyroute2.netlink.nfnetlink.nftsocket import nft_rule_msg

    from svcdns.dataplane.nftables.encode import Encoder

    def decode(rule):
        data = struct.pack("=IHHII", 20 + len(rule.body), 0xA06, 0, 1, 0) + struct.pack("!BBH", 2, 0, 0) + rule.body
        msg = nft_rule_msg(data)
        msg.decode()
        exprs = msg.get_attr("NFTA_RULE_EXPRESSIONS")
        return msg, [e.get_attr("NFTA_EXPR_NAME") for e in exprs], [e.get_attr("NFTA_EXPR_DATA") for e in exprs]

    chain = build(TABLE).chains()["draw-2"]
    msg, names, data = decode(Encoder("ip").op(AddRules(chain))[0])
    assert msg.get_attr("NFTA_RULE_CHAIN") == chain.name
    assert names == ["numgen", "ct"]  # neither makes the kernel walk the table at commit
    assert data[0].get_attr("NFTA_NG_MODULUS") == 2 and data[0].get_attr("NFTA_NG_OFFSET") == 1
    msg, names, data = decode(Encoder("ip").op(AddRules(build(TABLE).chains()["nat-prerouting"]))[1])
    assert names == ["meta", "cmp", "payload", "meta", "payload", "ct", "lookup", "nat"]
    assert data[6].get_attr("NFTA_LOOKUP_SET") == "endpoints"
    nat = data[-1]
    assert nat.get_attr("NFTA_NAT_TYPE") == "NFT_NAT_DNAT" and nat.get_attr("NFTA_NAT_REG_PROTO_MIN") == "NFT_REG32_01"


def test_incremental_apply_equals_a_fresh_build():
    """However the table moved, the advanced ruleset means what a fresh build means."""
    steps = [
        TABLE.replace([WEB.with_endpoints(WEB.endpoints[:1])]),
        TABLE.replace(deletes=[WEB.key]),
        TABLE.replace([Service("new", ports=(ServicePort(80),), cluster_ips=("10.96.0.99",),
                               endpoints=(Endpoint("10.244.1.2"),))]),  # shares an endpoint: hairpin counted twice
        TABLE,
    ]  # fmt: skip
    rs, current = build(TABLE), TABLE
    for step in steps:
        rs, _ = rs.apply(step, changed_keys(current, step))
        current = step
        assert render(rs) == render(build(step))
        assert dict(rs.hairpin) == dict(build(step).hairpin) and dict(rs.vips) == dict(build(step).vips)


def test_shared_hairpin_pairs_leave_only_with_their_last_service():
    other = Service("other", ports=(ServicePort(80),), cluster_ips=("10.96.0.98",), endpoints=(Endpoint("10.244.1.2"),))
    both = TABLE.replace([other])
    _, tx = build(both).apply(both.replace(deletes=[other.key]), [other.key])
    assert not any("hairpin" in line for line in lines(tx))


def test_client_ip_affinity_objects():
    sticky = Service("sticky", ports=(ServicePort(80),), cluster_ips=("10.96.0.97",), session_affinity="ClientIP",
                     affinity_timeout=60, endpoints=(Endpoint("10.244.1.2"), Endpoint("10.244.2.2")))  # fmt: skip
    chain = chain_name(sticky, "TCP", 80)
    aff = "aff-" + chain.split("-")[1]
    table = TABLE.replace([sticky])
    rs, tx = advance(TABLE, table)
    assert lines(tx)[:5] == [
        f"add chain ip svcdns {chain}",
        f"add map ip svcdns {aff} {{ type ipv4_addr : mark; flags timeout; timeout 60s; }}",
        f"add rule ip svcdns {chain} ct mark set numgen random mod 2 offset 1",  # a new client draws
        f"add rule ip svcdns {chain} ct mark set ip saddr map @{aff}",  # a known client takes its remembered number
        f"add rule ip svcdns {chain} update @{aff} {{ ip saddr : ct mark }}",  # and every connection refreshes it
    ]
    text = render(rs)
    assert f"map {aff} {{ type ipv4_addr : mark; flags timeout; timeout 60s; }}" in text
    # an endpoint leaves: the chain is rewritten and its remembered clients forgotten
    fewer = table.replace([sticky.with_endpoints(sticky.endpoints[:1])])
    _, tx = rs.apply(fewer, [sticky.key])
    assert f"flush map ip svcdns {aff}" in lines(tx) and f"flush chain ip svcdns {chain}" in lines(tx)
    # the Service goes: its affinity map goes after its chain
    tx = lines(rs.apply(TABLE, [sticky.key])[1])
    assert tx.index(f"delete chain ip svcdns {chain}") < tx.index(f"delete map ip svcdns {aff}")
    messages = encode(plan(build(table), present=set(), present_sets={"aff-deadbeef"}))
    assert any(m.what == f"add set {aff}" for m in messages) and any(
        m.what == "delete set aff-deadbeef" for m in messages
    )
