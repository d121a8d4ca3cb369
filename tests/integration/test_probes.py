"""Readiness probes end to end in namespaces: a pod whose server dies leaves the VIP's draw and the
headless answers within failureThreshold x periodSeconds + timeoutSeconds, and comes back."""

import json
import os
import subprocess
import sys
import time

import pytest

from svcdns.testing.lab import wait_for

PY = [sys.executable, "-m"]
PROBE = {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 3}
BOUND = PROBE["failureThreshold"] * PROBE["periodSeconds"] + PROBE["timeoutSeconds"]


def write_pod(registry, name, ip):
    """A pod file as its writer would put it: whole, renamed into place."""
    doc = {"name": name, "labels": {"app": "web"}, "podIPs": [ip], "nodeName": "n1",
           "ports": [{"containerPort": 8080, "name": "http"}], "readinessProbe": PROBE}  # fmt: skip
    folder = registry / "pods" / "default"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}.tmp").write_text(json.dumps(doc))
    os.rename(folder / f".{name}.tmp", folder / f"{name}.yaml")


@pytest.fixture
def node(make_lab, cli):
    lab = make_lab(pods=3)
    lab.servers = {pod.ns.name: lab.serve(pod, 8080, "tcp") for pod in lab.pod_list[:2]}
    lab.spawn(lab.node, [*PY, "svcdns", "agent", "--registry", str(cli.registry), "--dns-listen", "10.244.3.1:53",
                         "--dns-workers", "1", "--pod-cidr", "10.244.0.0/16", "--node-name", "n1"],
              env=cli.env, stdout=subprocess.DEVNULL)  # fmt: skip
    wait_for(lambda: lab.node.run(["curl", "-s", "--max-time", "2", "http://127.0.0.1:10256/readyz"],
                                  check=False).stdout.startswith("ok"), 60, what="the agent to be ready")  # fmt: skip
    client = lab.pod_list[2].ns

    def ask(vip, count=1):
        return set(client.run([*PY, "svcdns.testing.podserver", "--client", vip, "80", "--count", str(count)],
                              check=False, env=cli.env).stdout.split())  # fmt: skip

    def dig(name):
        out = client.run(["dig", "+short", "+time=1", "+tries=1", "@10.244.3.1", name], check=False).stdout
        return set(out.split())

    lab.svcdns, lab.ask, lab.dig = cli, ask, dig
    return lab


def serve_again(node, pod, headless, everyone, period, who):
    """Start ``pod``'s server again and wait for ``headless`` to answer ``everyone``: within one
    probe period (``successThreshold`` 1) plus the 100 ms the issue allows; returns how long."""
    node.servers[pod.ns.name] = node.serve(pod, 8080, "tcp")
    restarted = time.monotonic()
    wait_for(lambda: node.dig(headless) == everyone, 5, interval=0.02, what=f"{who} back in the headless answers")
    back = time.monotonic() - restarted
    assert back <= period + 0.1 + 0.05, f"{who} came back after {back:.2f} s"
    print(f"back {back:.2f} s after the restart")
    return back


def status_column(node):
    lines = node.svcdns("pod", "list").splitlines()
    header = lines[0].split()
    return {line.split()[1]: line.split()[header.index("STATUS")] for line in lines[1:]}


def test_a_killed_server_leaves_the_vip_and_dns_within_the_bound_and_comes_back(node):
    p1, p2, _ = node.pod_list
    ip1, ip2 = str(p1.ipv4), str(p2.ipv4)
    vip = node.svcdns("service", "add", "web", "--selector", "app=web", "--port", "80:8080").strip()
    node.svcdns("service", "add", "web-h", "--headless", "--selector", "app=web", "--port", "80:8080")
    headless = "web-h.default.svc.cluster.local"
    write_pod(node.svcdns.registry, "web-0", ip1)
    write_pod(node.svcdns.registry, "web-1", ip2)
    wait_for(lambda: node.dig(headless) == {ip1, ip2}, 20, what="both probed pods ready in DNS")
    assert node.ask(vip, 20) == {ip1, ip2}

    node.stop(node.servers[p1.ns.name], 9)
    killed = time.monotonic()
    wait_for(lambda: node.dig(headless) == {ip2}, BOUND + 5, interval=0.02, what="web-0 to leave the headless answers")
    left = time.monotonic() - killed
    assert left <= BOUND + 0.1 + 0.05, f"web-0 left DNS {left:.2f} s after its server died; bound {BOUND} s + 0.1 s"
    assert node.ask(vip, 20) == {ip2}, "the dead pod is still in the VIP's draw"
    status = status_column(node)
    assert status["web-0"] == "NotReady" and status["web-1"] == "Ready", status
    print(f"\nleft {left:.2f} s after the kill (bound {BOUND} s)")

    serve_again(node, p1, headless, {ip1, ip2}, PROBE["periodSeconds"], "web-0")
    assert node.ask(vip, 20) == {ip1, ip2}


def write_exec_pod(registry, name, ip, netns, command):
    doc = {"name": name, "labels": {"app": "tasks"}, "podIPs": [ip], "nodeName": "n1", "netns": netns,
           "readinessProbe": {"exec": {"command": command}, "periodSeconds": 1, "failureThreshold": 1}}  # fmt: skip
    folder = registry / "pods" / "default"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}.tmp").write_text(json.dumps(doc))
    os.rename(folder / f".{name}.tmp", folder / f"{name}.yaml")


def reasons(node):
    lines = node.svcdns("pod", "list").splitlines()
    start = lines[0].index("REASON")
    return {line.split()[1]: line[start:].strip() for line in lines[1:]}


def test_an_exec_probe_runs_in_the_pods_netns_and_its_result_moves_the_vip_and_dns(node, tmp_path):
    p1 = node.pod_list[0]
    ip1 = str(p1.ipv4)
    flag = tmp_path / "ready"
    vip = node.svcdns("service", "add", "tasks", "--selector", "app=tasks", "--port", "80:8080").strip()
    node.svcdns("service", "add", "tasks-h", "--headless", "--selector", "app=tasks", "--port", "80:8080")
    headless = "tasks-h.default.svc.cluster.local"
    # passes only where veth1 exists (pod 1's namespace: the node's side is vp1) and while the flag is there
    command = ["sh", "-c", f"ip link show veth1 >/dev/null && test -f {flag}"]
    write_exec_pod(node.svcdns.registry, "task-0", ip1, f"/run/netns/{p1.ns.name}", command)
    write_exec_pod(node.svcdns.registry, "task-1", str(node.pod_list[1].ipv4), "/run/netns/svcdns-no-such-pod", ["true"])
    wait_for(lambda: reasons(node).get("task-0") == "exit status 1", 15, what="task-0 failing: no flag yet")
    # each pod's first probe comes at its own random point of the period: task-0 failing says nothing of task-1
    missing = "no such network namespace: /run/netns/svcdns-no-such-pod"
    wait_for(lambda: reasons(node).get("task-1") == missing, 5, what="task-1 failing: its netns does not exist")
    assert node.dig(headless) == set() and "refused" in node.ask(vip), "a pod that never passed gets traffic"

    flag.write_text("")
    wait_for(lambda: node.dig(headless) == {ip1}, 5, what="task-0 ready in DNS once its command passes")
    assert node.ask(vip, 10) == {ip1}
    flag.unlink()
    wait_for(lambda: node.dig(headless) == set(), 5, what="task-0 out of DNS once its command fails")
    assert "refused" in node.ask(vip)
    wait_for(lambda: reasons(node).get("task-0") == "exit status 1", 5, what="task-0's reason: exit status 1")
