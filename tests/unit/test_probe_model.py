"""readinessProbe in pod documents: Kubernetes' field names and defaults, the round trip, and errors
that name the pod's source, the field and the value."""

import pytest

from svcdns.pod import PodStatus, Probe, readiness
from svcdns.registry.documents import DocumentError, decode_pod, encode_pod

POD = """
name: web-0
podIPs: [10.244.1.5]
ports: [{containerPort: 8080, name: http}]
readinessProbe:
"""


def pod(probe_yaml):
    return decode_pod((POD + probe_yaml).encode(), "pods/default/web-0.yaml")


def test_tcp_socket_with_the_defaults_and_not_ready_until_probed():
    web = pod("  tcpSocket: {port: 8080}\n")
    assert web.readiness_probes[0] == Probe("tcpSocket", 8080)
    # a probed pod is not ready until its status says so, as in Kubernetes; its record is spec
    assert web.ready and readiness(web, None) == (False, "not probed yet")
    assert readiness(web, PodStatus(True)) == (True, "") and readiness(web, PodStatus(False, "HTTP 503"))[1] == "HTTP 503"
    assert decode_pod(encode_pod(web).encode()) == web


def test_http_get_with_every_field_round_trips():
    web = pod("""  httpGet: {path: /healthz, port: http, scheme: https, httpHeaders: [{name: X-A, value: b}]}
  initialDelaySeconds: 2
  periodSeconds: 5
  timeoutSeconds: 2
  successThreshold: 2
  failureThreshold: 4
ready: true
""")
    assert web.readiness_probes[0] == Probe("httpGet", "http", path="/healthz", scheme="HTTPS", http_headers=(("X-A", "b"),),
                                        initial_delay=2, period=5, timeout=2, success_threshold=2, failure_threshold=4)  # fmt: skip
    assert web.ready and web.probe_port(web.readiness_probes[0]) == 8080
    assert decode_pod(encode_pod(web, "json").encode(), fmt="json") == web


@pytest.mark.parametrize(
    ("probe_yaml", "field", "says"),
    [
        ("  tcpSocket: {port: metrics}\n", "readinessProbe.tcpSocket.port", "names no TCP port of pod default/web-0"),
        ("  tcpSocket: {port: 8080}\n  periodSeconds: 0\n", "readinessProbe.periodSeconds", "from 1 to 86400"),
        ("  tcpSocket: {port: 8080}\n  periodSeconds: 2\n  timeoutSeconds: 3\n", "readinessProbe.timeoutSeconds",
         "must not exceed periodSeconds"),
        ("  httpGet: {port: 8080, scheme: FTP}\n", "readinessProbe.httpGet.scheme", "HTTP or HTTPS"),
        ("  exec: {command: []}\n", "readinessProbe.exec.command", "non-empty list"),
        ("  exec: {command: cat /ready}\n", "readinessProbe.exec.command", "non-empty list"),
        ("  exec: {}\n", "readinessProbe.exec.command", "is required"),
        ("  grpc: {service: web}\n", "readinessProbe.grpc.port", "is required"),
        ("  grpc: {port: http}\n", "readinessProbe.grpc.port", "take no port name"),
        ("  httpGet: {port: 8080, path: nope}\n", "readinessProbe.httpGet.path", "starting with '/'"),
        ("  tcpSocket: {port: 8080}\n  httpGet: {port: 8080}\n", "readinessProbe", "exactly one of"),
        ("  tcpSocket: {}\n", "readinessProbe.tcpSocket.port", "is required"),
        ("  tcpSocket: {port: 8080}\n  periodSecond: 5\n", "readinessProbe.periodSecond", "unknown field"),
        ("  tcpSocket: {port: 8080, path: /}\n", "readinessProbe.tcpSocket.path", "unknown field"),
    ],
)
def test_bad_probes_name_the_source_the_field_and_the_value(probe_yaml, field, says):
    with pytest.raises(DocumentError) as err:
        pod(probe_yaml)
    assert err.value.field == field and says in str(err.value)
    assert str(err.value).startswith("pods/default/web-0.yaml: ")
