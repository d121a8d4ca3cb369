"""Node leases: host B's agent killed, its pods leave host A's VIP and headless name within the
lease's TTL + 1 s; B's agent back, they return.

Two "hosts" (lab node namespaces) joined by a link, etcd on host A. A Service selects one pod on
each host; host A reaches B's pod across the link (a route to B's pod network, and the service
CIDR routed out of the link so that connections to a VIP leave with A's link address, which B's
pod can answer).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from svcdns.testing.etcd import EtcdServer
from svcdns.testing.lab import link, wait_for

PY = [sys.executable, "-m"]
TTL = 3
A_POD, B_POD = "10.244.1.2", "10.244.2.2"
pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/etcd"), reason="needs Debian's etcd-server (tests/run installs it)")


@pytest.fixture
def hosts(make_lab, tmp_path):
    a, b = make_lab(pods=1, tag="la"), make_lab(pods=2, tag="lb")  # B's second pod: 10.244.2.2
    link(a.node, b.node, "10.242.0.1/30", "10.242.0.2/30")
    a.node.run("ip route add 10.244.2.0/24 via 10.242.0.2")
    a.node.run("ip route add 10.96.0.0/12 dev svl0 src 10.242.0.1")
    etcd = EtcdServer(tmp_path / "etcd", host="10.242.0.1", netns=a.node)
    etcd.data_root.mkdir()
    etcd.start()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    url = etcd.url.rsplit("/", 1)[0] + "/leases"
    agents = {}

    def start_agent(lab, node):
        agents[node] = lab.spawn(lab.node, [*PY, "svcdns", "agent", "--registry", url, "--node-name", node,
                                            "--node-lease-ttl", str(TTL), "--dns-listen", "127.0.0.1:53",
                                            "--dns-workers", "1"], env=env, stdout=subprocess.DEVNULL)  # fmt: skip

    a.serve(a.pod_list[0], 8080)
    b.serve(b.pod_list[1], 8080)
    start_agent(a, "a")
    start_agent(b, "b")
    for lab in (a, b):
        wait_for(lambda lab=lab: "ok" in lab.node.run(["curl", "-s", "http://127.0.0.1:10256/readyz"], check=False).stdout,
                 60, what="an agent to be ready")  # fmt: skip

    def svcdns(lab, *args, **kw):
        return lab.node.run([*PY, "svcdns", *args, "--registry", url], env=env, **kw).stdout.strip()

    yield a, b, svcdns, agents, lambda: start_agent(b, "b")
    etcd.stop()


def dig(lab, name):
    out = lab.node.run(["dig", "+short", "+time=1", "+tries=2", "@127.0.0.1", name], check=False).stdout
    return sorted(out.split())


def ask(lab, vip, count):
    return lab.node.run([*PY, "svcdns.testing.podserver", "--client", vip, "80", "--count", str(count), "--timeout", "2"],
                        check=False, env=dict(os.environ, PYTHONPATH=os.getcwd())).stdout.split()  # fmt: skip


def nodes(svcdns, lab):
    """What `svcdns node list` says: name -> (STATUS, PODS)."""
    return {n["name"]: (n["status"], n["pods"]) for n in json.loads(svcdns(lab, "node", "list", "-o", "json"))["items"]}


def status_nodes(lab):
    """The nodes as host A's agent sees them (/status)."""
    return json.loads(lab.node.run(["curl", "-s", "http://127.0.0.1:10256/status"], check=False).stdout or "{}").get("nodes")


MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-h}
spec: {clusterIP: None, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
""" + "".join(f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {node}-0, labels: {{app: web}}}}
spec: {{nodeName: {node}, containers: [{{name: c, image: none}}]}}
status: {{podIPs: [{{ip: {ip}}}]}}
""" for node, ip in (("a", A_POD), ("b", B_POD)))


def test_a_killed_agents_pods_leave_the_other_hosts_vip_and_dns_and_return_with_it(hosts):
    a, b, svcdns, agents, restart_b = hosts
    svcdns(a, "apply", "-f", "-", input=MANIFEST)
    headless = "web-h.default.svc.cluster.local"
    wait_for(lambda: dig(a, headless) == [A_POD, B_POD], 15, what="both pods in host A's headless answer")
    (vip,) = dig(a, "web.default.svc.cluster.local")
    wait_for(lambda: set(ask(a, vip, 20)) == {A_POD, B_POD}, 15, what="host A's VIP to reach both pods")
    assert status_nodes(a) == {"a": "Ready", "b": "Ready"}

    b.stop(agents.pop("b"), signal.SIGKILL)  # kill -9: nothing revokes its lease
    killed = time.monotonic()
    wait_for(lambda: dig(a, headless) == [A_POD], TTL + 5, interval=0.05, what="B's pod to leave A's headless answer")
    took = time.monotonic() - killed
    got = ask(a, vip, 20)
    assert got == [A_POD] * 20, got  # no connection drawn to B's pod, none failed
    assert took <= TTL + 1, f"B's pod left host A's answers {took:.1f} s after its agent was killed"
    assert nodes(svcdns, a) == {"a": ("Ready", 1), "b": ("NotReady", 1)}  # b's pod record is kept
    assert status_nodes(a) == {"a": "Ready", "b": "NotReady"}

    restart_b()
    wait_for(lambda: dig(a, headless) == [A_POD, B_POD], 30, what="B's pod back in A's headless answer")
    wait_for(lambda: set(ask(a, vip, 20)) == {A_POD, B_POD}, 15, what="host A's VIP to reach B's pod again")
    assert nodes(svcdns, a)["b"] == ("Ready", 1)


PROBED = MANIFEST.replace("containers: [{name: c, image: none}]",
                          "containers: [{name: c, image: none, readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}}]")


def pod_rows(svcdns, lab):
    """What `svcdns pod list` says: name -> (STATUS, REASON)."""
    lines = svcdns(lab, "pod", "list").splitlines()
    start = lines[0].index("REASON")
    return {line.split()[1]: (line.split()[2], line[start:].strip()) for line in lines[1:]}


def test_probed_pods_statuses_live_on_their_nodes_lease_and_come_back_with_its_agent(hosts):
    a, b, svcdns, agents, restart_b = hosts
    assert PROBED != MANIFEST
    svcdns(a, "apply", "-f", "-", input=PROBED)
    headless = "web-h.default.svc.cluster.local"
    # each pod's own agent probes it and writes its status under its node: host A follows both
    wait_for(lambda: dig(a, headless) == [A_POD, B_POD], 20, what="both probed pods in host A's headless answer")
    assert pod_rows(svcdns, a) == {"a-0": ("Ready", "-"), "b-0": ("Ready", "-")}

    b.stop(agents.pop("b"), signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: dig(a, headless) == [A_POD], TTL + 5, interval=0.05, what="B's pod to leave A's headless answer")
    assert time.monotonic() - killed <= TTL + 1
    # its status went with its node's lease: not ready, not probed (the record is kept, untouched)
    wait_for(lambda: pod_rows(svcdns, a)["b-0"] == ("NotReady", "not probed yet"), 5, what="b-0's status gone")

    restart_b()  # a new lease: B's prober probes again and writes the status on it
    wait_for(lambda: dig(a, headless) == [A_POD, B_POD], 30, what="B's probed pod back in A's headless answer")
    assert pod_rows(svcdns, a)["b-0"] == ("Ready", "-")
