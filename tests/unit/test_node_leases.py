"""Node leases without etcd: the key schema, the state machine (a dead node's pods are not ready),
the derivation with dead nodes as a table, and the lease refresher on a fake clock."""

import asyncio
import ipaddress
import json
import logging

import pytest

from svcdns.endpoints import Derivation, derive
from svcdns.errors import RegistryUnavailable
from svcdns.labels import parse_selector
from svcdns.model import Service, ServicePort
from svcdns.pod import Pod
from svcdns.registry.etcd.keys import Keys, lease_of, node_record
from svcdns.registry.etcd.lease import NodeLease
from svcdns.registry.etcd.nodes import node_statuses
from svcdns.registry.etcd.state import EtcdState

KEYS = Keys("/svcdns")


def test_the_node_keys():
    assert KEYS.node("b") == b"/svcdns/nodes/b" and KEYS.lease("b") == b"/svcdns/leases/b"
    assert KEYS.parse(b"/svcdns/nodes/b") == ("node", "b")
    assert KEYS.parse(b"/svcdns/leases/b") == ("lease", "b")
    for meaningless in (b"/svcdns/nodes/", b"/svcdns/leases/b/extra", b"/svcdns/nodes"):
        assert KEYS.parse(meaningless) is None
    assert json.loads(node_record("b", 15)) == {"name": "b", "leaseTTL": 15}
    assert lease_of(b"7587869") == 7587869 and lease_of(b"by hand") == 0 and lease_of(b"-3") == 0


# ---- the derivation: pods + the nodes that are down -> endpoints ---------------------------------------------


def pod(name, ip, node="", **kw):
    return Pod(name, labels=parse_selector("app=web"), ips=(ip,), node_name=node, **kw)


def flags(eps):
    return [f"{e.pod} {''.join(c for c, on in (('R', e.ready), ('S', e.serving), ('T', e.terminating)) if on) or '-'}"
            for e in eps]  # fmt: skip


WEB = Service("web", selector=parse_selector("app=web"), ports=(ServicePort(80),), ip_families=("IPv4",))


@pytest.mark.parametrize(
    "case, pods, down, svc, expected",
    [
        ("its node is up", [pod("a", "10.244.1.2", "n1")], set(), WEB, ["a RS"]),
        ("its node is down", [pod("a", "10.244.1.2", "n1")], {"n1"}, WEB, ["a -"]),
        ("another node is down", [pod("a", "10.244.1.2", "n1")], {"n2"}, WEB, ["a RS"]),
        ("no node named", [pod("a", "10.244.1.2")], {"n1"}, WEB, ["a RS"]),
        ("down and terminating", [pod("a", "10.244.1.2", "n1", terminating=True)], {"n1"}, WEB, ["a T"]),
        ("down, not ready anyway", [pod("a", "10.244.1.2", "n1", ready=False)], {"n1"}, WEB, ["a -"]),
        ("down, publishNotReadyAddresses", [pod("a", "10.244.1.2", "n1")], {"n1"},
         Service("web", selector=parse_selector("app=web"), ports=(ServicePort(80),), ip_families=("IPv4",),
                 publish_not_ready_addresses=True), ["a R"]),
        ("one node of two down", [pod("a", "10.244.1.2", "n1"), pod("b", "10.244.2.2", "n2")], {"n2"}, WEB,
         ["a RS", "b -"]),
    ],
)  # fmt: skip
def test_derivation_with_nodes_down(case, pods, down, svc, expected):
    assert flags(derive(svc, pods, down)) == expected, case


