"""Node leases on a real etcd (on loopback): a lease let go expires and its node's pods stop
serving for every watcher, a lease lost behind the agent's back is taken again, and `svcdns node`."""

import json
import time

import pytest

from svcdns.cli import main
from svcdns.labels import parse_selector
from svcdns.model import Service, ServicePort
from svcdns.pod import Pod
from svcdns.registry import open_registry
from svcdns.testing.lab import wait_for


@pytest.fixture
def etcd_nodes(etcd_url):
    """A registry with a Service selecting the pod of node n1 (and one of node n2), and a watch on it."""
    writer = open_registry(etcd_url)
    writer.create(Service("web", selector=parse_selector("app=web"), ports=(ServicePort(80),)))
    writer.put_pod(Pod("w1", labels=parse_selector("app=web"), ips=("10.244.1.2",), node_name="n1"))
    writer.put_pod(Pod("w2", labels=parse_selector("app=web"), ips=("10.244.2.2",), node_name="n2"))
    watch = open_registry(etcd_url).watch()
    watch.start()
    yield writer, watch
    watch.close()
    watch.registry.close()
    writer.close()


def serving(watch):
    svc = watch.registry.state.table.get("default", "web")
    return sorted(e.pod for e in svc.endpoints if e.serving) if svc else None


def node_cli(capsys, etcd_url, *args):
    code = main(["node", *args, "--registry", etcd_url])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_lease_let_go_expires_and_its_pods_leave_every_watcher(etcd_nodes, etcd_url, capsys):
    writer, watch = etcd_nodes
    lease = writer.hold_node("n1", 2)
    wait_for(lambda: watch.registry.state.current().nodes == {"n1": True}, 5, what="n1's lease in the watch")
    assert serving(watch) == ["w1", "w2"]
    code, out, _ = node_cli(capsys, etcd_url, "list", "-o", "json")
    (item,) = json.loads(out)["items"]
    assert code == 0 and item["name"] == "n1" and item["status"] == "Ready" and item["pods"] == 1
    assert 0 < item["leaseSecondsLeft"] <= 2
    code, _, err = node_cli(capsys, etcd_url, "rm", "n1")
    assert code == 2 and "node n1 is Ready" in err  # an agent holds it: refused
    lease.release()  # as an agent killed: nothing refreshes it, nothing revokes it
    gone = time.monotonic()
    wait_for(lambda: serving(watch) == ["w2"], 5, what="n1's pod to stop serving")
    assert time.monotonic() - gone < 2 + 1
    assert watch.registry.state.current().nodes == {"n1": False}
    assert watch.registry.state.pods[("default", "w1")].pod.ready  # the record is kept as it was
    code, out, _ = node_cli(capsys, etcd_url, "list")
    assert code == 0 and out.split("\n")[1].split() == ["n1", "NotReady", "-", "1"]
    lease = writer.hold_node("n1", 2)  # the agent is back
    wait_for(lambda: serving(watch) == ["w1", "w2"], 5, what="n1's pod to serve again")
    lease.release()
    wait_for(lambda: serving(watch) == ["w2"], 5, what="n1's pod to stop serving again")
    code, out, _ = node_cli(capsys, etcd_url, "rm", "n1")  # n1 is gone for good
    assert code == 0 and "node/n1 deleted" in out
    wait_for(lambda: serving(watch) == ["w1", "w2"], 5, what="the pods of a node no agent runs to be as recorded")
    code, _, err = node_cli(capsys, etcd_url, "rm", "n1")
    assert code == 1 and "node n1 not found" in err


def test_a_lease_lost_behind_the_agents_back_is_taken_again(etcd_nodes):
    writer, watch = etcd_nodes
    lease = writer.hold_node("n2", 3)
    try:
        wait_for(lambda: lease.lease_id and lease.written, 5, what="the lease")
        first = lease.lease_id
        writer.client.run(writer.client._call(lambda c: c.revoke_lease(first)))  # as when etcd loses it
        wait_for(lambda: lease.lease_id not in (0, first) and lease.written, 3, what="a new lease")
        wait_for(lambda: watch.registry.state.live.get("n2") == lease.lease_id, 3, what="the liveness key rewritten")
        wait_for(lambda: serving(watch) == ["w1", "w2"], 3, what="n2's pod to serve (it did not while the key was gone)")
        assert 1 < lease.remaining() <= 3
    finally:
        lease.release()


def test_nodes_exist_only_with_etcd(svcdns):
    code, _, err = svcdns("node", "list")
    assert code == 2 and "nodes exist only with an etcd registry" in err


def test_a_nodes_pod_statuses_live_on_its_lease_and_are_written_again_with_a_new_one(etcd_url):
    from svcdns.pod import PodStatus, Probe

    writer = open_registry(etcd_url)
    writer.create(Service("web", selector=parse_selector("app=web"), ports=(ServicePort(80),)))
    probed = Pod("w1", labels=parse_selector("app=web"), ips=("10.244.1.2",), node_name="n1",
                 readiness_probes=(Probe("tcpSocket", 8080),))  # fmt: skip
    writer.put_pod(probed)
    watch = open_registry(etcd_url).watch()
    watch.start()
    prober = open_registry(etcd_url)  # the prober's client; the lease is held on the agent's
    lease = writer.hold_node("n1", 2)
    prober.write_statuses_on(lease)
    key = ("default", "w1")
    status_key = writer.keys.status("n1", key)
    try:
        wait_for(lambda: lease.written, 5, what="n1's lease")
        assert serving(watch) == []  # probed, no status yet: not ready
        assert prober.set_pod_statuses({key: PodStatus(True)}) == {key}
        assert prober.set_pod_statuses({key: PodStatus(True)}) == set()  # written only on change
        wait_for(lambda: serving(watch) == ["w1"], 5, what="w1 serving once its status says ready")
        kv = writer.client.run(writer.client.get(status_key))
        assert json.loads(kv.value) == {"ready": True}
        assert writer.get_pod(*key) == probed  # the record is untouched
        assert writer.pod_statuses() == {key: PodStatus(True)}
        first = lease.lease_id
        writer.client.run(writer.client._call(lambda c: c.revoke_lease(first)))  # the lease lost: its keys go
        wait_for(lambda: lease.lease_id not in (0, first) and lease.written, 3, what="a new lease")
        assert writer.client.run(writer.client.get(status_key)) is not None  # written again with it
        wait_for(lambda: serving(watch) == ["w1"], 3, what="w1 serving on the new lease")
        assert prober.prune_pod_statuses(set()) == 1  # no longer probed here: deleted
        assert writer.client.run(writer.client.get(status_key)) is None
        wait_for(lambda: serving(watch) == [], 3, what="w1 not serving without a status")
        prober.set_pod_statuses({key: PodStatus(False, "HTTP 503")})
        assert writer.pod_statuses() == {key: PodStatus(False, "HTTP 503")}
        lease.release()  # the agent killed: the statuses expire with its lease
        wait_for(lambda: writer.client.run(writer.client.get(status_key)) is None, 5, what="the status to expire")
    finally:
        lease.release()
        watch.close()
        watch.registry.close()
        prober.close()
        writer.close()
