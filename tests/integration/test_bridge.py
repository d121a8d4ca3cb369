"""Issue 14, pods as clients: routed pods and pods on one Linux bridge resolve Services through the
resolv.conf `svcdns resolv-conf` writes (glibc's getent, dig) and connect to them by name; names
outside the zone are forwarded for the registry's pods with the default configuration and REFUSED
to anyone else; /healthz says what stops VIPs from working (forwarding off, ports without hairpin).

Without br_netfilter a reply from a pod behind a VIP to a pod on the same bridge crosses the bridge
straight back, past the node's conntrack: svcdns masquerades such traffic (docs/architecture.md,
"Pods on a bridge"). With br_netfilter on (only where the host has the module: the lab never loads
one), the packet is bridged instead and keeps its source address.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svcdns.testing.lab import NoBrNetfilter, wait_for

PY = [sys.executable, "-m"]


MANIFEST = """
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-0, labels: {{app: web}}, annotations: {{svcdns.io/pod-ips: "{web}"}}}}
spec: {{containers: [{{name: web, ports: [{{name: http, containerPort: 8080}}]}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client-routed, annotations: {{svcdns.io/pod-ips: "{routed}"}}}}
spec: {{containers: [{{name: client}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client-bridged, annotations: {{svcdns.io/pod-ips: "{bridged}"}}}}
spec: {{containers: [{{name: client}}]}}
"""

# connect to a Service by its name, as an application does (getaddrinfo through resolv.conf)
CONNECT = "import socket, sys; s = socket.create_connection((sys.argv[1], 80), timeout=float(sys.argv[2])); print(s.recv(100).decode().strip())"


@pytest.fixture
def node(make_lab, cli, tmp_path):
    """A node with 2 routed pods and 3 bridged ones (br_netfilter off), an agent with the default
    configuration but for its upstream (the stub), and web selecting the second bridged pod."""
    lab = make_lab(pods=2)
    for _ in range(3):
        lab.add_pod(bridged=True)
    routed, _, bridged_a, bridged_b, stranger = lab.pod_list
    lab.serve(bridged_b, 8080)
    stub = lab.spawn(lab.node, [sys.executable, "-m", "svcdns.testing.upstream"], env=cli.env)
    assert b"listening" in stub.stdout.readline()
    config = tmp_path / "svcdns.toml"
    config.write_text('[dns]\nupstreams = ["127.0.0.2:53"]\n')
    manifest = tmp_path / "app.yaml"  # `stranger` is no registered pod
    manifest.write_text(MANIFEST.format(web=bridged_b.ipv4, routed=routed.ipv4, bridged=bridged_a.ipv4))
    cli("apply", "-f", str(manifest))
    resolv_conf = cli("resolv-conf", "-n", "default", "--host-resolv-conf", "/dev/null")
    lab.confs = [Path("/etc/netns") / pod.ns.name for pod in lab.pod_list]
    for d in lab.confs:
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(resolv_conf)

    def http(path):
        return lab.node.run(["curl", "-s", "--max-time", "2", f"http://127.0.0.1:10256{path}"], check=False).stdout

    def start_agent():
        lab.spawn(lab.node, [*PY, "svcdns", "agent", "--registry", str(cli.registry), "--config", str(config),
                             "--dns-workers", "1"], env=cli.env, stdout=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: http("/readyz").startswith("ok"), 60, what="the agent to be ready")

    def connect(pod, target="web", timeout=3.0):
        out = pod.ns.run([sys.executable, "-c", CONNECT, target, str(timeout)], check=False, timeout=20)
        return out.stdout.strip() or out.stderr.strip()[-200:]

    def dig(pod, *args):
        return pod.ns.run(["dig", "+time=2", "+tries=1", *args], check=False).stdout

    lab.http, lab.start_agent, lab.connect, lab.dig, lab.cli = http, start_agent, connect, dig, cli
    yield lab
    for d in lab.confs:
        shutil.rmtree(d, ignore_errors=True)


def resolves(node, pod, vip):
    """``pod`` resolves the names a pod uses through its resolv.conf, with glibc and with dig."""
    for name, want in (("web", vip), ("web.default", vip), ("kube-dns.kube-system", "10.96.0.10")):
        out = pod.ns.run(["getent", "hosts", name], check=False)
        assert out.stdout.split()[:1] == [want], f"{pod.ns.name}: getent hosts {name}: {out.stdout!r} {out.stderr!r}"
        assert node.dig(pod, "+short", "+search", name).split() == [want], f"{pod.ns.name}: dig {name}"
    srv = node.dig(pod, "+short", "+search", "_http._tcp.web", "SRV").split()
    assert srv == ["0", "100", "80", "web.default.svc.cluster.local."], f"{pod.ns.name}: {srv}"


def test_routed_and_bridged_pods_resolve_connect_and_recurse_and_healthz_says_what_stops_vips(node):
    routed, _, bridged_a, bridged_b, stranger = node.pod_list
    node.start_agent()
    vip = json.loads(node.cli("service", "get", "web", "-o", "json"))["clusterIP"]
    for pod in (routed, bridged_a):
        resolves(node, pod, vip)
        # a routed pod and a pod on the same bridge as the endpoint (the reply must come back through the node)
        assert node.connect(pod) == str(bridged_b.ipv4), f"{pod.ns.name} -> web:80"
    assert node.connect(bridged_b) == str(bridged_b.ipv4)  # a pod reaching its own Service
    # forwarding: registered pods get the upstream's answer with no pod_cidrs configured; others REFUSED
    for pod in (routed, bridged_a):
        assert node.dig(pod, "+short", "example.org").split() == ["192.0.2.1"], pod.ns.name
    assert "status: REFUSED" in node.dig(stranger, "example.org")
    assert node.dig(stranger, "+short", "web.default.svc.cluster.local").split() == [vip]  # the zone: for all
    node.cli("pod", "add", "late", str(stranger.ipv4))  # it becomes a pod: forwarded for from then on
    wait_for(lambda: node.dig(stranger, "+short", "example.org").split() == ["192.0.2.1"], 10,
             what="forwarding for a pod registered later")  # fmt: skip
    # forwarding off on the node: every VIP from a pod fails, and /healthz (still 200) and status say so
    health = json.loads(node.http("/healthz"))
    assert health["healthy"] and health["vips"]["problems"] == [], health
    node.node.run(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    health = wait_for(lambda: (h := json.loads(node.http("/healthz")))["vips"]["problems"] and h, 15,
                      what="/healthz to report forwarding off")  # fmt: skip
    assert health["healthy"] and health["vips"]["problems"][0].startswith("net.ipv4.ip_forward is 0"), health
    status = node.node.run([*PY, "svcdns", "status"], check=False, env=node.cli.env).stdout
    assert "VIPs:             PROBLEM: net.ipv4.ip_forward is 0" in status, status
    node.node.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    wait_for(lambda: json.loads(node.http("/healthz"))["vips"]["problems"] == [], 15, what="the problem to clear")


def test_with_br_netfilter_bridged_pods_keep_their_address_and_hairpin_needs_the_port_mode(node):
    try:
        node.set_br_netfilter(True)
    except NoBrNetfilter as err:
        pytest.skip(f"{err}: the lab never loads a kernel module (host-wide)")
    _, _, bridged_a, bridged_b, _ = node.pod_list
    node.start_agent()
    resolves(node, bridged_a, json.loads(node.cli("service", "get", "web", "-o", "json"))["clusterIP"])
    assert node.connect(bridged_a) == str(bridged_b.ipv4)  # bridged, through the node's conntrack
    # the endpoint saw the client's own address (no masquerade): conntrack holds the un-NATed reply
    entries = node.node.run(["conntrack", "-L", "-p", "tcp", "--orig-src", str(bridged_a.ipv4)], check=False).stdout
    assert f"dst={bridged_a.ipv4} sport=8080" in entries, entries
    # a pod reaching its own Service: bridged back out of its own port, which needs hairpin mode
    problems = wait_for(lambda: json.loads(node.http("/healthz"))["vips"]["problems"], 15,
                        what="/healthz to name the ports without hairpin")  # fmt: skip
    assert any(p.startswith("bridge svbr0: hairpin mode is off on port(s)") and bridged_b.host_if in p
               for p in problems), problems  # fmt: skip
    assert "timed out" in node.connect(bridged_b, timeout=1.5)
    for pod in node.pod_list[2:]:
        node.node.run(["bridge", "link", "set", "dev", pod.host_if, "hairpin", "on"])  # as the kubelet does
    assert node.connect(bridged_b) == str(bridged_b.ipv4)
    wait_for(lambda: json.loads(node.http("/healthz"))["vips"]["problems"] == [], 15, what="the problem to clear")
