"""Probes in pod records and Kubernetes Pod manifests: exec, grpc, one probe per container, the pod's
netns; bad fields named with the pod, the field and the value."""

import pytest

from svcdns.model import ValidationError
from svcdns.pod import ContainerPort, Pod, PodStatus, Probe, readiness
from svcdns.registry.documents import DocumentError, decode_pod, encode_pod
from svcdns.registry.manifests import ManifestInvalid, parse_manifest

RECORD = """
name: web-0
podIPs: [10.244.1.5]
ports: [{containerPort: 8080, name: http}]
"""


def record(extra):
    return decode_pod((RECORD + extra).encode(), "pods/default/web-0.yaml")


def test_exec_and_grpc_records_round_trip_and_keep_the_single_probe_form():
    web = record("netns: /run/netns/web-0\nreadinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 2}\n")
    assert web.readiness_probes == (Probe("exec", command=("cat", "/tmp/ready"), period=2),)
    assert web.netns == "/run/netns/web-0" and readiness(web, None) == (False, "not probed yet")
    text = encode_pod(web)
    assert "readinessProbe:" in text and "readinessProbes" not in text
    assert decode_pod(text.encode()) == web
    grpc = record("readinessProbe: {grpc: {port: 9090, service: web}}\n")
    assert grpc.readiness_probes == (Probe("grpc", 9090, service="web"),)
    assert decode_pod(encode_pod(grpc, "json").encode(), fmt="json") == grpc


def test_several_probes_one_per_container_round_trip():
    web = record("""readinessProbes:
  - {container: app, httpGet: {port: http, path: /ready}}
  - {container: side, exec: {command: ["true"]}}
""")
    assert [p.container for p in web.readiness_probes] == ["app", "side"]
    assert decode_pod(encode_pod(web).encode()) == web


def test_a_reason_in_a_record_is_status_written_by_an_older_svcdns_and_ignored():
    web = record("reason: HTTP 503\nreadinessProbe: {httpGet: {port: http}}\n")
    assert "reason" not in encode_pod(web) and decode_pod(encode_pod(web).encode()) == web
    assert readiness(web, PodStatus(False, "HTTP 503")) == (False, "HTTP 503")


@pytest.mark.parametrize(
    ("extra", "field", "value", "says"),
    [
        ("readinessProbes:\n  - {container: a, tcpSocket: {port: 80}}\n  - {container: b, exec: {command: []}}\n",
         "readinessProbes[1].exec.command", "[]", "non-empty list"),
        ("readinessProbes:\n  - {container: a, tcpSocket: {port: metrics}}\n",
         "readinessProbes[0].tcpSocket.port", "metrics", "names no TCP port of pod default/web-0"),
        ("readinessProbes:\n  - {tcpSocket: {port: 80}}\n  - {tcpSocket: {port: 81}}\n",
         "readinessProbes", "['', '']", "each names its container"),
        ("readinessProbes:\n  - {container: a, tcpSocket: {port: 80}, periodSeconds: 0}\n",
         "readinessProbes[0].periodSeconds", "0", "from 1 to 86400"),
        ("readinessProbe: {tcpSocket: {port: 80}}\nreadinessProbes: []\n", "readinessProbes", "[]", "not both"),
        ("netns: run/netns/web-0\n", "netns", "run/netns/web-0", "absolute path"),
    ],
)
def test_bad_probe_records_name_the_pod_the_field_and_the_value(extra, field, value, says):
    with pytest.raises(DocumentError) as err:
        record(extra)
    assert err.value.field == field, err.value
    assert str(err.value).startswith("pods/default/web-0.yaml: ") and value in str(err.value) and says in str(err.value)


def test_the_model_refuses_a_named_port_the_pod_lacks_naming_the_pod():
    with pytest.raises(ValidationError) as err:
        Pod("web-0", ports=(ContainerPort(80, "http"),), readiness_probes=(Probe("httpGet", "metrics"),))
    assert "metrics" in str(err.value) and "pod default/web-0" in str(err.value)


