"""The Pod model and its document form (Kubernetes field names)."""

import pytest

from svcdns.model import ValidationError
from svcdns.pod import ContainerPort, Pod
from svcdns.registry.documents import decode_pod, pod_document, pod_from_document


def test_a_pod_document_with_kubernetes_field_names_round_trips():
    text = b"""
name: web-0
namespace: prod
labels: {app: web, tier: front}
podIPs: [{ip: 10.244.1.5}, {ip: "fd00:244::5"}]
hostname: web-0
subdomain: web
nodeName: n1
ports: [{containerPort: 8080, name: http}, {containerPort: 53, name: dns, protocol: UDP}]
ready: false
deletionTimestamp: "2024-05-01T12:00:00Z"
"""
    pod = decode_pod(text, "pods/prod/web-0.yaml")
    assert pod.key == ("prod", "web-0") and pod.labels == (("app", "web"), ("tier", "front"))
    assert [str(ip) for ip in pod.ips] == ["10.244.1.5", "fd00:244::5"]
    assert pod.ports == (ContainerPort(8080, "http"), ContainerPort(53, "dns", "UDP"))
    assert not pod.ready and pod.terminating and pod.deletion_deadline == 1714564800.0
    assert pod.port_named("http", "TCP") == 8080 and pod.port_named("http", "UDP") is None
    doc = pod_document(pod)
    assert doc["podIPs"] == ["10.244.1.5", "fd00:244::5"] and doc["deletionTimestamp"] == "2024-05-01T12:00:00.000Z"
    assert pod_from_document(doc) == pod


def test_pod_ip_is_a_shorthand_for_one_address():
    assert [str(ip) for ip in pod_from_document({"name": "a", "podIP": "10.0.0.1"}).ips] == ["10.0.0.1"]


@pytest.mark.parametrize(
    "doc, field, says",
    [
        ({"name": "a", "podIPs": ["10.0.0.1", "10.0.0.2"]}, "podIPs", "one address per family"),
        ({"name": "a", "podIP": "10.0.0.9", "podIPs": ["10.0.0.1"]}, "podIP", "podIPs[0]"),
        ({"name": "a", "podIPs": ["nope"]}, "podIPs[0]", "IPv4 or IPv6"),
        ({"name": "a", "labels": {"app": "we b"}}, "labels.app", "label value"),
        ({"name": "a", "ports": [{"containerPort": 70000}]}, "ports[0].containerPort", "1 to 65535"),
        ({"name": "a", "ports": [{"containerPort": 80, "name": "HTTP"}]}, "ports[0].name", "port name"),
        ({"name": "a", "ready": "yes"}, "ready", "true or false"),
        ({"name": "a", "deletionTimestamp": "soon"}, "deletionTimestamp", "RFC 3339"),
        ({"name": "a", "image": "nginx"}, "image", "unknown field"),
        ({"name": "a", "kind": "Service"}, "kind", "must be Pod"),
    ],
)
def test_pod_errors_name_field_and_value(doc, field, says):
    with pytest.raises(ValidationError) as err:
        pod_from_document(doc, "pods/default/a.yaml")
    assert err.value.field == field and says in str(err.value) and str(err.value).startswith("pods/default/a.yaml")


def test_a_deadline_makes_a_pod_terminating_and_gone_once_passed():
    pod = Pod("a", ips=("10.0.0.1",), deletion_deadline=100.0)
    assert pod.terminating and not pod.gone(99.9) and pod.gone(100.0)
    assert not Pod("a").gone(1e10)
    with pytest.raises(ValidationError, match="deletionTimestamp"):
        Pod("a", deletion_deadline=-1)
