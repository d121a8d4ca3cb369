"""The prober against a fake registry and a fake check: it probes only its node's pods and writes a
pod's status only when the verdict changes, never per probe, and never the pod's record."""

import threading

from svcdns.pod import Pod, PodStatus, Probe
from svcdns.probe import Prober
from svcdns.probe.checks import Result
from svcdns.testing.lab import wait_for

FAST = Probe("tcpSocket", 8080, period=1, timeout=1, failure_threshold=2)


class FakeRegistry:
    kind = "etcd"

    def __init__(self, pods, statuses=None):
        self.pods = {p.key: p for p in pods}
        self.statuses = dict(statuses or {})
        self.writes = []  # (name, ready, reason) per status written
        self.pruned = []
        self.lock = threading.Lock()

    def list_pods(self, namespace=None):
        with self.lock:
            return list(self.pods.values())

    def close(self):
        pass

    def pod_statuses(self, namespace=None):
        with self.lock:
            return {k: s for k, s in self.statuses.items() if k in self.pods}

    def set_pod_statuses(self, changes):
        with self.lock:
            written = {k for k, s in changes.items() if self.statuses.get(k) != s}
            for key in sorted(written):
                status = changes[key]
                if status is None:
                    del self.statuses[key]
                else:
                    self.statuses[key] = status
                    self.writes.append((key[1], status.ready, status.reason))
            return written

    def prune_pod_statuses(self, keep):
        with self.lock:
            gone = [k for k in self.statuses if k not in keep]
            for key in gone:
                del self.statuses[key]
            self.pruned.extend(gone)
            return len(gone)

    def update_pod(self, namespace, name, change):
        raise AssertionError("the prober writes statuses, never a pod's record")

    put_pod = update_pod


def test_writes_only_on_a_change_and_only_its_nodes_pods():
    healthy = {"web-0": True, "web-1": False}
    probed = []

    async def fake_check(pod, probe):
        probed.append(pod.name)
        return Result(healthy[pod.name], "" if healthy[pod.name] else "connection refused")

    registry = FakeRegistry([
        Pod("web-0", ips=("10.0.0.1",), node_name="n1", readiness_probes=(FAST,)),
        Pod("web-1", ips=("10.0.0.2",), node_name="n1", readiness_probes=(FAST,)),
        Pod("other", ips=("10.0.0.3",), node_name="n2", readiness_probes=(FAST,)),
        Pod("plain", ips=("10.0.0.4",), node_name="n1"),
    ])  # fmt: skip
    prober = Prober(registry, "n1", refresh=0.2, run_check=fake_check)
    prober.start()
    try:
        refused = ("web-1", False, "connection refused")
        wait_for(lambda: sorted(registry.writes) == [("web-0", True, ""), refused] and probed.count("web-1") >= 3, 10,
                 what="web-0 ready, web-1 probed thrice, still not ready, its reason recorded once")  # fmt: skip
        assert set(probed) == {"web-0", "web-1"}
        healthy["web-0"] = False
        wait_for(lambda: registry.writes[-1:] == [("web-0", False, "connection refused")], 5, what="web-0 not ready")
        healthy["web-0"] = True
        wait_for(lambda: registry.writes[-1:] == [("web-0", True, "")], 5, what="web-0 ready again")
        n = probed.count("web-0")
        wait_for(lambda: probed.count("web-0") >= n + 3, 5, what="three more probes of web-0")
        assert len(registry.writes) == 4, registry.writes
        assert prober.status()["failing"] == {"default/web-1": "connection refused"}
        # someone removed the status: the prober puts its verdict back (reconciles, not only on events)
        with registry.lock:
            del registry.statuses[("default", "web-1")]
        wait_for(lambda: registry.writes[-1:] == [refused], 5, what="web-1's status put back")
        # a pod deleted: its status goes with it
        with registry.lock:
            del registry.pods[("default", "web-0")]
        wait_for(lambda: ("default", "web-0") in registry.pruned, 5, what="web-0's status pruned")
        assert ("default", "web-0") not in registry.statuses
    finally:
        prober.stop()


def test_a_hanging_probe_does_not_hold_the_others_beyond_the_cap():
    import asyncio

    async def slow_check(pod, probe):
        if pod.name == "hang":
            await asyncio.sleep(3600)
        return Result(True)

    pods = [Pod(f"p{i}", ips=(f"10.0.0.{i + 1}",), readiness_probes=(FAST,)) for i in range(5)]
    registry = FakeRegistry([Pod("hang", ips=("10.0.1.1",), readiness_probes=(FAST,)), *pods])
    prober = Prober(registry, "", every_node=True, max_concurrent=2, refresh=0.2, run_check=slow_check)
    prober.start()
    try:
        wait_for(lambda: {n for n, ready, _ in registry.writes if ready} == {p.name for p in pods}, 10,
                 what="every other pod ready with one slot held")  # fmt: skip
    finally:
        prober.stop()


