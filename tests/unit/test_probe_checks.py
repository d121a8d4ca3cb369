"""The probe kinds against servers on loopback: what passes, what fails, and how fast."""

import asyncio
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from svcdns.pod import ContainerPort, Pod, Probe
from svcdns.probe.checks import check, probe_at
from svcdns.probe.result import Result


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


# ---- exec --------------------------------------------------------------------------------------------------


def run_exec(command, netns="", timeout=1):
    spec = Probe("exec", command=tuple(command), timeout=timeout, period=max(timeout, 1))
    return asyncio.run(check(Pod("x", readiness_probes=(spec,), netns=netns), spec))


@pytest.mark.parametrize(
    ("command", "ok", "reason"),
    [
        (["true"], True, ""),
        (["false"], False, "exit status 1"),
        (["sh", "-c", "exit 7"], False, "exit status 7"),
        (["no-such-command-svcdns"], False, "exec: no-such-command-svcdns: command not found"),
        (["/nonexistent/bin/x"], False, "exec: /nonexistent/bin/x: command not found"),
    ],
)
def test_exec_passes_on_exit_0_and_says_why_not(command, ok, reason):
    assert run_exec(command) == Result(ok, reason)


def test_exec_of_a_file_without_execute_permission(tmp_path):
    script = tmp_path / "ready.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    assert run_exec([str(script)]) == Result(False, f"exec: {script}: not executable")
    script.chmod(0o755)
    assert run_exec([str(script)]) == Result(True)


def test_exec_runs_with_a_clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SVCDNS_SECRET", "hunter2")
    assert run_exec(["sh", "-c", 'test -z "$SVCDNS_SECRET" && test "$PWD" = /']).ok


def test_exec_is_killed_at_its_timeout_with_what_it_started(tmp_path):
    marker = tmp_path / "child.pid"
    t0 = time.monotonic()
    result = run_exec(["sh", "-c", f"sleep 30 & echo $! > {marker}; wait"], timeout=1)
    assert (result.ok, result.reason, result.timed_out) == (False, "timeout after 1 s", True)
    assert time.monotonic() - t0 < 1.5
    child = int(marker.read_text())
    from svcdns.testing.lab import wait_for

    def gone():
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().split(")")[1].split()[0] == "Z"  # reaped or a zombie: not running
        except FileNotFoundError:
            return True

    wait_for(gone, 5, what="the command's child killed with it")


def test_exec_in_a_netns_that_does_not_exist_fails_with_that_reason(tmp_path):
    assert run_exec(["true"], netns=str(tmp_path / "gone")) == Result(False, f"no such network namespace: {tmp_path / 'gone'}")
    (tmp_path / "file").write_text("")
    assert run_exec(["true"], netns=str(tmp_path / "file")) == Result(False, f"not a network namespace: {tmp_path / 'file'}")


def test_a_command_that_floods_its_output_does_not_block():
    assert run_exec(["sh", "-c", "head -c 5000000 /dev/zero; exit 3"], timeout=5) == Result(False, "exit status 3")


# ---- grpc --------------------------------------------------------------------------------------------------


async def grpc_health_server():
    """A gRPC server on 127.0.0.1 with the standard health service, on the running loop."""
    import grpc
    from grpc_health.v1 import health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    server = grpc.aio.server()
    servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, servicer, port


def test_grpc_passes_while_serving_and_fails_on_not_serving():
    from grpc_health.v1.health_pb2 import HealthCheckResponse

    async def scenario():
        server, health, port = await grpc_health_server()
        try:
            await health.set("", HealthCheckResponse.SERVING)
            await health.set("web", HealthCheckResponse.SERVING)
            results = [await probe(Probe("grpc", port)), await probe(Probe("grpc", port, service="web"))]
            await health.set("web", HealthCheckResponse.NOT_SERVING)
            results.append(await probe(Probe("grpc", port, service="web")))
            results.append(await probe(Probe("grpc", port, service="other")))
            return results
        finally:
            await server.stop(0)

    whole, web, not_serving, unknown = asyncio.run(scenario())
    assert whole == web == Result(True)
    assert not_serving == Result(False, "gRPC NOT_SERVING")
    assert not unknown.ok and "does not know service 'other'" in unknown.reason


def test_grpc_refused_fails_at_once():
    t0 = time.monotonic()
    result = asyncio.run(probe(Probe("grpc", free_port(), timeout=5, period=10)))
    assert result == Result(False, "connection refused")
    assert time.monotonic() - t0 < 1, "a refused connection fails at once, not at the 5 s timeout"


def test_grpc_a_silent_server_fails_by_timeout():
    with socket.socket() as listener:  # accepts, never speaks HTTP/2
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        t0 = time.monotonic()
        result = asyncio.run(probe(Probe("grpc", listener.getsockname()[1], timeout=1)))
        took = time.monotonic() - t0
    assert (result.ok, result.reason, result.timed_out) == (False, "timeout after 1 s", True)
    assert 0.9 < took < 1.6, took
