"""The agent loop with fakes: ordering of rules and names, debouncing, failures, health, config."""

import socket
import threading
import time

import pytest

from svcdns.agent import Agent
from svcdns.errors import SvcdnsError
from svcdns.model import Service, ServicePort
from svcdns.notify import Notifier
from svcdns.registry import Snapshot
from svcdns.status import Metrics, State
from svcdns.table import ServiceTable


def svc(name, i=0):
    return Service(name, ports=(ServicePort(80),), cluster_ips=(f"10.96.1.{i + 10}",))


class FakeWatch:
    problem = None

    def __init__(self, *tables):
        self.snaps = [Snapshot(i + 1, t) for i, t in enumerate(tables)]

    def start(self):
        return self.snaps.pop(0)

    def poll(self, timeout):
        if self.snaps:
            return self.snaps.pop(0)
        time.sleep(min(timeout or 0.01, 0.01))
        return None


class Recorder:
    problem = None  # as a DNS server: every worker answers

    def __init__(self, log, fail=0, drift=(), lost=()):
        self.log, self.fail, self.drift, self.gone = log, fail, list(drift), list(lost)

    def lost(self):
        self.log.append(("loss check",))
        return self.gone.pop(0) if self.gone else False

    def drifted(self):
        self.log.append(("drift check",))
        return self.drift.pop(0) if self.drift else False

    def sync(self, table, full=False):
        if self.fail:
            self.fail -= 1
            raise SvcdnsError("kernel says no")
        self.log.append(("rules", tuple(sorted(s.name for s in table)), full))

    def update(self, table):
        self.log.append(("names", tuple(sorted(s.name for s in table))))

    def allow_clients(self, addresses):
        self.pods = addresses  # (not in the log: its order is the rules' and the names')


def run_until(agent, cond, timeout=5.0):
    stop = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    t.join(5)
    assert cond(), "condition not reached"


def test_rules_before_names_and_names_before_rules_go():
    log = []
    a, b = svc("a", 1), svc("bb", 2)
    watch = FakeWatch(ServiceTable.of([a]), ServiceTable.of([a, b]), ServiceTable.of([b]))
    agent = Agent(watch, Recorder(log), Recorder(log), min_interval=0)
    run_until(agent, lambda: agent.applied is not None and [s.name for s in agent.applied] == ["bb"])
    assert log[0] == ("rules", ("a",), True)  # the first sync converges fully
    assert log[1] == ("names", ("a",))
    i = log.index(("rules", ("a", "bb"), False))
    assert log[i + 1] == ("names", ("a", "bb"))  # b's name only after b's rules
    j = log.index(("names", ("bb",)))  # a's name leaves DNS ...
    assert log[j + 1] == ("rules", ("bb",), False)  # ... before a's rules leave the kernel


def test_ready_only_after_the_first_sync_and_failures_retry_with_a_full_sync():
    log = []
    notifier = Notifier(env={})
    sent = []
    notifier.send = lambda *f: sent.append(f) or True
    state = State()
    agent = Agent(FakeWatch(ServiceTable.of([svc("a")])), Recorder(log, fail=2), Recorder(log),
                  state=state, notifier=notifier, retry=(0.01, 0.05))  # fmt: skip
    run_until(agent, lambda: state.ready)
    assert agent.metrics.sync_errors._value.get() == 2
    assert log[0] == ("rules", ("a",), True)
    assert sent[0][0] == "READY=1" and "1 Services" in sent[0][1]
    assert state.healthy()[0]


def test_nothing_is_applied_until_the_registry_has_been_read():
    """The first snapshots stand in for a registry that cannot be read yet (etcd down at start): the
    agent must leave the kernel and DNS alone, and not say it is ready, until a real one comes."""
    log, sent = [], []
    state = State()
    notifier = Notifier(env={})
    notifier.send = lambda *f: sent.append(f) or True
    watch = FakeWatch(ServiceTable(), ServiceTable(), ServiceTable.of([svc("a")]))
    watch.snaps[0] = Snapshot(0, ServiceTable(), synced=False)
    watch.snaps[1] = Snapshot(0, ServiceTable(), synced=False)
    watch.problem = "etcd at 10.0.0.1:2379 is unreachable"
    agent = Agent(watch, Recorder(log), Recorder(log), state=state, notifier=notifier, min_interval=0)
    agent.take(watch.start())
    agent.take(watch.poll(0))
    assert not agent.due(time.monotonic()) and not state.ready  # /readyz: 503
    # systemd hears the agent is up (else a start during an outage times out and loops), and why
    assert sent[0][0] == "READY=1" and "waiting for the registry (etcd at 10.0.0.1:2379" in sent[0][1]
    assert sent[1][0].startswith("STATUS=waiting")
    watch.problem = None
    run_until(agent, lambda: state.ready)
    assert log[:2] == [("rules", ("a",), True), ("names", ("a",))]  # nothing before the real snapshot
    assert [f[0] for f in sent].count("READY=1") == 1 and "1 Services" in sent[-1][0]