def test_a_node_going_down_touches_only_the_services_selecting_its_pods():
    d = Derivation()
    for name, sel in (("web", "app=web"), ("db", "app=db"), ("all", "tier=x")):
        d.put_service(Service(name, selector=parse_selector(sel), ports=(ServicePort(80),)))
    d.put_pod(Pod("w", labels=parse_selector("app=web"), ips=("10.244.1.2",), node_name="b"), 0)
    d.put_pod(Pod("x", labels=parse_selector("app=db"), ips=("10.244.1.3",), node_name="a"), 0)
    assert d.set_down({"b"}) == {("default", "web")}
    assert d.set_down({"b"}) == set()  # no change: nothing to derive again
    assert d.set_down({"a"}) == {("default", "web"), ("default", "db")}  # b back, a down
    assert d.set_down({"c"}) == {("default", "db")}  # a node without pods costs nothing
    assert d.pods_on("b") == 1 and d.pods_on("c") == 0


# ---- the state machine: keys in, a table out -----------------------------------------------------------------

SVC = json.dumps({"name": "web", "clusterIP": "10.96.0.5", "selector": {"app": "web"}, "ports": [{"port": 80}]})


def pod_doc(name, ip, node):
    return json.dumps({"name": name, "labels": {"app": "web"}, "podIPs": [ip], "nodeName": node}).encode()


BASE = [
    (KEYS.service(("default", "web")), SVC.encode()),
    (KEYS.vip(ipaddress.ip_address("10.96.0.5")), b"default/web"),
    (KEYS.pod(("default", "a-0")), pod_doc("a-0", "10.244.1.2", "a")),
    (KEYS.pod(("default", "b-0")), pod_doc("b-0", "10.244.2.2", "b")),
    (KEYS.pod(("default", "x-0")), pod_doc("x-0", "10.244.3.2", "x")),  # node x: no agent
]


def full_read(state, puts, revision):
    state.begin_full_read(revision)
    for key, value in sorted(puts):  # a range read brings them in key order
        state.apply_put(key, value, revision)
    state.end_full_read()
    state.rebuild()
    return state


def loaded(*extra):
    return full_read(EtcdState(KEYS), [*BASE, *extra], 10)


def serving(state):
    return sorted(e.pod for e in state.table.get("default", "web").endpoints if e.serving)


NODES_UP = [(KEYS.node(n), node_record(n, 15)) for n in "ab"] + [(KEYS.lease(n), b"100" + n.encode().hex().encode())
                                                                 for n in "ab"]  # fmt: skip


def test_a_node_whose_lease_key_goes_has_its_pods_not_ready_until_it_is_back():
    state = loaded(*NODES_UP)
    assert serving(state) == ["a-0", "b-0", "x-0"]
    assert state.current().nodes == {"a": True, "b": True}
    state.apply_delete(KEYS.lease("b"), 20)  # etcd: b's lease expired
    assert state.rebuild() and serving(state) == ["a-0", "x-0"]
    assert state.rebuilt == {("default", "web")}
    assert state.current().nodes == {"a": True, "b": False}
    eps = {e.pod: e for e in state.table.get("default", "web").endpoints}
    assert not eps["b-0"].ready and not eps["b-0"].serving and state.pods[("default", "b-0")].pod.ready  # record kept
    state.apply_put(KEYS.lease("b"), b"200", 21)  # b's agent is back, on a new lease
    assert state.rebuild() and serving(state) == ["a-0", "b-0", "x-0"]


def test_a_lease_key_alone_changes_nothing_and_a_removed_node_record_frees_its_pods():
    state = loaded((KEYS.lease("x"), b"5"))  # x has a lease key but no record: never down
    assert serving(state) == ["a-0", "b-0", "x-0"]
    state.apply_delete(KEYS.lease("x"), 30)
    assert not state.rebuild() and serving(state) == ["a-0", "b-0", "x-0"]
    state = loaded((KEYS.node("b"), node_record("b", 15)))  # b's record, no lease: down from the first read
    assert serving(state) == ["a-0", "x-0"]
    state.apply_delete(KEYS.node("b"), 31)  # `svcdns node rm b`
    assert state.rebuild() and serving(state) == ["a-0", "b-0", "x-0"]


