"""The registry contract, one suite run against both registries: the service files and etcd.

Each registry is reached through a small adapter that writes "raw" entries the way an operator or an
orchestrator would (a file in the directory; a key put in etcd), next to the CLI-side API.
"""

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from svcdns.errors import NotFound, UsageError
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.registry import open_registry


class FilesAdapter:
    def __init__(self, root):
        self.root = root
        self.location = str(root)

    def write_raw(self, ns, name, doc):
        path = self.root / ns / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        tmp.rename(path)

    def source(self, ns, name):
        return f"{ns}/{name}.json"

    def close(self):
        pass


class EtcdAdapter:
    def __init__(self, url):
        self.location = url
        self.reg = open_registry(url)

    def write_raw(self, ns, name, doc):
        value = (doc if isinstance(doc, str) else json.dumps(doc)).encode()
        self.reg.client.run(self.reg.client.put(self.reg.keys.service((ns, name)), value))

    def source(self, ns, name):
        return self.reg.keys.source((ns, name))

    def close(self):
        self.reg.close()


@pytest.fixture(params=["files", "etcd"])
def registry(request, tmp_path):
    if request.param == "files":
        adapter = FilesAdapter(tmp_path)
    else:
        adapter = EtcdAdapter(request.getfixturevalue("etcd_url"))
    opened = []

    def open_():
        reg = open_registry(adapter.location)
        opened.append(reg)
        return reg

    adapter.open = open_
    yield adapter
    for reg in opened:
        if hasattr(reg, "close"):
            reg.close()
    adapter.close()


def web(**kw):
    return Service("web", ports=(ServicePort(80, name="http", target_port=8080),), **kw)


def test_create_get_update_delete(registry):
    reg = registry.open()
    created = reg.create(web())
    assert created.cluster_ips[0] in ipaddress.ip_network("10.96.0.0/12")
    with pytest.raises(UsageError, match="already exists"):
        reg.create(web())
    other = registry.open()  # another process, another host: the same VIP
    assert other.get("default", "web").cluster_ips == created.cluster_ips
    reg.update("default", "web", lambda s: s.with_endpoints((Endpoint("10.0.1.5"),)))
    got = other.get("default", "web")
    assert [str(e.address) for e in got.endpoints] == ["10.0.1.5"] and got.cluster_ips == created.cluster_ips
    reg.delete("default", "web")
    with pytest.raises(NotFound):
        other.get("default", "web")
    with pytest.raises(NotFound):
        reg.delete("default", "web")


def test_requested_vips_never_collide(registry):
    reg = registry.open()
    assert str(reg.create(web(cluster_ips=("10.96.0.50",))).cluster_ips[0]) == "10.96.0.50"
    with pytest.raises(UsageError, match="held by Service default/web"):
        registry.open().create(Service("other", ports=(ServicePort(80),), cluster_ips=("10.96.0.50",)))
    reg.delete("default", "web")  # frees it
    assert (
        str(
            registry.open()
            .create(Service("other", ports=(ServicePort(80),), cluster_ips=("10.96.0.50",)))
            .cluster_ips[0]
        )
        == "10.96.0.50"
    )


def test_a_raw_entry_without_vip_is_given_one_that_every_reader_sees(registry):
    registry.write_raw("default", "hand", {"name": "hand", "ports": [{"port": 81}]})
    first = registry.open().snapshot().table.get("default", "hand")
    assert first is not None and first.cluster_ips
    assert registry.open().snapshot().table.get("default", "hand").cluster_ips == first.cluster_ips


def test_bad_entries_are_reported_and_the_rest_keeps_working(registry):
    registry.open().create(web())
    registry.write_raw("default", "bad", {"name": "bad", "ports": [{"port": 99999}]})
    registry.write_raw("default", "worse", "{not json")
    snap = registry.open().snapshot()
    assert ("default", "web") in snap.services
    assert "value 99999" in snap.errors[registry.source("default", "bad")]
    assert registry.source("default", "worse") in snap.errors


