"""Readiness probes of a selector-less Service's explicit endpoints: the document field and its
errors, the overlay of verdicts on the table, the prober probing endpoints (every host, nothing
written to the registry), and the agent laying its verdicts over what it syncs."""

import json
import threading
import time

import pytest

from svcdns.agent import Agent
from svcdns.model import Endpoint, Service, ServicePort, ValidationError
from svcdns.pod import Probe
from svcdns.probe import Prober
from svcdns.probe.endpoints import overlay, targets_of
from svcdns.probe.metrics import ProbeMetrics
from svcdns.probe.result import Result
from svcdns.registry import Snapshot
from svcdns.registry.documents import DocumentError, from_document, to_document
from svcdns.table import ServiceTable, changed_keys
from svcdns.testing.lab import wait_for

from .test_agent_loop import FakeWatch, Recorder, run_until
from .test_probe_prober import FakeRegistry

FAST = Probe("tcpSocket", 5432, period=1, timeout=1, failure_threshold=2)


def db(probe=FAST, endpoints=("10.0.0.1", "10.0.0.2"), name="db"):
    return Service(name, ports=(ServicePort(5432, name="pg"),), cluster_ips=("10.96.0.20",),
                   endpoints=tuple(e if isinstance(e, Endpoint) else Endpoint(e) for e in endpoints),
                   readiness_probe=probe)  # fmt: skip


# ---- the document ---------------------------------------------------------------------------------------


def doc(**fields):
    return {"name": "db", "ports": [{"name": "pg", "port": 5432, "targetPort": 15432}], "endpoints": ["10.0.0.1"], **fields}


def test_a_selector_less_service_document_carries_a_readiness_probe_and_round_trips():
    svc = from_document(doc(readinessProbe={"httpGet": {"port": "pg", "path": "/healthz"}, "periodSeconds": 2}))
    assert svc.readiness_probe == Probe("httpGet", "pg", path="/healthz", period=2)
    assert from_document(to_document(svc)) == svc
    assert "readinessProbe" not in to_document(db(probe=None))


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"selector": {"app": "db"}, "endpoints": []}, "readinessProbe", "its pods carry their own"),
    ({"readinessProbe": {"exec": {"command": ["pg_isready"]}}}, "readinessProbe.exec", "no network namespace"),
    ({"readinessProbe": {"tcpSocket": {"port": "http"}}}, "readinessProbe.tcpSocket.port", "its ports: pg"),
    ({"readinessProbe": {"tcpSocket": {"port": 1}, "container": "x"}}, "readinessProbe.container", "no container"),
    ({"readinessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 0}}, "readinessProbe.periodSeconds", "from 1"),
    ({"readinessProbe": {"tcpSocket": {"port": 1}, "timeoutSeconds": 5, "periodSeconds": 2}},
     "readinessProbe.timeoutSeconds", "must not exceed"),
    ({"readinessProbe": {"udp": {"port": 1}}}, "readinessProbe.udp", "unknown field"),
])  # fmt: skip
def test_a_bad_service_probe_is_refused_naming_the_source_and_the_field(fields, field, words):
    data = doc(**fields)
    if "selector" in fields:
        data["readinessProbe"] = {"tcpSocket": {"port": 5432}}
    with pytest.raises(DocumentError) as err:
        from_document(data, "services/db.yaml")
    assert err.value.field == field and words in str(err.value) and "services/db.yaml" in str(err.value)


def test_an_external_name_service_takes_no_probe():
    with pytest.raises(ValidationError, match="no endpoints to probe"):
        Service("ext", type="ExternalName", external_name="example.org", readiness_probe=FAST)


# ---- what is probed, and the overlay -----------------------------------------------------------------


def test_a_named_probe_port_is_the_service_ports_target_port_an_endpoints_own_included():
    svc = from_document(doc(endpoints=["10.0.0.1", {"address": "10.0.0.2", "ports": {"pg": 6432}}],
                            readinessProbe={"tcpSocket": {"port": "pg"}}))  # fmt: skip
    got = {k: (t.host, t.port) for k, t in targets_of([svc, db(probe=None, name="plain")]).items()}
    assert got == {("default", "db", "10.0.0.1"): ("10.0.0.1", 15432), ("default", "db", "10.0.0.2"): ("10.0.0.2", 6432)}


