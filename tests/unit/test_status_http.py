"""The agent's HTTP endpoints on loopback: /livez, HEAD, the metrics-only listener, the sync gauges,
and `svcdns status` finding the agent where its configuration says."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from svcdns.cli import config, main
from svcdns.cli.agent import status_servers
from svcdns.status import Metrics, State, StatusServer
from svcdns.testing.lab import free_port

PATHS = ("/healthz", "/livez", "/readyz", "/metrics", "/status")


def request(server: StatusServer, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    assert server.httpd is not None
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def serve():
    started: list[StatusServer] = []

    def start(server: StatusServer) -> StatusServer:
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_livez_follows_the_loop_not_the_registry(serve):
    st = State(registry_problem="etcd at 10.0.0.1:2379 unreachable", health_timeout=60)  # not ready, registry down
    server = serve(StatusServer(("127.0.0.1", 0), st, Metrics()))
    assert request(server, "/healthz")[0] == 503
    assert request(server, "/livez")[:3:2] == (200, b"ok\n")
    st.loop_turned = time.monotonic() - 61  # the loop is stuck (a sync that never returns)
    code, _, body = request(server, "/livez")
    assert code == 503 and b"has not turned for 61s" in body


def test_head_answers_every_path_with_the_status_and_headers_of_get_and_no_body(serve):
    st = State(ready=True, last_sync=time.time(), registry="/var/lib/svcdns/registry")
    server = serve(StatusServer(("127.0.0.1", 0), st, Metrics()))
    for path in (*PATHS, "/nope"):
        get_code, get_headers, get_body = request(server, path)
        head_code, head_headers, head_body = request(server, path, "HEAD")
        assert (head_code, head_body) == (get_code, b""), path
        assert head_headers["Content-Type"] == get_headers["Content-Type"], path
        if path != "/metrics":  # (a scrape's text changes between two requests)
            assert head_headers["Content-Length"] == str(len(get_body)), path
    assert request(server, "/nope")[0] == 404


def test_the_metrics_listener_serves_only_metrics_and_the_health_listener_points_there(serve, tmp_path):
    cfg_file = tmp_path / "svcdns.toml"
    health_port, metrics_port = free_port(), free_port()
    cfg_file.write_text(f'registry = "{tmp_path}"\nhealth_listen = "127.0.0.1:{health_port}"\n'
                        f'metrics_listen = "127.0.0.2:{metrics_port}"\n')  # fmt: skip
    cfg = config.load(str(cfg_file), env={})
    st = State(ready=True, registry=str(tmp_path), bad_entries={"x.yaml": "a secret-looking error"})
    health, metrics = status_servers(cfg, st, Metrics())
    assert metrics is not None
    serve(health), serve(metrics)
    assert metrics.httpd is not None and metrics.httpd.server_address[0] == "127.0.0.2"
    code, headers, body = request(metrics, "/metrics")
    assert code == 200 and b"svcdns_build_info" in body and headers["Content-Type"].startswith("text/plain")
    for path in ("/status", "/healthz", "/livez", "/readyz", "/", "/metrics/../status"):
        code, _, body = request(metrics, path)
        assert code == 404 and b"x.yaml" not in body, path
    code, _, body = request(health, "/metrics")
    assert code == 404 and f"127.0.0.2:{metrics_port}".encode() in body
    assert request(health, "/status")[0] == 200


def test_without_metrics_listen_metrics_stay_on_the_health_listener(serve, tmp_path):
    cfg = config.load(None, flags={"registry": str(tmp_path), "health_listen": f"127.0.0.1:{free_port()}"}, env={})
    health, metrics = status_servers(cfg, State(), Metrics())
    assert metrics is None
    assert request(serve(health), "/metrics")[0] == 200


def test_metrics_listen_must_be_another_address(tmp_path):
    with pytest.raises(config.UsageError, match="metrics_listen = '127.0.0.1:10256': another address than health_listen"):
        config.load(None, flags={"registry": str(tmp_path), "metrics_listen": "127.0.0.1:10256"}, env={})
    with pytest.raises(config.UsageError, match="metrics_listen"):
        config.load(None, flags={"registry": str(tmp_path), "metrics_listen": "nowhere"}, env={})


def test_sync_gauges_and_build_info():
    st = State(last_sync=1700000000.5)
    m = Metrics()
    pending = [3]
    m.follow(st, lambda: pending[0])
    text = m.render().decode()
    assert "svcdns_sync_last_timestamp_seconds 1.7000000005e+09" in text
    assert "svcdns_sync_pending_changes 3.0" in text
    import platform

    from svcdns import __version__

    assert f'svcdns_build_info{{python="{platform.python_version()}",version="{__version__}"}} 1.0' in text


def test_svcdns_status_asks_the_configured_health_address(serve, tmp_path, capsys, monkeypatch):
    st = State(ready=True, last_sync=time.time(), registry="etcd://root:***@10.0.0.1:2379/svcdns")
    server = serve(StatusServer(("127.0.0.1", 0), st, Metrics()))
    assert server.httpd is not None
    port = server.httpd.server_address[1]
    cfg = tmp_path / "svcdns.toml"
    cfg.write_text(f'health_listen = "0.0.0.0:{port}"\npassword_file = "/nonexistent/only-root-reads-it"\n')
    monkeypatch.delenv("SVCDNS_HEALTH_LISTEN", raising=False)
    monkeypatch.setenv("SVCDNS_CONFIG", str(cfg))
    # the wildcard address is asked on loopback; the password file is not the status command's business
    assert main(["status", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["registry"] == "etcd://root:***@10.0.0.1:2379/svcdns"
    monkeypatch.setenv("SVCDNS_HEALTH_LISTEN", "127.0.0.1:1")  # the environment beats the file, as for the agent
    assert main(["status"]) == 1
    assert "no agent answers at http://127.0.0.1:1/status" in capsys.readouterr().err
    assert main(["status", "--health-listen", f"127.0.0.1:{port}"]) == 0  # and a flag beats both