def test_watch_sees_changes_and_keeps_the_last_good_version(registry):
    watcher = registry.open().watch()
    try:
        first = watcher.start()
        writer = registry.open()
        writer.create(web())
        snap = watcher.poll(5)
        assert snap is not None and ("default", "web") in snap.services
        assert snap.revision > first.revision
        good = snap.table.get("default", "web")
        registry.write_raw("default", "web", {"name": "web", "ports": [{"port": 0}]})
        snap = watcher.poll(5)
        assert snap is not None and snap.table.get("default", "web") == good
        assert "value 0" in snap.errors[registry.source("default", "web")]
        writer.delete("default", "web")
        snap = watcher.poll(5)
        while snap is not None and ("default", "web") in snap.services:
            snap = watcher.poll(5)
        assert snap is not None and ("default", "web") not in snap.services
    finally:
        watcher.close()


def test_concurrent_cli_writers_all_land(registry):
    env = dict(os.environ, SVCDNS_REGISTRY=registry.location)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "svcdns"]
    subprocess.run([*cmd, "service", "add", "web", "--port", "80"], env=env, check=True, capture_output=True)
    n = 16  # enough to contend for the lock at once (each CLI process costs ~0.7 s of CPU at start)
    procs = [
        subprocess.Popen(
            [*cmd, "endpoint", "add", "web", f"10.0.{i // 250}.{i % 250 + 1}"], env=env, stderr=subprocess.PIPE
        )
        for i in range(n)
    ]
    failures = [(p.args[-1], p.stderr.read()) for p in procs if p.wait(120) != 0]
    assert not failures
    got = registry.open().get("default", "web")
    assert len(got.endpoints) == n


def test_pod_statuses_are_kept_apart_from_the_records_and_watched_like_pods(registry):
    from svcdns.labels import parse_selector
    from svcdns.pod import Pod, PodStatus, Probe
    from svcdns.testing.lab import wait_for

    reg = registry.open()
    reg.create(Service("web", selector=parse_selector("app=web"), ports=(ServicePort(80),)))
    pod = Pod("web-0", labels=parse_selector("app=web"), ips=("10.244.1.5",), node_name="n1",
              readiness_probes=(Probe("tcpSocket", 8080),))  # fmt: skip
    reg.put_pod(pod)
    writer, lease = registry.open(), None  # the prober's registry: with etcd, on the node's lease
    if writer.kind == "etcd":
        lease = registry.open().hold_node("n1", 5)
        writer.write_statuses_on(lease)
        wait_for(lambda: lease.written, 5, what="n1's lease")
    watcher = registry.open().watch()
    key = pod.key

    def serving():
        snap = watcher.poll(0.1)
        svc = (snap or watcher.registry.current()).table.get("default", "web")  # type: ignore[attr-defined]
        return [e.serving for e in svc.endpoints] if svc else None

    try:
        watcher.start()
        assert serving() == [False] and reg.pod_statuses() == {}  # no status yet: not ready
        assert writer.set_pod_statuses({key: PodStatus(True)}) == {key}
        assert writer.set_pod_statuses({key: PodStatus(True)}) == set()  # only on change
        wait_for(lambda: serving() == [True], 5, what="web-0 serving")
        assert reg.get_pod(*key) == pod and reg.pod_statuses() == {key: PodStatus(True)}
        reg.put_pod(pod)  # applied again: spec only, the status stays
        assert reg.pod_statuses() == {key: PodStatus(True)}
        writer.set_pod_statuses({key: PodStatus(False, "HTTP 503")})
        wait_for(lambda: serving() == [False], 5, what="web-0 not serving")
        assert reg.pod_statuses() == {key: PodStatus(False, "HTTP 503")}
        reg.delete_pod(*key)
        writer.prune_pod_statuses(set())  # what the prober does at its next listing
        assert reg.pod_statuses() == {}
        reg.put_pod(pod)  # back: its old status is gone with it
        assert reg.pod_statuses() == {}
    finally:
        watcher.close()
        if lease is not None:
            lease.release()


def test_a_selector_less_services_readiness_probe_is_kept_and_a_bad_one_named(registry):
    from svcdns.pod import Probe

    probe = Probe("tcpSocket", "http", period=2)
    registry.open().create(web(endpoints=(Endpoint("10.0.1.5"),), readiness_probe=probe))
    assert registry.open().get("default", "web").readiness_probe == probe
    assert registry.open().snapshot().table.get("default", "web").readiness_probe == probe
    registry.write_raw("default", "sel", {"name": "sel", "ports": [{"port": 81}], "selector": {"app": "x"},
                                          "readinessProbe": {"tcpSocket": {"port": 81}}})  # fmt: skip
    error = registry.open().snapshot().errors[registry.source("default", "sel")]
    assert "readinessProbe" in error and "its pods carry their own" in error