def test_lost_tables_are_put_back_at_the_next_check_without_waiting_for_the_drift_period():
    log = []
    dataplane = Recorder(log, lost=[False, True])
    agent = Agent(FakeWatch(ServiceTable.of([svc("a")])), dataplane, Recorder([]), full_sync_period=3600,
                  loss_check_period=0.01)  # fmt: skip
    run_until(agent, lambda: [e for e in log if e[0] == "rules"] == [("rules", ("a",), True)] * 2)
    assert ("drift check",) not in log  # the hour has not passed: only the loss checks ran
    first, second = (i for i, e in enumerate(log) if e[0] == "rules")
    assert log[first + 1 : second].count(("loss check",)) == 2


def test_drift_checks_converge_fully_only_when_the_kernel_changed():
    log = []
    dataplane = Recorder(log, drift=[False, True, False])
    agent = Agent(FakeWatch(ServiceTable.of([svc("a")])), dataplane, Recorder(log), full_sync_period=0.05)
    run_until(agent, lambda: log.count(("drift check",)) >= 3 and len(dataplane.drift) == 0)
    rules = [e for e in log if e[0] in ("rules", "drift check")]
    assert rules[:4] == [("rules", ("a",), True), ("drift check",), ("drift check",), ("rules", ("a",), True)]
    assert [e for e in log if e[0] == "rules"].count(("rules", ("a",), True)) == 2  # the first sync, and the drift


def test_a_burst_is_a_few_syncs():
    """Changes that arrive while a sync runs are gathered until the burst is over: the first sync, and
    one for the rest (not one per ``min_interval``)."""
    log = []
    tables = [ServiceTable.of([svc(f"s{i}", i)]) for i in range(200)]

    class BurstWatch(FakeWatch):
        def poll(self, timeout):  # a snapshot every 2 ms: a burst
            time.sleep(0.002)
            return self.snaps.pop(0) if self.snaps else None

    agent = Agent(BurstWatch(*tables), Recorder(log), Recorder(log), min_interval=0.05, max_gather=10)
    run_until(agent, lambda: agent.applied is tables[-1], timeout=10)
    syncs = [e for e in log if e[0] == "rules"]
    assert len(syncs) <= 3  # 200 changes over ~0.4 s


def test_a_change_while_idle_is_applied_at_once_even_right_after_a_sync():
    """The registry write -> working latency: nothing pending and the last sync done, so no interval
    is waited (with a ``min_interval`` of a minute, the test would time out if one were)."""
    log = []
    first, second = ServiceTable.of([svc("a")]), ServiceTable.of([svc("a"), svc("bb", 1)])

    class QuietWatch(FakeWatch):
        def poll(self, timeout):  # the poll right after a sync finds nothing; the next one the change
            self.polls = getattr(self, "polls", 0) + 1
            return self.snaps.pop(0) if self.polls >= 2 and self.snaps else None

    watch = QuietWatch(first, second)
    agent = Agent(watch, Recorder(log), Recorder(log), min_interval=60, max_gather=60)
    run_until(agent, lambda: agent.applied is second)
    assert [e for e in log if e[0] == "rules"] == [("rules", ("a",), True), ("rules", ("a", "bb"), False)]


def test_what_arrived_during_a_sync_waits_for_the_burst_to_end_or_for_max_gather():
    agent = Agent(FakeWatch(ServiceTable.of([svc("a")])), Recorder([]), Recorder([]), min_interval=0.05, max_gather=1)
    agent.take(agent.watch.start())
    assert agent.sync()
    assert not agent.drained  # the next poll is the one that tells what came in during the sync
    agent.take(Snapshot(2, ServiceTable.of([svc("a"), svc("bb", 1)])))
    now = time.monotonic()
    assert agent.burst and not agent.due(now) and agent.due(now + 0.06)
    agent.last_change = now + 0.88  # changes kept coming: the burst goes on, but not past max_gather
    assert not agent.due(now + 0.9) and agent.due(now + 1.01)


def test_unhealthy_while_a_change_waits_too_long():
    st = State(ready=True, health_timeout=1)
    assert st.healthy()[0]
    st.pending_since = time.time() - 5
    ok, why = st.healthy()
    assert not ok and "waited" in why


def test_metrics_are_prometheus_text():
    from svcdns.dns import stats

    counts = stats.Counts()
    for _ in range(3):  # three A queries over UDP answered NOERROR in 0.5 ms each
        counts.count(stats.index(stats.key(True, stats.TYPES.index("A")), 0), 0.0005)
    m = Metrics(dns_stats=counts.snapshot)
    m.services.set(7)
    text = m.render().decode()
    assert "svcdns_services 7.0" in text
    assert 'svcdns_dns_requests_total{proto="udp",type="A"} 3.0' in text
    assert 'svcdns_dns_responses_total{rcode="NOERROR"} 3.0' in text
    assert 'svcdns_dns_request_duration_seconds_bucket{le="0.0005",type="A"} 3.0' in text
    assert 'svcdns_dns_request_duration_seconds_bucket{le="+Inf",type="A"} 3.0' in text
    assert 'svcdns_build_info{python="' in text


