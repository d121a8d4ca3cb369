"""Pods in the file registry: pods/<ns>/<name>.yaml, endpoints derived in the snapshot, the watch."""

import os
import time
from dataclasses import replace

import pytest

from svcdns.pod import ContainerPort, Pod
from svcdns.registry import open_registry

WEB = "name: web\nselector: {app: web}\nports: [{name: http, port: 80, targetPort: http}]\n"


def pod_file(root, name, text, ns="default"):
    path = root / "pods" / ns / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def pod_text(ip, labels="{app: web}", port=8080, extra=""):
    return f"podIP: {ip}\nlabels: {labels}\nports: [{{containerPort: {port}, name: http}}]\n{extra}"


def endpoints(snap, name="web"):
    svc = snap.table.get("default", name)
    return [(str(e.address), e.target_port(svc.ports[0]), e.pod, e.ready, e.terminating) for e in svc.endpoints]


def test_snapshot_derives_endpoints_from_pod_files(tmp_path):
    (tmp_path / "web.yaml").write_text(WEB)
    pod_file(tmp_path, "web-0", pod_text("10.244.1.5"))
    pod_file(tmp_path, "web-1", pod_text("10.244.2.5", port=9090))
    pod_file(tmp_path, "db-0", pod_text("10.244.3.5", labels="{app: db}"))
    pod_file(tmp_path, "web-0", pod_text("10.244.9.5"), ns="prod")  # another namespace
    snap = open_registry(str(tmp_path)).snapshot()
    assert endpoints(snap) == [("10.244.1.5", 8080, "web-0", True, False), ("10.244.2.5", 9090, "web-1", True, False)]
    assert snap.table.get("default", "web").cluster_ips  # a VIP as any Service
    assert not snap.errors


def test_a_bad_pod_file_is_reported_with_file_field_and_value_and_the_rest_works(tmp_path):
    (tmp_path / "web.yaml").write_text(WEB)
    pod_file(tmp_path, "web-0", pod_text("10.244.1.5"))
    pod_file(tmp_path, "web-1", "podIP: 10.244.1.999\nlabels: {app: web}\n")
    pod_file(tmp_path, "web-2", "name: web-3\npodIP: 10.244.1.7\n")  # names another pod than its path
    reg = open_registry(str(tmp_path))
    snap = reg.snapshot()
    assert [e[2] for e in endpoints(snap)] == ["web-0"]
    assert "podIPs[0]" in snap.errors["pods/default/web-1.yaml"] and "10.244.1.999" in snap.errors["pods/default/web-1.yaml"]
    assert "as the file's path says" in snap.errors["pods/default/web-2.yaml"]
    pod_file(tmp_path, "web-0", "podIP: [\n")  # goes bad: its last good version stays
    snap = reg.snapshot()
    assert [e[2] for e in endpoints(snap)] == ["web-0"] and "pods/default/web-0.yaml" in snap.errors


def test_explicit_endpoints_beside_a_selector_make_the_file_bad(tmp_path):
    (tmp_path / "web.yaml").write_text(WEB + "endpoints: [10.0.0.1]\n")
    snap = open_registry(str(tmp_path)).snapshot()
    assert "selector gets its endpoints from the pods" in snap.errors["web.yaml"]


@pytest.fixture
def watch(tmp_path):
    (tmp_path / "web.yaml").write_text(WEB)
    (tmp_path / "api.yaml").write_text(WEB.replace("web", "api"))
    w = open_registry(str(tmp_path)).watch(retry_interval=0.05, delete_grace=0.05)
    w.root = tmp_path
    yield w
    w.close()


def until(w, check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = w.poll(0.1)
        if snap is not None and check(snap):
            return snap
    raise AssertionError("the condition did not hold within the timeout")


def test_the_watch_follows_pod_files_created_relabelled_and_deleted(watch):
    snap = watch.start()
    assert endpoints(snap) == []
    path = pod_file(watch.root, "web-0", pod_text("10.244.1.5"))
    until(watch, lambda s: [e[2] for e in endpoints(s)] == ["web-0"])
    path.write_text(pod_text("10.244.1.5", labels="{app: api}"))
    snap = until(watch, lambda s: [e[2] for e in endpoints(s, "api")] == ["web-0"])
    assert endpoints(snap) == []
    path.unlink()
    until(watch, lambda s: endpoints(s, "api") == [])


def test_a_half_written_pod_file_is_not_read(watch):
    path = watch.root / "pods" / "default" / "web-0.yaml"
    path.parent.mkdir(parents=True)
    watch.start()
    with open(path, "w") as f:
        f.write("podIP: 10.244")
        f.flush()
        assert watch.poll(0.3) is None and not watch.registry.current().errors
        f.write(".1.5\nlabels: {app: web}\nports: [{containerPort: 8080, name: http}]\n")
    until(watch, lambda s: [e[0] for e in endpoints(s)] == ["10.244.1.5"])


def test_a_terminating_pod_goes_when_its_grace_ends_and_its_file_is_deleted(watch):
    watch.start()
    reg = watch.registry
    reg.put_pod(Pod("web-0", labels=(("app", "web"),), ips=("10.244.1.5",), ports=(ContainerPort(8080, "http"),)))
    until(watch, lambda s: [e[4] for e in endpoints(s)] == [False])
    deadline = time.time() + 0.6
    reg.update_pod("default", "web-0", lambda p: replace(p, deletion_deadline=deadline))
    until(watch, lambda s: [(e[3], e[4]) for e in endpoints(s)] == [(False, True)])
    snap = until(watch, lambda s: endpoints(s) == [])
    assert time.time() >= deadline - 0.01
    assert not os.path.exists(watch.root / "pods" / "default" / "web-0.yaml")
    assert snap.table.get("default", "web") is not None