def test_a_full_read_after_an_outage_takes_the_leases_that_went_meanwhile():
    state = loaded(*NODES_UP)
    full_read(state, [*BASE, *(kv for kv in NODES_UP if kv[0] != KEYS.lease("a"))], 50)
    assert state.current().nodes == {"a": False, "b": True} and state.down_nodes() == {"a"}
    assert serving(state) == ["b-0", "x-0"]
    full_read(state, [*BASE, *NODES_UP], 60)
    assert serving(state) == ["a-0", "b-0", "x-0"]


def test_node_list_rows():
    pods = [Pod("p1", ips=("10.244.1.2",), node_name="a"), Pod("p2", ips=("10.244.1.3",), node_name="a"),
            Pod("p3", ips=("10.244.1.4",), node_name="b")]  # fmt: skip
    rows = node_statuses({"a", "b"}, {"a": 7, "c": 9}, {7: 12, 9: 0}, pods)
    assert [(n.name, n.ready, n.lease_left, n.pods) for n in rows] == [
        ("a", True, 12, 2), ("b", False, None, 1), ("c", False, 0, 0)]  # fmt: skip


# ---- the refresher on a fake clock ---------------------------------------------------------------------------


class FakeEtcd:
    """Leases and keys with expiry by a fake clock; ``down`` makes every call fail."""

    def __init__(self, clock):
        self.clock, self.down, self.next_id = clock, False, 1
        self.leases: dict[int, tuple[float, int]] = {}  # id -> expiry, TTL
        self.keys: dict[bytes, tuple[bytes, int]] = {}
        self.calls: list[tuple[float, str]] = []

    def _check(self, what):
        self.calls.append((self.clock.now, what))
        if self.down:
            raise RegistryUnavailable("etcd at 127.0.0.1:2379 unreachable")
        for lease, (end, _) in list(self.leases.items()):
            if end <= self.clock.now:
                del self.leases[lease]
                self.keys = {k: v for k, v in self.keys.items() if v[1] != lease}

    async def grant(self, ttl):
        self._check("grant")
        lease, self.next_id = self.next_id, self.next_id + 1
        self.leases[lease] = (self.clock.now + ttl, ttl)
        return lease

    async def keep_alive(self, lease):
        self._check("keep_alive")
        if lease not in self.leases:
            return 0
        ttl = self.leases[lease][1]
        self.leases[lease] = (self.clock.now + ttl, ttl)
        return ttl

    async def txn(self, compares, ops):
        self._check("txn")
        assert compares == []
        for op in ops:
            assert op.lease == 0 or op.lease in self.leases
            self.keys[op.key] = (op.value, op.lease)
        return True


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def run_for(lease, clock, seconds, etcd=None, at=None):
    """Run the refresher for ``seconds`` of fake time; ``at``: {time offset: fn(etcd)} applied on the way."""
    start, events = clock.now, dict(at or {})

    async def sleep(delay):
        target = clock.now + delay
        for offset in sorted(events):
            if clock.now < start + offset <= target:
                clock.now = start + offset
                events.pop(offset)(etcd)
        clock.now = target
        if clock.now - start >= seconds:
            raise asyncio.CancelledError

    lease._sleep = sleep
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(lease.run())


def test_the_lease_is_refreshed_every_third_of_its_ttl_and_its_keys_written_once():
    clock = Clock()
    etcd = FakeEtcd(clock)
    lease = NodeLease(etcd, KEYS, "b", 15, clock=clock)
    run_for(lease, clock, 30)
    assert [(t - 1000, what) for t, what in etcd.calls] == [
        (0, "grant"), (0, "txn"), (5, "keep_alive"), (10, "keep_alive"), (15, "keep_alive"), (20, "keep_alive"),
        (25, "keep_alive")]  # fmt: skip
    assert etcd.keys == {KEYS.node("b"): (node_record("b", 15), 0), KEYS.lease("b"): (b"1", 1)}
    assert lease.remaining() == 10  # refreshed at 25 with 15 s: 10 s left at 30


