"""`svcdns service describe`: the Service, the pods its selector picks, and the running agent's view
(its /status on the health address, its DNS answer for the name)."""

import socket
import threading
import time

import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from svcdns.status import Metrics, State, StatusServer


@pytest.fixture
def agent(svcdns, monkeypatch):
    """A stand-in agent on loopback: the real /status server, and a DNS server answering ``names``."""
    state = State(ready=True, last_sync=time.time(), registry=str(svcdns.root))
    status = StatusServer(("127.0.0.1", 0), state, Metrics())
    status.start()
    names: dict[str, str] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            q = DNSRecord.parse(data)
            reply = q.reply()
            name = str(q.q.qname).rstrip(".")
            if name in names and q.q.qtype == QTYPE.A:
                reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(names[name]), ttl=5))
            sock.sendto(reply.pack(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setenv("SVCDNS_HEALTH_LISTEN", f"127.0.0.1:{status.httpd.server_address[1]}")
    monkeypatch.setenv("SVCDNS_DNS_LISTEN", f"127.0.0.1:{sock.getsockname()[1]}")
    yield state, names
    stop.set()
    thread.join()
    sock.close()
    status.stop()


def test_describe_shows_endpoints_pods_and_what_the_agent_serves(svcdns, agent):
    state, names = agent
    vip = svcdns("service", "add", "web", "--selector", "app=web", "--port", "http:80:http", "-l", "tier=front")[1].strip()
    svcdns("pod", "add", "web-0", "10.244.0.5", "-l", "app=web", "--port", "http:8080")
    svcdns("pod", "add", "web-1", "10.244.0.6", "-l", "app=web", "--port", "http:8080", "--not-ready")
    svcdns("pod", "add", "web-2", "10.244.0.7", "-l", "app=web")  # no port named http: no endpoint
    svcdns("pod", "add", "db-0", "10.244.0.8", "-l", "app=db")
    from svcdns.pod import PodStatus
    from svcdns.registry.files import FileRegistry

    (svcdns.root / "pods/default/web-3.yaml").write_text(
        "labels: {app: web}\npodIPs: [10.244.0.9]\nports: [{containerPort: 8080, name: http}]\n"
        "readinessProbe: {httpGet: {port: http}}\n")  # fmt: skip
    FileRegistry(svcdns.root).set_pod_statuses({("default", "web-3"): PodStatus(False, "HTTP 503")})
    code, out, err = svcdns("service", "describe", "web")
    assert code == 0, err
    lines = out.splitlines()
    assert f"VIPs:              {vip}" in lines and "Labels:            tier=front" in lines
    assert "Selector:          app=web" in lines and "Ports:             http 80/TCP -> http" in lines
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("  ")}
    assert rows["10.244.0.5"] == ["10.244.0.5", "http:8080/tcp", "true", "true", "false", "-", "web-0"]
    assert rows["10.244.0.6"][2:4] == ["false", "false"]
    assert rows["web-0"] == ["web-0", "Ready", "10.244.0.5", "yes", "-"]
    assert rows["web-1"] == ["web-1", "NotReady", "10.244.0.6", "yes", "-"]
    assert rows["web-2"][:4] == ["web-2", "Ready", "10.244.0.7", "no"] and "db-0" not in rows
    assert rows["web-3"] == ["web-3", "NotReady", "10.244.0.9", "yes", "HTTP", "503"]  # its prober's status
    agent_line = next(line for line in lines if line.startswith("Agent:"))
    assert ": healthy, last sync " in agent_line
    assert "web.default.svc.cluster.local: not published" in out
    assert "Events:            <none: the registry keeps no history of changes>" in lines

    names["web.default.svc.cluster.local"] = vip
    out = svcdns("service", "describe", "web")[1]
    assert f"web.default.svc.cluster.local answers {vip}: its rules are in the kernel" in out
    names["web.default.svc.cluster.local"] = "10.96.0.99"
    state.registry_problem = "etcd://x:2379/p: unreachable"
    state.registry = "etcd://x:2379/p"
    out = svcdns("service", "describe", "web")[1]
    assert f"answers 10.96.0.99, not {vip}: the agent is behind" in out
    assert "the agent follows etcd://x:2379/p, not" in out and "PROBLEM: etcd://x:2379/p: unreachable" in out


def test_describe_without_an_agent_says_none_answers(svcdns, monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    svcdns("service", "add", "db", "--port", "5432", "--endpoint", "10.0.2.1")
    code, out, _ = svcdns("service", "describe", "db", "--health-listen", f"127.0.0.1:{port}")
    assert code == 0 and f"Agent:             none answers at 127.0.0.1:{port} (" in out
    assert "Pods:" not in out  # no selector: explicit endpoints
    assert svcdns("service", "describe", "nope")[0] == 1
