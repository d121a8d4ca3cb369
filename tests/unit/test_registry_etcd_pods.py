"""Pods in the etcd registry: <prefix>/pods/<ns>/<name>, in the same watch; CAS writes; the grace."""

import time
from dataclasses import replace

import pytest

from svcdns.model import Service, ServicePort
from svcdns.pod import ContainerPort, Pod
from svcdns.registry import open_registry


def web_pod(name, ip, labels=(("app", "web"),), port=8080):
    return Pod(name, labels=labels, ips=(ip,), ports=(ContainerPort(port, "http"),))


def endpoints(snap, name="web"):
    svc = snap.table.get("default", name)
    return [(str(e.address), e.target_port(svc.ports[0]), e.pod, e.ready, e.terminating) for e in svc.endpoints]


def until(w, check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = w.poll(0.1)
        if snap is not None and check(snap):
            return snap
    raise AssertionError("the condition did not hold within the timeout")


@pytest.fixture
def reg(etcd_url):
    r = open_registry(etcd_url)
    yield r
    r.close()


def test_pods_in_etcd_give_endpoints_through_the_watch(reg, etcd_url):
    port = ServicePort(80, name="http", target_port_name="http")
    reg.create(Service("web", ports=(port,), selector=(("app", "web"),)))
    reg.create(Service("api", ports=(port,), selector=(("app", "api"),)))
    assert reg.put_pod(web_pod("web-0", "10.244.1.5")) is True
    assert reg.put_pod(web_pod("web-0", "10.244.1.5")) is False  # replaced
    w = open_registry(etcd_url).watch()
    try:
        assert endpoints(w.start()) == [("10.244.1.5", 8080, "web-0", True, False)]
        reg.put_pod(web_pod("web-1", "10.244.1.6", port=9090))
        until(w, lambda s: [e[1] for e in endpoints(s)] == [8080, 9090])
        reg.update_pod("default", "web-1", lambda p: replace(p, labels=(("app", "api"),)))  # relabelled: moves
        until(w, lambda s: [e[2] for e in endpoints(s)] == ["web-0"] and [e[2] for e in endpoints(s, "api")] == ["web-1"])
        reg.update_pod("default", "web-0", lambda p: replace(p, deletion_deadline=time.time() + 0.5))
        until(w, lambda s: endpoints(s) == [("10.244.1.5", 8080, "web-0", False, True)])
        until(w, lambda s: endpoints(s) == [])  # its grace ended: gone, and its key deleted
        assert [p.name for p in reg.list_pods()] == ["web-1"]
        reg.delete_pod("default", "web-1")
        until(w, lambda s: endpoints(s, "api") == [])
        with pytest.raises(Exception, match="not found"):
            reg.get_pod("default", "web-1")
    finally:
        w.close()
        w.registry.close()