def test_a_pod_with_two_containers_is_ready_when_both_probes_pass_and_says_which_fails():
    from svcdns.probe.metrics import ProbeMetrics

    app = Probe("tcpSocket", 8080, period=1, timeout=1, failure_threshold=1, container="app")
    side = Probe("exec", command=("check",), period=1, timeout=1, failure_threshold=1, container="side")
    side_ok = {"value": False}

    async def fake_check(pod, probe):
        if probe.kind == "exec":
            return Result(side_ok["value"], "" if side_ok["value"] else "exit status 1")
        return Result(True)

    registry = FakeRegistry([Pod("web-0", ips=("10.0.0.1",), readiness_probes=(app, side))])
    metrics = ProbeMetrics()
    prober = Prober(registry, "", every_node=True, refresh=0.2, run_check=fake_check, metrics=metrics)
    prober.start()
    try:
        wait_for(lambda: registry.writes == [("web-0", False, "container side: exit status 1")], 5,
                 what="web-0 not ready, the sidecar named")  # fmt: skip
        side_ok["value"] = True
        wait_for(lambda: registry.writes[-1:] == [("web-0", True, "")], 5, what="web-0 ready once both pass")
        value = metrics.registry.get_sample_value
        assert value("svcdns_probes_total", {"kind": "exec", "result": "failure"}) >= 1
        assert value("svcdns_probes_total", {"kind": "tcpSocket", "result": "success"}) >= 1
        assert value("svcdns_probe_duration_seconds_count", {"kind": "exec"}) >= 2
        # the gauges follow the verdict on the prober's loop, not the registry write: wait for them
        wait_for(lambda: (value("svcdns_probed_pods", {"ready": "true"}), value("svcdns_probed_pods", {"ready": "false"}))
                 == (1, 0), 5, what="the gauges: 1 ready, 0 not ready")  # fmt: skip
    finally:
        prober.stop()


def test_a_restarted_prober_resumes_the_stored_verdicts_and_rewrites_none_that_hold():
    ran = []

    async def passing(pod, probe):
        ran.append(pod.name)
        return Result(True)

    slow = Probe("tcpSocket", 8080, period=1, timeout=1, success_threshold=3)
    registry = FakeRegistry([Pod("web-0", ips=("10.0.0.1",), readiness_probes=(slow,))],
                            {("default", "web-0"): PodStatus(True)})  # fmt: skip
    prober = Prober(registry, "", every_node=True, refresh=0.2, run_check=passing)
    prober.start()
    try:
        wait_for(lambda: ran.count("web-0") >= 2, 5, what="two probes of web-0")
        # ready from the start (resumed): no "not ready" while its 3 successes are counted again
        assert registry.writes == [] and prober.status()["failing"] == {}
    finally:
        prober.stop()


def test_exec_probes_disabled_on_the_node_fail_naming_the_option():
    ran = []

    async def never(pod, probe):
        ran.append(pod.name)
        return Result(True)

    exec_probe = Probe("exec", command=("true",), period=1, timeout=1)
    registry = FakeRegistry([Pod("job", ips=("10.0.0.1",), readiness_probes=(exec_probe,))])
    prober = Prober(registry, "", every_node=True, refresh=0.2, run_check=never, exec_probes=False)
    prober.start()
    try:
        wait_for(lambda: registry.writes, 5, what="job's status written")
        assert registry.writes == [("job", False, "exec probes are disabled on this node (probe_exec = false)")]
        assert ran == []
    finally:
        prober.stop()


def test_probe_exec_is_a_config_key_a_flag_and_a_bad_value_is_named(tmp_path):
    import pytest

    from svcdns.cli import config
    from svcdns.errors import UsageError

    assert config.load(None, {}, env={}).probe_exec is True
    conf = tmp_path / "svcdns.toml"
    conf.write_text("probe_exec = false\n")
    assert config.load(str(conf), {}, env={}).probe_exec is False
    assert config.load(None, {"probe_exec": False}, env={}).probe_exec is False  # --no-probe-exec
    conf.write_text('probe_exec = "no"\n')
    with pytest.raises(UsageError, match="probe_exec = 'no': expected true or false"):
        config.load(str(conf), {}, env={})


def test_the_agents_no_probe_exec_flag_sets_probe_exec_false():
    import argparse

    from svcdns.cli import agent

    parser = argparse.ArgumentParser()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry")
    agent.register(parser.add_subparsers(), common)
    args = parser.parse_args(["agent", "--no-probe-exec", "--registry", "/srv/registry"])
    assert agent.load_config(args).probe_exec is False
    assert agent.load_config(parser.parse_args(["agent", "--registry", "/srv/registry"])).probe_exec is True