def test_notify_over_a_real_socket(tmp_path):
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"})
    assert n.ready("3 Services") and n.watchdog()
    assert server.recv(100) == b"READY=1\nSTATUS=3 Services"
    assert server.recv(100) == b"WATCHDOG=1"
    assert n.watchdog_interval == 10.0
    assert not Notifier(env={}).ready()  # outside systemd: nothing, no error
    server.close()


class Failing(Recorder):
    """A dataplane (or DNS) whose calls raise ``errors`` in turn, then work."""

    def __init__(self, log, errors):
        super().__init__(log)
        self.errors = list(errors)

    def sync(self, table, full=False):
        if self.errors:
            raise self.errors.pop(0)
        return super().sync(table, full)

    def update(self, table):
        if self.errors:
            raise self.errors.pop(0)
        return super().update(table)


class NetlinkError(OSError):
    """What pyroute2 raises: not a SvcdnsError."""


@pytest.mark.parametrize("where", ["dataplane", "dns"])
def test_every_failure_of_a_sync_is_counted_and_retried_as_a_full_sync(where):
    """Defect 2 of the layout issue: exceptions that were not SvcdnsError (the netns guard's
    RuntimeError, pyroute2's NetlinkError, a dead DNS worker's BrokenPipeError) ended the loop."""
    log = []
    errors = [RuntimeError("guard"), NetlinkError(1, "Operation not permitted"), BrokenPipeError(32, "Broken pipe")]
    dataplane = Failing(log, errors if where == "dataplane" else [])
    dns = Failing(log, errors if where == "dns" else [])
    agent = Agent(FakeWatch(ServiceTable.of([svc("a")])), dataplane, dns, retry=(0.01, 0.02))
    run_until(agent, lambda: agent.syncs >= 1)
    assert agent.metrics.sync_errors._value.get() == 3
    assert ("rules", ("a",), True) in log  # the retry after the failures was a full sync
    assert agent.state.ready and not agent.state.last_error


def test_healthz_says_503_while_a_dns_worker_is_missing():
    """Issue 12: after kill -9 of a DNS worker, /healthz said 200 while DNS was dead."""
    st = State(ready=True)
    st.dns_problem = "1 of 2 DNS workers answering"
    ok, why = st.healthy()
    assert not ok and "1 of 2 DNS workers answering" in why
    m = Metrics(dns_stats=lambda: {"worker_restarts": 2})
    assert "svcdns_dns_worker_restarts_total 2.0" in m.render().decode()


def test_pending_changes_count_what_the_kernel_does_not_have_yet_and_the_loop_beats():
    log = []
    agent = Agent(FakeWatch(ServiceTable.of([svc("a", 1), svc("b", 2)])), Recorder(log, fail=1), Recorder(log),
                  retry=(0.2, 0.2))  # fmt: skip
    assert agent.pending_changes() == 0  # nothing read yet: nothing known to be pending
    agent.take(agent.watch.start())
    agent.watch_started = True
    assert agent.pending_changes() == 2
    assert not agent.sync() and agent.pending_changes() == 2  # a refused sync leaves them pending
    before = agent.state.loop_turned
    run_until(agent, lambda: agent.syncs >= 1)
    assert agent.pending_changes() == 0 and agent.state.loop_turned > before
    assert agent.state.alive()[0]


def test_the_pods_addresses_reach_dns_even_when_only_pods_changed_and_a_failure_is_retried():
    log = []
    table = ServiceTable.of([svc("a", 1)])
    watch = FakeWatch(table)
    watch.snaps += [Snapshot(2, table, pod_ips=frozenset({"10.244.0.2"})),
                    Snapshot(3, table, pod_ips=frozenset({"10.244.0.2", "10.244.0.3"}))]  # fmt: skip
    dns = Recorder(log)
    calls = []

    def allow_clients(addresses):
        calls.append(addresses)
        if len(calls) == 2:
            raise SvcdnsError("a worker is being replaced")
        dns.pods = addresses

    dns.allow_clients = allow_clients
    agent = Agent(watch, Recorder(log), dns, min_interval=0)
    run_until(agent, lambda: getattr(dns, "pods", None) == {"10.244.0.2", "10.244.0.3"})
    assert log.count(("names", ("a",))) == 1  # the table did not change: no sync for the pods


def test_the_collector_paused_for_the_start_is_back_after_the_first_sync_with_the_tables_frozen():
    """cmd_agent pauses the cyclic collector while the first table is built; the first full sync
    enables it again, with everything built until then frozen out of its generations."""
    import gc

    log = []
    watch = FakeWatch(ServiceTable.of([svc("web")]))
    agent = Agent(watch, Recorder(log), Recorder(log), min_interval=0)
    gc.disable()
    try:
        frozen = gc.get_freeze_count()
        agent.take(watch.start())
        assert agent.sync()
        assert gc.isenabled() and gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
        gc.enable()
