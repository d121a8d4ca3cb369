"""Pod statuses (the prober's verdicts) kept apart from the pod records: the derivation takes them,
the file registry keeps them in one status file beside the VIP allocations, and a node lease writes
its node's again when it is granted anew."""

import asyncio
import json
import logging
import os

from svcdns.endpoints import Derivation
from svcdns.labels import parse_selector
from svcdns.model import Service, ServicePort
from svcdns.pod import Pod, PodStatus, Probe
from svcdns.registry.etcd.keys import Keys, status_of, status_value
from svcdns.registry.etcd.lease import NodeLease
from svcdns.registry.etcd.state import EtcdState
from svcdns.registry.files import FileRegistry
from svcdns.testing.lab import wait_for

TCP = Probe("tcpSocket", 8080)
KEY = ("default", "web-0")


def web_pod(**kw):
    return Pod("web-0", labels=parse_selector("app=web"), ips=("10.244.1.5",), readiness_probes=(TCP,), **kw)


def service(name, selector):
    return Service(name, selector=parse_selector(selector), ports=(ServicePort(80),), ip_families=("IPv4",))


def flags(svc):
    return [(e.pod, e.ready, e.serving) for e in svc.endpoints]


# ---- the derivation ------------------------------------------------------------------------------------------


def test_a_probed_pod_is_ready_when_its_record_and_its_status_both_say_so():
    d = Derivation()
    web, db = service("web", "app=web"), service("db", "app=db")
    d.put_service(web)
    d.put_service(db)
    d.put_pod(web_pod(), 0)
    d.put_pod(Pod("plain", labels=parse_selector("app=web"), ips=("10.244.1.6",)), 0)
    assert flags(d.apply(web)) == [("web-0", False, False), ("plain", True, True)]  # no status yet: not ready
    assert d.set_status("", KEY, PodStatus(True)) == {("default", "web")}  # only the Service selecting it
    assert flags(d.apply(web))[0] == ("web-0", True, True)
    assert d.set_status("", KEY, PodStatus(True)) == set()  # no change: nothing to rebuild
    assert d.set_status("", KEY, PodStatus(False, "HTTP 503")) == {("default", "web")}
    assert d.set_status("", KEY, PodStatus(False, "timeout after 1 s")) == set()  # still not ready
    d.set_status("", KEY, PodStatus(True))
    d.put_pod(web_pod(ready=False), 0)  # held out by its record: whatever its probes say
    assert flags(d.apply(web))[0] == ("web-0", False, False)
    assert d.set_status("", ("default", "nobody"), PodStatus(True)) == set()  # a status without a pod: ignored


def test_with_etcd_only_the_status_of_the_pods_own_node_counts():
    state = EtcdState(Keys("/svcdns"))
    keys = state.keys
    state.begin_full_read(1)
    state.apply_put(keys.service(("default", "web")), json.dumps(
        {"name": "web", "selector": {"app": "web"}, "ports": [{"port": 80}], "clusterIPs": ["10.96.0.5"]}).encode(), 1)
    state.apply_put(keys.vip(__import__("ipaddress").ip_address("10.96.0.5")), b"default/web", 1)
    state.apply_put(keys.pod(KEY), json.dumps({"name": "web-0", "labels": {"app": "web"}, "podIPs": ["10.244.1.5"],
                                               "nodeName": "n1", "readinessProbe": {"tcpSocket": {"port": 8080}}}).encode(), 1)  # fmt: skip
    state.end_full_read()
    state.rebuild(1)

    def serving():
        return [e.serving for e in state.table.get("default", "web").endpoints]

    assert serving() == [False]
    state.apply_put(keys.status("n2", KEY), status_value(PodStatus(True)), 2)  # another node's: ignored
    state.rebuild(2)
    assert serving() == [False]
    state.apply_put(keys.status("n1", KEY), status_value(PodStatus(True)), 3)
    assert state.rebuild(3) and serving() == [True]
    state.apply_delete(keys.status("n1", KEY), 4)  # its lease expired
    assert state.rebuild(4) and serving() == [False]
    assert keys.parse(b"/svcdns/status/n1/default/web-0") == ("status", ("n1", "default", "web-0"))
    assert keys.parse(b"/svcdns/status/n1/default") is None
    assert status_of(b"by hand") is None and status_of(status_value(PodStatus(False, "HTTP 503"))) == PodStatus(False, "HTTP 503")


# ---- the file registry: one status file beside allocations.json ------------------------------------------------


def test_the_status_file_is_written_atomically_only_on_change_and_goes_with_its_pods(tmp_path):
    reg = FileRegistry(tmp_path)
    reg.put_pod(web_pod())
    reg.put_pod(Pod("web-1", ips=("10.244.1.6",), readiness_probes=(TCP,)))
    path = tmp_path / ".svcdns" / "status.json"
    assert reg.set_pod_statuses({KEY: PodStatus(False, "HTTP 503")}) == {KEY}
    assert json.loads(path.read_text()) == {"version": 1, "pods": {"default/web-0": {"ready": False, "reason": "HTTP 503"}}}
    stamp = os.stat(path)
    assert reg.set_pod_statuses({KEY: PodStatus(False, "HTTP 503")}) == set()  # no change: not written
    assert os.stat(path).st_ino == stamp.st_ino and os.stat(path).st_mtime_ns == stamp.st_mtime_ns
    reg.set_pod_statuses({("default", "web-1"): PodStatus(True)})
    assert FileRegistry(tmp_path).pod_statuses() == {KEY: PodStatus(False, "HTTP 503"), ("default", "web-1"): PodStatus(True)}
    assert [p.name for p in os.scandir(path.parent) if p.name.endswith(".tmp")] == []  # temp + rename: no leftover
    reg.delete_pod("default", "web-0")
    assert json.loads(path.read_text())["pods"] == {"default/web-1": {"ready": True}}
    (tmp_path / "pods/default/web-1.yaml").unlink()  # removed by hand: the prober prunes it
    assert reg.prune_pod_statuses(set()) == 1 and json.loads(path.read_text())["pods"] == {}


