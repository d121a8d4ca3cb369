"""A selector-less Service's readinessProbe end to end in namespaces: the agent probes each explicit
endpoint itself; a killed server leaves the VIP's draw and the headless answers within
failureThreshold x periodSeconds + timeoutSeconds, and comes back; nothing goes to the registry."""

import json
import os
import time

from svcdns.testing.lab import wait_for

from .test_probes import PY, node, serve_again  # noqa: F401 - the fixture: an agent in a node namespace, three pods

PROBE = {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2}
BOUND = PROBE["failureThreshold"] * PROBE["periodSeconds"] + PROBE["timeoutSeconds"]


def write_service(registry, name, ips, **fields):
    """A service file as its writer would put it: whole, renamed into place."""
    doc = {"name": name, "ports": [{"name": "http", "port": 80, "targetPort": 8080}], "endpoints": ips,
           "readinessProbe": PROBE, **fields}  # fmt: skip
    folder = registry / "default"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}.tmp").write_text(json.dumps(doc))
    os.rename(folder / f".{name}.tmp", folder / f"{name}.yaml")


def test_explicit_endpoints_follow_this_hosts_probes(node):  # noqa: F811 - the fixture
    p1, p2, _ = node.pod_list
    ip1, ip2 = str(p1.ipv4), str(p2.ipv4)
    registry = node.svcdns.registry
    write_service(registry, "db", [ip1, ip2])
    write_service(registry, "db-h", [ip1, ip2], clusterIP="None")
    headless = "db-h.default.svc.cluster.local"
    wait_for(lambda: node.dig(headless) == {ip1, ip2}, 20, what="both probed endpoints ready in DNS")
    vip = node.svcdns("service", "get", "db", "-o", "json")
    vip = json.loads(vip)["clusterIP"]
    # db's endpoints are probed on their own schedule (a first probe at a random point of the period)
    wait_for(lambda: node.ask(vip, 20) == {ip1, ip2}, 10, what="both probed endpoints in the VIP's draw")
    files = sorted(str(p.relative_to(registry)) for p in registry.rglob("*") if p.is_file())

    node.stop(node.servers[p1.ns.name], 9)
    killed = time.monotonic()
    wait_for(lambda: node.dig(headless) == {ip2}, BOUND + 5, interval=0.02, what="the dead endpoint to leave DNS")
    left = time.monotonic() - killed
    assert left <= BOUND + 0.1 + 0.05, f"it left DNS {left:.2f} s after its server died; bound {BOUND} s + 0.1 s"
    # the other Service's endpoints are probed on their own schedule: the same bound, from the kill
    wait_for(lambda: node.ask(vip, 10) == {ip2}, killed + BOUND + 0.15 - time.monotonic() + 1, interval=0.02,
             what="the dead endpoint to leave the VIP's draw")  # fmt: skip
    drawn = time.monotonic() - killed
    assert drawn <= BOUND + 0.15 + 1, f"it left the VIP's draw {drawn:.2f} s after its server died"  # + one ask's time
    assert node.ask(vip, 20) == {ip2}, "the dead endpoint is back in the VIP's draw"
    def on_node(*args):  # the agent's /status listens in the node's namespace
        return node.node.run([*PY, "svcdns", *args], env=node.svcdns.env, check=False).stdout

    status = on_node("status")
    assert f"Not ready:        default/db {ip1}: connection refused" in status, status
    described = on_node("service", "describe", "db")
    assert "1 of 2 endpoints pass this host's probes" in described and f"{ip1}: connection refused" in described
    assert sorted(str(p.relative_to(registry)) for p in registry.rglob("*") if p.is_file()) == files, \
        "the verdicts of explicit endpoints are this host's: nothing is written to the registry"
    print(f"\nleft {left:.2f} s after the kill (bound {BOUND} s)")

    serve_again(node, p1, headless, {ip1, ip2}, PROBE["periodSeconds"], "the endpoint")
    wait_for(lambda: node.ask(vip, 20) == {ip1, ip2}, 5, what="the endpoint back in the VIP's draw")