def test_the_overlay_drops_failing_and_unprobed_endpoints_and_keeps_a_records_not_ready():
    held = Endpoint("10.0.0.3", ready=False)
    source = ServiceTable.of([db(endpoints=("10.0.0.1", "10.0.0.2", held)), db(probe=None, name="plain")])
    table = overlay(source, {("default", "db"): frozenset({"10.0.0.1", "10.0.0.3"})}, source.services)
    got = table.get("default", "db")
    assert [(str(e.address), e.ready, e.serving) for e in got.endpoints] == [
        ("10.0.0.1", True, True), ("10.0.0.2", False, False), ("10.0.0.3", False, False)]  # fmt: skip
    assert got.targets(got.ports[0], "IPv4") == (("10.0.0.1", 5432),)
    assert table.get("default", "plain") is source.get("default", "plain")
    nothing = overlay(source, {}, source.services).get("default", "db")
    assert nothing.usable_endpoints() == ()  # not probed yet: not ready, as a pod before its first success


def test_the_serving_terminating_fallback_is_unchanged_by_the_overlay():
    going = Endpoint("10.0.0.2", ready=False, serving=True, terminating=True)
    source = ServiceTable.of([db(endpoints=("10.0.0.1", going))])
    passing = overlay(source, {("default", "db"): frozenset({"10.0.0.2"})}, source.services).get("default", "db")
    assert [str(e.address) for e in passing.usable_endpoints()] == ["10.0.0.2"]  # the only one serving
    failing = overlay(source, {("default", "db"): frozenset()}, source.services).get("default", "db")
    assert failing.usable_endpoints() == ()


def test_a_verdict_change_rebuilds_only_its_service():
    source = ServiceTable.of([db(), db(name="db2"), db(probe=None, name="plain")])
    everyone = {("default", "db"): frozenset({"10.0.0.1", "10.0.0.2"}), ("default", "db2"): frozenset({"10.0.0.1"})}
    before = overlay(source, everyone, source.services)
    after = overlay(source, {**everyone, ("default", "db"): frozenset({"10.0.0.2"})}, [("default", "db")], onto=before)
    assert changed_keys(before, after) == {("default", "db")}
    assert overlay(source, everyone, [("default", "db2")], onto=before) is before  # nothing changed: the same table


# ---- the prober -------------------------------------------------------------------------------------


def test_the_prober_probes_each_endpoint_and_writes_nothing_to_the_registry():
    up = {"10.0.0.1": True, "10.0.0.2": False}
    seen = []

    async def fake_check(probe, host, port):
        seen.append((host, port))
        return Result(up[host], "" if up[host] else "connection refused")

    registry = FakeRegistry([])
    metrics = ProbeMetrics()
    prober = Prober(registry, "n1", refresh=0.2, run_endpoint_check=fake_check, metrics=metrics)
    prober.offer_services([db(), db(probe=None, name="plain")])
    prober.start()
    try:
        key = ("default", "db")
        wait_for(lambda: prober.endpoint_passing.get(key) == {"10.0.0.1"} and seen.count(("10.0.0.2", 5432)) >= 2, 10,
                 what="10.0.0.1 passes, 10.0.0.2 probed twice and fails")  # fmt: skip
        status = prober.status()["endpoints"]
        assert status == {"ready": 1, "notReady": 1, "failing": {"default/db 10.0.0.2": "connection refused"}}
        up.update({"10.0.0.1": False, "10.0.0.2": True})
        wait_for(lambda: prober.endpoint_passing.get(key) == {"10.0.0.2"}, 10, what="the verdicts swapped")
        assert prober.status()["endpoints"]["failing"] == {"default/db 10.0.0.1": "connection refused"}
        assert metrics.probes.labels("tcpSocket", "failure")._value.get() >= 3
        prober.offer_services([])
        wait_for(lambda: not prober.endpoint_passing and "endpoints" not in prober.status(), 5, what="the Service gone")
        assert registry.writes == [] and registry.statuses == {}
    finally:
        prober.stop()