def test_a_corrupt_status_file_is_a_warning_and_read_as_empty(tmp_path, caplog):
    reg = FileRegistry(tmp_path)
    reg.put_pod(web_pod())
    path = tmp_path / ".svcdns" / "status.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text('{"version": 1, "pods": {"default/web-0": {"ready": "yes"}}}')
    caplog.set_level(logging.WARNING, logger="svcdns.registry.files.status")
    assert FileRegistry(tmp_path).pod_statuses() == {}
    (record,) = [r for r in caplog.records if "status.json" in r.getMessage()]
    assert record.levelno == logging.WARNING and "not ready until probed again" in record.getMessage()
    assert reg.set_pod_statuses({KEY: PodStatus(True)}) == {KEY}  # the next write replaces it
    assert FileRegistry(tmp_path).pod_statuses() == {KEY: PodStatus(True)}


def test_the_file_watch_follows_the_status_file_and_rebuilds_only_the_services_of_its_pod(tmp_path):
    reg = FileRegistry(tmp_path)
    reg.create(service("web", "app=web"))
    reg.create(service("db", "app=db"))
    reg.put_pod(web_pod())
    reg.put_pod(Pod("db-0", labels=parse_selector("app=db"), ips=("10.244.2.5",)))
    watched = FileRegistry(tmp_path)
    watch = watched.watch()
    try:
        snap = watch.start()
        assert [e.serving for e in snap.table.get("default", "web").endpoints] == [False]
        db_before = snap.table.get("default", "db")
        writer = FileRegistry(tmp_path)  # the prober's, as in the agent
        writer.set_pod_statuses({KEY: PodStatus(True)})

        def web_serving():
            new = watch.poll(0.1)
            return new is not None and [e.serving for e in new.table.get("default", "web").endpoints] == [True] and new

        new = wait_for(web_serving, 5, what="web-0 serving once its status says ready")
        assert new.table.get("default", "db") is db_before  # not rebuilt
        writer.set_pod_statuses({KEY: PodStatus(False, "connection refused")})
        wait_for(lambda: (s := watch.poll(0.1)) is not None and not s.table.get("default", "web").endpoints[0].serving,
                 5, what="web-0 not serving once its status says not ready")  # fmt: skip
        assert watched.get_pod(*KEY) == web_pod()  # the record never changed
    finally:
        watch.close()


def test_the_status_file_appearing_with_its_directory_is_followed(tmp_path):
    reg = FileRegistry(tmp_path)
    reg.put_pod(web_pod())
    (tmp_path / "pods").mkdir(exist_ok=True)
    watch = FileRegistry(tmp_path).watch()
    try:
        watch.start()
        assert not (tmp_path / ".svcdns" / "status.json").exists()
        FileRegistry(tmp_path).create(service("web", "app=web"))
        wait_for(lambda: (s := watch.poll(0.1)) is not None and s.table.get("default", "web") is not None, 5, what="web")
        FileRegistry(tmp_path).set_pod_statuses({KEY: PodStatus(True)})
        wait_for(lambda: (s := watch.poll(0.1)) is not None and s.table.get("default", "web").endpoints[0].serving, 5,
                 what="web-0 serving")  # fmt: skip
    finally:
        watch.close()


# ---- etcd: a node lease writes its node's statuses again with a new lease -----------------------------------------


class Etcd:
    def __init__(self):
        self.next_id, self.leases, self.keys, self.txns = 1, set(), {}, []

    async def grant(self, ttl):
        self.leases.add(self.next_id)
        self.next_id += 1
        return self.next_id - 1

    async def keep_alive(self, lease):
        return 15 if lease in self.leases else 0

    async def txn(self, compares, ops):
        self.txns.append([op.key for op in ops])
        for op in ops:
            assert op.lease == 0 or op.lease in self.leases
            self.keys[op.key] = (op.value, op.lease)
        return True


def test_a_new_lease_writes_the_nodes_statuses_again_before_its_liveness_key():
    etcd, keys = Etcd(), Keys("/svcdns")
    lease = NodeLease(etcd, keys, "n1", 15)
    value = status_value(PodStatus(True))
    assert lease.book({KEY: value}) == {KEY}  # before any lease: booked, written with the lease
    asyncio.run(lease.refresh())
    assert etcd.keys[keys.status("n1", KEY)] == (value, 1)
    assert etcd.txns[0] == [keys.status("n1", KEY)] and keys.lease("n1") in etcd.txns[1]
    assert lease.book({KEY: value}) == set()  # written under this lease: nothing to do
    etcd.leases.clear()
    etcd.keys.clear()  # the lease expired in a partition: its keys went with it
    asyncio.run(lease.refresh())
    assert lease.lease_id == 2 and etcd.keys[keys.status("n1", KEY)] == (value, 2)
    assert lease.book({KEY: None}) == {KEY} and lease.booked() == {}
