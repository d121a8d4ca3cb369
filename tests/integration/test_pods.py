"""Pods and selectors end to end in namespaces: `svcdns pod ...` with labels, an agent, dig and connect."""

import json
import subprocess
import sys
import time

import pytest

from svcdns.testing.lab import wait_for

PY = [sys.executable, "-m"]

HOLD = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=5)
f = s.makefile("rw")
print(f.readline().strip(), flush=True)
while True:
    f.write("ping\\n"); f.flush()
    print(f.readline().strip() or "closed", flush=True)
    time.sleep(0.2)
"""


@pytest.fixture
def node(make_lab, cli):
    lab = make_lab(pods=3)
    for pod in lab.pod_list[:2]:
        lab.serve(pod, 8080, "tcp")
    lab.spawn(lab.node, [*PY, "svcdns", "agent", "--registry", str(cli.registry), "--dns-listen", "10.244.3.1:53",
                         "--dns-workers", "1", "--pod-cidr", "10.244.0.0/16"], env=cli.env, stdout=subprocess.DEVNULL)  # fmt: skip

    def http(path):
        return lab.node.run(["curl", "-s", "--max-time", "2", f"http://127.0.0.1:10256{path}"], check=False).stdout

    wait_for(lambda: http("/readyz").startswith("ok"), 60, what="the agent to be ready")
    client = lab.pod_list[2].ns

    def ask(vip, count=1):
        return set(client.run([*PY, "svcdns.testing.podserver", "--client", vip, "80", "--count", str(count)],
                              check=False, env=cli.env).stdout.split())  # fmt: skip

    def dig(name):
        return client.run(["dig", "+short", "+time=1", "+tries=2", "@10.244.3.1", name], check=False).stdout.strip()

    lab.svcdns, lab.ask, lab.dig, lab.client, lab.env = cli, ask, dig, client, cli.env
    return lab


def test_pods_reach_the_vip_resolve_move_by_label_and_drain_on_rm_grace(node):
    p1, p2, _ = node.pod_list
    ip1, ip2 = str(p1.ipv4), str(p2.ipv4)
    web = node.svcdns("service", "add", "web", "--selector", "app=web", "--port", "http:80:http").strip()
    api = node.svcdns("service", "add", "api", "--selector", "app=api", "--port", "80:8080").strip()
    node.svcdns("pod", "add", "web-0", ip1, "-l", "app=web", "--port", "http:8080/tcp")
    node.svcdns("pod", "add", "web-1", ip2, "-l", "app=web", "--port", "http:8080/tcp")
    wait_for(lambda: node.ask(web, 20) == {ip1, ip2}, 10, what="both pods behind the web VIP")
    assert node.dig("web.default.svc.cluster.local") == web

    # relabelling moves a pod from one Service to the other
    node.svcdns("pod", "label", "web-1", "app=api")
    wait_for(lambda: node.ask(web, 20) == {ip1} and node.ask(api, 5) == {ip2}, 10, what="web-1 to move to api")

    # an open connection to web-0, then web-0 removed with a grace: new connections go to web-1 only
    hold = node.spawn(node.client, [sys.executable, "-c", HOLD, web], stdout=subprocess.PIPE, text=True, env=node.env)
    assert hold.stdout.readline().strip() == ip1
    node.svcdns("pod", "label", "web-1", "app=web")
    wait_for(lambda: node.ask(web, 20) == {ip1, ip2}, 10, what="web-1 back behind web")
    node.svcdns("pod", "rm", "web-0", "--grace", "8")
    t0 = time.monotonic()
    wait_for(lambda: node.ask(web, 20) == {ip2}, 6, what="no new connection to the terminating pod")
    assert time.monotonic() - t0 < 8
    assert hold.stdout.readline().strip() == "ping"  # the open one keeps working
    eps = json.loads(node.svcdns("endpoint", "list", "web", "-o", "json"))["endpoints"]
    assert {(e["address"], e["terminating"]) for e in eps} == {(ip1, True), (ip2, False)}
    # after the grace it leaves: gone from the endpoints and from the registry
    wait_for(lambda: [e["address"] for e in json.loads(node.svcdns("endpoint", "list", "web", "-o", "json"))["endpoints"]]
             == [ip2], 15, what="web-0 to leave after its grace")  # fmt: skip
    assert "web-0" not in node.svcdns("pod", "list")
    assert node.ask(web, 10) == {ip2}
