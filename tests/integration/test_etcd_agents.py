"""Two hosts, one etcd: two agents in two "node" namespaces share the Services, VIPs and answers.

etcd runs inside node A's namespace on the address of a link between the two nodes, so both agents
(and the CLI, run inside a node) reach it as they would on a real network.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from svcdns.testing.etcd import EtcdServer
from svcdns.testing.lab import link, wait_for

PY = [sys.executable, "-m"]
pytestmark = pytest.mark.skipif(not shutil.which("etcd"), reason="needs Debian's etcd-server (tests/run installs it)")


@pytest.fixture
def hosts(make_lab, tmp_path, request):
    a, b = make_lab(pods=1, tag="ea"), make_lab(pods=1, tag="eb")
    link(a.node, b.node, "10.242.0.1/30", "10.242.0.2/30")
    members = getattr(request, "param", 1)  # a cluster where a test asks for one
    etcd = EtcdServer(tmp_path / "etcd", members=members, host="10.242.0.1", netns=a.node)
    etcd.data_root.mkdir()
    etcd.start()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    url = etcd.url.rsplit("/", 1)[0] + "/two-hosts"
    agents = {}

    def start_agent(lab):
        agents[lab.tag] = lab.spawn(lab.node, [*PY, "svcdns", "agent", "--registry", url, "--dns-listen",
                                               "127.0.0.1:53", "--dns-workers", "1"], env=env, stdout=subprocess.DEVNULL)  # fmt: skip

    def stop_agent(lab):
        lab.stop(agents.pop(lab.tag))  # SIGTERM: the rules stay in the kernel

    for lab in (a, b):
        lab.serve(lab.pod_list[0], 8080)
        start_agent(lab)
    for lab in (a, b):
        wait_for(lambda lab=lab: "ok" in lab.node.run(["curl", "-s", "http://127.0.0.1:10256/readyz"], check=False).stdout,
                 60, what="an agent to be ready")  # fmt: skip
    a.start_agent, b.start_agent = (lambda: start_agent(a)), (lambda: start_agent(b))
    a.stop_agent, b.stop_agent = (lambda: stop_agent(a)), (lambda: stop_agent(b))

    def svcdns(lab, *args):
        return lab.node.run([*PY, "svcdns", *args, "--registry", url], env=env).stdout.strip()

    def dig(lab, name):
        return lab.node.run(["dig", "+short", "+time=1", "+tries=2", "@127.0.0.1", name], check=False).stdout.strip()

    def ask(lab, vip, count=1):
        return lab.node.run([*PY, "svcdns.testing.podserver", "--client", vip, "80", "--count", str(count), "--timeout", "2"],
                            check=False, env=env).stdout.split()  # fmt: skip

    yield a, b, svcdns, dig, ask, etcd
    etcd.stop()


def test_services_created_on_either_side_are_one_view(hosts):
    a, b, svcdns, dig, ask, _ = hosts
    vip_web = svcdns(a, "service", "add", "web", "--port", "http:80:8080/tcp")
    vip_api = svcdns(b, "service", "add", "api", "--port", "http:80:8080/tcp")
    svcdns(a, "endpoint", "add", "web", "10.244.1.2")  # each node's own pod has this address
    svcdns(b, "endpoint", "add", "api", "10.244.1.2")
    for lab in (a, b):
        wait_for(lambda lab=lab: dig(lab, "web.default.svc.cluster.local") == vip_web, 15, what="web in DNS")
        wait_for(lambda lab=lab: dig(lab, "api.default.svc.cluster.local") == vip_api, 15, what="api in DNS")
        wait_for(lambda lab=lab: ask(lab, vip_web) == ["10.244.1.2"], 15, what="the web VIP to route")
        wait_for(lambda lab=lab: ask(lab, vip_api) == ["10.244.1.2"], 15, what="the api VIP to route")
    assert vip_web != vip_api


def test_an_etcd_outage_changes_nothing_and_changes_made_after_it_arrive(hosts):
    a, b, svcdns, dig, ask, etcd = hosts
    vip = svcdns(a, "service", "add", "web", "--port", "http:80:8080/tcp")
    svcdns(a, "endpoint", "add", "web", "10.244.1.2")
    wait_for(lambda: ask(b, vip) == ["10.244.1.2"], 15, what="the VIP on host B")
    failures, answers, stop = [], [], threading.Event()

    def loop():
        while not stop.is_set():
            got = ask(b, vip, 5)
            answers.extend(got)
            failures.extend(x for x in got if x.startswith("error"))

    t = threading.Thread(target=loop)
    t.start()
    etcd.stop()
    wait_for(lambda: "unreachable" in b.node.run(["curl", "-s", "http://127.0.0.1:10256/healthz"], check=False).stdout,
             30, what="host B to report etcd unreachable")  # fmt: skip
    down = time.monotonic()
    while time.monotonic() - down < 30:  # etcd stays down 30 s: rules and answers stay as they were
        assert dig(b, "web.default.svc.cluster.local") == vip
        time.sleep(2)
    etcd.start()
    stop.set()
    t.join(30)
    assert len(answers) > 10 and failures == []
    late = svcdns(a, "service", "add", "late", "--port", "http:80:8080/tcp")
    wait_for(lambda: dig(b, "late.default.svc.cluster.local") == late, 30, what="a Service made after the outage")


@pytest.mark.parametrize("hosts", [3], indirect=True)
def test_a_hung_etcd_member_is_left_and_both_agents_carry_on(hosts):
    """Three etcd members; the one both agents (and the CLI) talk to first hangs, as a frozen host
    does: its connections stay open and nothing answers. The agents keep their rules, move their
    watches to a live member, and a Service made after the hang reaches both hosts' DNS and VIPs."""
    a, b, svcdns, dig, ask, etcd = hosts
    vip = svcdns(a, "service", "add", "web", "--port", "http:80:8080/tcp")
    svcdns(a, "endpoint", "add", "web", "10.244.1.2")
    for lab in (a, b):
        wait_for(lambda lab=lab: ask(lab, vip) == ["10.244.1.2"], 15, what="the VIP on both hosts")
    etcd.pause(0)
    try:
        late = svcdns(b, "service", "add", "late", "--port", "http:80:8080/tcp")  # the CLI moves on too
        svcdns(b, "endpoint", "add", "late", "10.244.1.2")
        for lab in (a, b):
            assert ask(lab, vip) == ["10.244.1.2"]  # the rules stayed in force meanwhile
            wait_for(lambda lab=lab: dig(lab, "late.default.svc.cluster.local") == late, 45,
                     what="a Service made after the hang, in DNS")  # fmt: skip
            wait_for(lambda lab=lab: ask(lab, late) == ["10.244.1.2"], 15, what="its VIP to route")
            health = json.loads(lab.node.run(["curl", "-s", "http://127.0.0.1:10256/healthz"], check=False).stdout)
            assert health["registry"]["up"], health
    finally:
        etcd.pause(0, False)