def test_a_reloaded_prober_resumes_the_endpoint_verdicts():
    async def passing(probe, host, port):
        return Result(True)

    old = Prober(FakeRegistry([]), "n1", run_endpoint_check=passing)
    old.offer_services([db()])
    old.start()
    try:
        wait_for(lambda: old.endpoint_passing.get(("default", "db")) == {"10.0.0.1", "10.0.0.2"}, 10, what="both pass")
    finally:
        old.stop()
    new = Prober(FakeRegistry([]), "n1", run_endpoint_check=passing)
    new.resume_endpoints(old)
    assert new.endpoint_passing == old.endpoint_passing and new.status()["endpoints"]["ready"] == 2


# ---- the agent ------------------------------------------------------------------------------------------


class FakeProbes:
    def __init__(self):
        self.endpoint_passing = {}
        self.offers = []

    def offer_services(self, services):
        self.offers.append(sorted(s.name for s in services))


class TargetsLog(Recorder):
    def sync(self, table, full=False):
        super().sync(table, full)
        self.log.append(("targets", {s.name: [str(e.address) for e in s.usable_endpoints()] for s in table}))


def test_the_agent_syncs_its_own_verdicts_and_offers_the_probed_services():
    log = []
    plain = Service("plain", ports=(ServicePort(80),), cluster_ips=("10.96.0.30",), endpoints=(Endpoint("10.0.0.9"),))
    watch = FakeWatch(ServiceTable.of([db(), plain]))
    agent = Agent(watch, TargetsLog(log), Recorder(log), min_interval=0)
    probes = FakeProbes()
    agent.use_probes(probes)

    def synced(targets):
        return lambda: bool(log) and [e for e in log if e[0] == "targets"][-1][1] == targets

    run_until(agent, synced({"db": [], "plain": ["10.0.0.9"]}))  # not probed yet: not ready
    assert probes.offers == [["db"]]
    probes.endpoint_passing = {("default", "db"): frozenset({"10.0.0.2"})}
    started = time.monotonic()
    run_until(agent, synced({"db": ["10.0.0.2"], "plain": ["10.0.0.9"]}))
    assert time.monotonic() - started < 1.0  # looked at within PROBE_LOOK, not the 0.5 s poll
    assert agent.source.get("default", "db") == db()  # the registry's view is kept apart
    # a registry change to the Service keeps the verdicts laid over it
    agent.take(Snapshot(3, agent.source.replace(puts=[db(endpoints=("10.0.0.2", "10.0.0.3"))])))
    assert [str(e.address) for e in agent.desired.get("default", "db").usable_endpoints()] == ["10.0.0.2"]
    assert probes.offers[-1] == ["db"]
    agent.take(Snapshot(4, agent.source.replace(puts=[db(probe=None)])))  # the probe removed: the record rules
    assert len(agent.desired.get("default", "db").usable_endpoints()) == 2 and probes.offers[-1] == []


def test_without_probed_services_the_agent_syncs_the_registrys_table_itself():
    table = ServiceTable.of([db(probe=None)])
    agent = Agent(FakeWatch(table), Recorder([]), Recorder([]))
    agent.use_probes(FakeProbes())
    stop = threading.Event()
    stop.set()
    agent.run(stop)
    assert agent.desired is table


# ---- the CLI ----------------------------------------------------------------------------------------


def test_service_add_probe_tcp_writes_the_probe_and_refuses_a_selector_or_an_unknown_port(svcdns):
    code, _, _ = svcdns("service", "add", "db", "-p", "pg:5432:15432", "--endpoint", "10.0.0.1", "--probe-tcp", "pg",
                        "--probe-period", "2")  # fmt: skip
    assert code == 0
    code, out, _ = svcdns("service", "get", "db", "-o", "json")
    assert json.loads(out)["readinessProbe"]["tcpSocket"] == {"port": "pg"}
    assert json.loads(out)["readinessProbe"]["periodSeconds"] == 2
    code, out, _ = svcdns("service", "get", "db")
    assert "tcp-socket :pg delay=0s timeout=1s period=2s" in out
    code, _, err = svcdns("service", "add", "db2", "-p", "pg:5432", "--endpoint", "10.0.0.1", "--probe-tcp", "web")
    assert code != 0 and "readinessProbe.tcpSocket.port 'web'" in err and "its ports: pg" in err
    code, _, err = svcdns("service", "add", "db3", "-p", "5432", "--selector", "app=db", "--probe-tcp", "5432")
    assert code != 0 and "--probe-tcp" in err and "its pods carry their own" in err
