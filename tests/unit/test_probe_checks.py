"""The probe kinds against servers on loopback: what passes, what fails, and how fast."""

import asyncio
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from svcdns.pod import ContainerPort, Pod, Probe
from svcdns.probe.checks import check, probe_at


def probe(probe_, port=None):
    return probe_at(probe_, "127.0.0.1", port if port is not None else probe_.port)


@pytest.fixture
def http_server():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, dict(self.headers)))
            status = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_socket_passes_on_accept_and_fails_at_once_when_refused(http_server):
    port, _ = http_server
    assert asyncio.run(probe(Probe("tcpSocket", port))).ok
    t0 = time.monotonic()
    result = asyncio.run(probe(Probe("tcpSocket", free_port(), timeout=5, period=10)))
    assert not result.ok and "refused" in result.reason, result.reason
    assert time.monotonic() - t0 < 0.5, "a refused connection fails at once, not at the 5 s timeout"


@pytest.mark.parametrize(("status", "ok"), [(200, True), (302, True), (399, True), (400, False), (503, False)])
def test_http_get_passes_from_200_to_399(http_server, status, ok):
    port, _ = http_server
    result = asyncio.run(probe(Probe("httpGet", port, path=f"/status/{status}")))
    assert (result.ok, result.reason) == (ok, "" if ok else f"HTTP {status}")


def test_http_get_sends_the_path_and_headers(http_server):
    port, seen = http_server
    spec = Probe("httpGet", port, path="/healthz?full=1", http_headers=(("X-Probe", "yes"), ("Host", "web.local")))
    assert asyncio.run(probe(spec)).ok
    path, headers = seen[-1]
    assert path == "/healthz?full=1"
    assert headers["X-Probe"] == "yes" and headers["Host"] == "web.local"


def test_a_server_that_accepts_and_never_answers_fails_by_timeout():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        t0 = time.monotonic()
        result = asyncio.run(probe(Probe("httpGet", listener.getsockname()[1], timeout=1)))
        took = time.monotonic() - t0
    assert (result.ok, result.reason) == (False, "timeout after 1 s")
    assert 0.9 < took < 1.5, took


def test_a_reset_fails_with_its_reason():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def reset():
            conn, _ = listener.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            conn.close()

        threading.Thread(target=reset, daemon=True).start()
        result = asyncio.run(probe(Probe("httpGet", listener.getsockname()[1], timeout=5, period=10)))
    assert not result.ok and ("reset" in result.reason or "no status line" in result.reason), result.reason


def test_a_pod_without_an_address_fails():
    tcp = Probe("tcpSocket", 80)
    result = asyncio.run(check(Pod("x", readiness_probes=(tcp,)), tcp))
    assert (result.ok, result.reason) == (False, "the pod has no address")


def test_a_named_port_resolves_against_the_pods_ports():
    http = Probe("httpGet", "http")
    web = Pod("web-0", ips=("10.0.0.1",), ports=(ContainerPort(8080, "http"),), readiness_probes=(http,))
    assert web.probe_port(http) == 8080