def health(lab):
    return json.loads(lab.node.run(["curl", "-s", "http://127.0.0.1:10256/healthz"], check=False).stdout or "{}")


def test_an_agent_restarted_during_an_etcd_outage_keeps_the_rules_it_had(hosts):
    """etcd is down and host B's agent restarts (an upgrade, a crash): it cannot read the registry,
    so it must leave the kernel's rules as its last run left them, not converge to an empty table,
    and answer SERVFAIL (not NXDOMAIN) for names it cannot know yet. With etcd back it catches up."""
    a, b, svcdns, dig, ask, etcd = hosts
    vip = svcdns(a, "service", "add", "web", "--port", "http:80:8080/tcp")
    svcdns(a, "endpoint", "add", "web", "10.244.1.2")
    wait_for(lambda: ask(b, vip) == ["10.244.1.2"], 15, what="the VIP on host B")
    etcd.stop()
    b.stop_agent()
    b.start_agent()
    wait_for(lambda: "unreachable" in str(health(b).get("registry", {}).get("problem")), 30,
             what="the new agent to report etcd unreachable")  # fmt: skip
    time.sleep(2)  # time enough to have wiped the rules, had it converged to nothing
    assert ask(b, vip) == ["10.244.1.2"]
    answer = b.node.run(["dig", "+time=1", "+tries=2", "@127.0.0.1", "web.default.svc.cluster.local"], check=False)
    assert "status: SERVFAIL" in answer.stdout
    etcd.start()
    wait_for(lambda: dig(b, "web.default.svc.cluster.local") == vip, 30, what="the name once etcd is back")
    assert ask(b, vip) == ["10.244.1.2"] and health(b)["registry"]["up"]
