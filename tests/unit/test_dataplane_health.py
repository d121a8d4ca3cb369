"""What stops VIPs from working on a node, read from fake /proc/sys and /sys/class/net trees."""

import logging

import pytest

from svcdns.dataplane.health import NodeCheck, problems

FORWARDING_OFF = ("net.ipv4.ip_forward is 0: this node does not forward its pods' packets, so every VIP times out "
                  "from a pod (sysctl -w net.ipv4.ip_forward=1)")


@pytest.fixture
def node(tmp_path):
    """A fake node: ``node.sysctl("net/ipv4/ip_forward", "1")``, ``node.bridge("br0", {"vb1": 0})``."""
    proc, net = tmp_path / "proc-sys", tmp_path / "class-net"
    net.mkdir()

    class Node:
        def sysctl(self, key, value):
            path = proc / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{value}\n")

        def bridge(self, name, ports):
            (net / name / "brif").mkdir(parents=True)
            for port, hairpin in ports.items():
                (net / name / "brif" / port).mkdir()
                (net / name / "brif" / port / "hairpin_mode").write_text(f"{hairpin}\n")

        def link(self, name):
            (net / name).mkdir()

        def problems(self, **kw):
            return problems(str(proc), str(net), **kw)

    n = Node()
    n.sysctl("net/ipv4/ip_forward", 1)
    n.sysctl("net/ipv6/conf/all/forwarding", 1)
    n.link("eth0")
    return n


def test_a_forwarding_node_without_bridges_has_no_problem(node):
    assert node.problems(ipv6=True) == []


def test_forwarding_off_is_reported_per_family(node):
    node.sysctl("net/ipv4/ip_forward", 0)
    node.sysctl("net/ipv6/conf/all/forwarding", 0)
    (v4,) = node.problems()
    assert v4.startswith("net.ipv4.ip_forward is 0") and "every VIP times out" in v4
    assert [p.split(" is ")[0] for p in node.problems(ipv6=True)] == ["net.ipv4.ip_forward",
                                                                      "net.ipv6.conf.all.forwarding"]


def test_bridged_pods_without_br_netfilter_need_it_only_where_nothing_masquerades(node):
    node.bridge("docker0", {})  # a bridge without ports holds no pod
    node.bridge("cni0", {"veth1": 0, "veth2": 0})
    assert node.problems(masquerades_bridges=True) == []  # nftables: masqueraded
    (p,) = node.problems(masquerades_bridges=False)  # iptables: no such rule
    assert p.startswith("br_netfilter is not loaded and pods are on the bridge(s) cni0:"), p
    node.sysctl("net/bridge/bridge-nf-call-iptables", 0)
    assert node.problems(masquerades_bridges=False)[0].startswith("br_netfilter is off")


def test_with_br_netfilter_on_ports_without_hairpin_are_named(node):
    node.sysctl("net/bridge/bridge-nf-call-iptables", 1)
    node.bridge("cni0", {f"veth{i}": int(i == 3) for i in range(1, 9)})
    (p,) = node.problems(masquerades_bridges=False)
    assert p.startswith("bridge cni0: hairpin mode is off on port(s) veth1, veth2, veth4, veth5, veth6 and 2 more:"), p


def test_a_problem_is_logged_once_when_it_appears_and_once_when_it_clears(node, caplog):
    check = NodeCheck(lambda: node.problems())
    caplog.set_level(logging.INFO, logger="svcdns.dataplane.health")
    assert check() == []
    node.sysctl("net/ipv4/ip_forward", 0)
    assert len(check()) == 1 and len(check()) == 1
    node.sysctl("net/ipv4/ip_forward", 1)
    assert check() == [] and check() == []
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"dataplane: VIPs will not work: {FORWARDING_OFF}"),
        ("INFO", "dataplane: no longer a problem: net.ipv4.ip_forward is 0"),
    ]