def test_a_lost_lease_is_granted_again_and_its_keys_rewritten():
    clock = Clock()
    etcd = FakeEtcd(clock)
    lease = NodeLease(etcd, KEYS, "b", 15, clock=clock)

    def wipe(e):  # etcd wiped (or the lease expired in a partition): no lease, no keys
        e.leases.clear()
        e.keys.clear()

    run_for(lease, clock, 12, etcd, at={7: wipe})
    assert [(t - 1000, what) for t, what in etcd.calls] == [
        (0, "grant"), (0, "txn"), (5, "keep_alive"), (10, "keep_alive"), (10, "grant"), (10, "txn")]  # fmt: skip
    assert lease.lease_id == 2 and etcd.keys[KEYS.lease("b")] == (b"2", 2) and KEYS.node("b") in etcd.keys


def test_an_outage_retries_every_second_and_a_lease_that_expired_meanwhile_is_replaced():
    clock = Clock()
    etcd = FakeEtcd(clock)
    lease = NodeLease(etcd, KEYS, "b", 6, clock=clock)

    def cut(e):
        e.down = True

    def heal(e):
        e.down = False

    run_for(lease, clock, 14, etcd, at={3: cut, 11.5: heal})
    times = [(round(t - 1000, 1), what) for t, what in etcd.calls]
    # refreshes at 2, then every second from 4 while down (the lease, last refreshed at 2, expires
    # at 8), then at 12: gone, so granted again and the keys written
    assert times[:3] == [(0, "grant"), (0, "txn"), (2, "keep_alive")]
    assert [t for t, w in times[3:] if w == "keep_alive"] == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert times[-2:] == [(12, "grant"), (12, "txn")] and lease.problem is None
    assert etcd.keys[KEYS.lease("b")] == (b"2", 2)


# ---- what the agent shows: /status and /metrics ----------------------------------------------------------------


def test_the_agent_shows_the_nodes_in_status_and_metrics():
    import urllib.request

    from svcdns.agent import Agent
    from svcdns.registry import Snapshot
    from svcdns.status import Metrics, StatusServer
    from svcdns.table import ServiceTable

    metrics = Metrics()
    agent = Agent(None, None, None, metrics=metrics)  # take() touches neither watch, kernel nor DNS
    agent.take(Snapshot(3, ServiceTable(), nodes={"a": True, "b": False, "c": True}))
    metrics.node_lease.set_function(lambda: 12.5)
    text = metrics.render().decode()
    assert 'svcdns_nodes{state="ready"} 2.0' in text and 'svcdns_nodes{state="not_ready"} 1.0' in text
    assert "svcdns_node_lease_remaining_seconds 12.5" in text
    server = StatusServer(("127.0.0.1", 0), agent.state, metrics)
    server.start()
    try:
        port = server.httpd.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
            assert json.load(resp)["nodes"] == {"a": "Ready", "b": "NotReady", "c": "Ready"}
    finally:
        server.stop()


def test_keys_removed_behind_a_live_lease_are_written_again_and_a_rival_is_reported_not_fought(caplog):
    caplog.set_level(logging.WARNING, logger="svcdns.registry.etcd.lease")
    clock = Clock()
    etcd = FakeEtcd(clock)

    def seen():  # what the watch would show: the fake's keys
        record, lease_key = etcd.keys.get(KEYS.node("b")), etcd.keys.get(KEYS.lease("b"))
        return record is not None, int(lease_key[0]) if lease_key else 0

    lease = NodeLease(etcd, KEYS, "b", 15, clock=clock, seen=seen)

    def delete_by_hand(e):
        del e.keys[KEYS.lease("b")]

    def rival(e):  # another agent with node name b wrote its own lease into the key
        e.leases[99] = (clock.now + 15, 15)
        e.keys[KEYS.lease("b")] = (b"99", 99)

    run_for(lease, clock, 22, etcd, at={7: delete_by_hand, 12: rival})
    writes = [t - 1000 for t, what in etcd.calls if what == "txn"]
    assert writes == [0, 10]  # written again at the refresh after the deletion; not against the rival
    assert etcd.keys[KEYS.lease("b")] == (b"99", 99)
    assert "another agent runs with node name b" in caplog.text