MANIFEST = """
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  annotations: {svcdns.io/pod-ips: 10.244.1.5, svcdns.io/netns: /run/netns/web-0}
spec:
  containers:
    - name: app
      ports: [{containerPort: 8080, name: http}]
      readinessProbe: {httpGet: {port: http, path: /ready}, periodSeconds: 5, terminationGracePeriodSeconds: 3}
      livenessProbe: {tcpSocket: {port: 8080}}
    - name: sidecar
    - name: metrics
      readinessProbe: {grpc: {port: 9090}}
"""


def test_a_manifest_gives_one_probe_per_container_and_the_netns():
    pod = parse_manifest(MANIFEST.encode(), "web.yaml").objects[0].pod
    assert pod.readiness_probes == (Probe("httpGet", "http", path="/ready", period=5, container="app"),
                                    Probe("grpc", 9090, container="metrics"))  # fmt: skip
    # the record is spec (ready unless held); the pod is not ready until its status says its probes pass
    assert pod.netns == "/run/netns/web-0" and pod.ready and not readiness(pod, None)[0]


@pytest.mark.parametrize(
    ("old", "new", "path", "says"),
    [
        ("{grpc: {port: 9090}}", "{grpc: {service: x}}", "spec.containers[2].readinessProbe.grpc.port", "is required"),
        ("{grpc: {port: 9090}}", "{exec: {command: []}}", "spec.containers[2].readinessProbe.exec.command", "non-empty"),
        ("periodSeconds: 5", "periodSeconds: 0", "spec.containers[0].readinessProbe.periodSeconds", "from 1"),
        ("periodSeconds: 5", "periodSeconds: 5, timeoutSeconds: 6", "spec.containers[0].readinessProbe.timeoutSeconds",
         "must not exceed periodSeconds (5)"),
        ("path: /ready}", "path: /ready, scheme: FTP}", "spec.containers[0].readinessProbe.httpGet.scheme", "HTTP or HTTPS"),
        ("port: http, path", "port: admin, path", "spec.containers[0].readinessProbe.httpGet.port", "names no TCP port"),
        ("svcdns.io/netns: /run/netns/web-0", "svcdns.io/netns: web-0", "metadata.annotations.svcdns.io/netns", "absolute"),
    ],
)
def test_bad_probes_in_a_manifest_name_the_pod_the_field_path_and_the_value(old, new, path, says):
    assert old in MANIFEST
    with pytest.raises(ManifestInvalid) as err:
        parse_manifest(MANIFEST.replace(old, new).encode(), "web.yaml")
    (error,) = err.value.errors
    assert error.field == path and "(Pod/web-0)" in str(error) and says in str(error), str(error)


def test_pod_add_netns_and_pod_list_shows_why_a_pod_is_not_ready(svcdns):
    assert svcdns("pod", "add", "web-0", "10.244.1.5", "--netns", "/run/netns/web-0")[0] == 0
    assert decode_pod((svcdns.root / "pods/default/web-0.yaml").read_bytes()).netns == "/run/netns/web-0"
    code, _, err = svcdns("pod", "add", "web-1", "10.244.1.6", "--netns", "web-1")
    assert code == 2 and "netns" in err and "web-1" in err and "absolute path" in err
    from svcdns.registry.files import FileRegistry

    probed = record("readinessProbe: {httpGet: {port: http}}\n")
    (svcdns.root / "pods/default/web-0.yaml").write_text(encode_pod(probed))
    assert svcdns("pod", "list")[1].splitlines()[1].split(None, 4)[2:] == ["NotReady", "10.244.1.5", "not probed yet"]
    # what the prober writes when web-0's probe fails: its status, beside the record
    FileRegistry(svcdns.root).set_pod_statuses({("default", "web-0"): PodStatus(False, "HTTP 503")})
    assert decode_pod((svcdns.root / "pods/default/web-0.yaml").read_bytes()) == probed
    lines = svcdns("pod", "list")[1].splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "STATUS", "IP", "REASON"]
    assert lines[1].split(None, 4) == ["default", "web-0", "NotReady", "10.244.1.5", "HTTP 503"]
    out = svcdns("pod", "get", "web-0")[1]
    assert "Reason:     HTTP 503" in out and "http-get http://:http/ delay=0s timeout=1s period=10s" in out
