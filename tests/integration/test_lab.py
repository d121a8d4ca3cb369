"""The lab itself: pods reach each other through the node, and everything is gone afterwards."""

import sys

from svcdns.dataplane import guard
from svcdns.errors import DataplaneError
from svcdns.testing import lab
from svcdns.testing.podserver import ask


def test_pods_reach_each_other_through_the_node(make_lab):
    world = make_lab(pods=2)
    p1, p2 = world.pod_list
    world.serve(p2, port=8080)
    out = p1.ns.run([sys.executable, "-m", "svcdns.testing.podserver", "--client", str(p2.ipv4), "8080"])
    assert out.stdout.strip() == str(p2.ipv4)


def test_lab_deletes_its_namespaces(make_lab):
    world = make_lab(pods=1)
    names = [world.node.name, world.pod_list[0].ns.name]
    assert set(names) <= set(lab.stale_namespaces())
    world.close()
    assert not set(names) & set(lab.stale_namespaces())


def test_guard_refuses_the_host_namespace(monkeypatch):
    monkeypatch.setenv(guard.GUARD_ENV, str(guard.netns_inode()))
    try:
        guard.check_netns_guard("program nftables")
    except DataplaneError as err:
        assert "host network namespace" in str(err)
    else:
        raise AssertionError("the guard let a kernel shell run in the namespace it forbids")


def test_ask_helper_reports_refusal():
    # loopback port 9 on this host: nothing listens, so the helper must raise
    try:
        ask("127.0.0.1", 9, timeout=1)
    except OSError:
        pass
    else:
        raise AssertionError("connect to a closed port did not fail")
