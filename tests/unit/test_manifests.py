"""Kubernetes manifests -> Services and Pods: the Kubernetes documentation's examples, the tutorial
shape, and errors that name the file, the document, kind/name, the field path and the value."""

from pathlib import Path

import pytest

from svcdns.model import HEADLESS
from svcdns.registry.manifests import ManifestInvalid, PodObject, ServiceObject, parse_manifest, references

HERE = Path(__file__).parent.parent / "manifests"


def load(rel, **kw):
    path = HERE / rel
    return parse_manifest(path.read_bytes(), str(path), **kw)


def services(manifest):
    return {o.service.name: o.service for o in manifest.objects if isinstance(o, ServiceObject)}


def pods(manifest):
    return {o.pod.name: o.pod for o in manifest.objects if isinstance(o, PodObject)}


def test_a_service_with_a_selector_and_a_named_target_port():
    m = load("kubernetes-docs/named-targetport.yaml")
    svc = services(m)["nginx-service"]
    assert svc.selector == (("app.kubernetes.io/name", "proxy"),)
    assert [str(p) for p in svc.ports] == ["name-of-service-port:80:http-web-svc/tcp"]
    nginx = pods(m)["nginx"]
    assert nginx.port_named("http-web-svc", "TCP") == 80 and nginx.ips == ()
    assert any("pod/nginx" in w and "no address" in w for w in m.warnings)


def test_a_multi_port_service():
    svc = services(load("kubernetes-docs/multi-port.yaml"))["my-service"]
    assert [str(p) for p in svc.ports] == ["http:80:9376/tcp", "https:443:9377/tcp"]


def test_a_headless_service_and_pods_with_hostname_and_subdomain():
    m = load("kubernetes-docs/headless.yaml")
    assert services(m)["busybox-subdomain"].type == HEADLESS
    p = pods(m)["busybox1"]
    assert (p.hostname, p.subdomain, p.labels) == ("busybox-1", "busybox-subdomain", (("name", "busybox"),))


def test_an_external_name_service_keeps_its_namespace():
    svc = services(load("kubernetes-docs/external-name.yaml"))["my-service"]
    assert (svc.namespace, svc.type, svc.external_name) == ("prod", "ExternalName", "my.database.example.com")


def test_a_service_without_selector_takes_the_endpoint_slice_beside_it():
    m = load("kubernetes-docs/without-selector.yaml")
    obj = next(o for o in m.objects if isinstance(o, ServiceObject))
    assert obj.with_endpoints
    assert [(str(e.address), e.target_port(obj.service.ports[0])) for e in obj.service.endpoints] == [
        ("10.4.5.6", 9376), ("10.1.2.3", 9376)]  # fmt: skip
    assert [o.resource for o in m.objects] == ["service", "endpointslice.discovery.k8s.io"]


def test_the_tutorial_bundle_gives_pods_and_services_and_skips_the_rest():
    m = load("tutorial/app.yaml")
    assert [str(s).split(" (")[0] for s in m.skipped] == ["configmap/api-config skipped", "deployment.apps/api skipped"]
    assert sorted(services(m)) == ["api", "db"]
    api_pods = [p for p in pods(m).values() if ("app", "api") in p.labels]
    assert sorted(str(p.ips[0]) for p in api_pods) == ["10.244.1.2", "10.244.2.2", "10.244.3.2"]
    assert pods(m)["db-0"].port_named("postgres", "TCP") == 5432
    assert not m.warnings


def test_strict_refuses_other_kinds():
    with pytest.raises(ManifestInvalid) as err:
        load("tutorial/app.yaml", strict=True)
    assert "document 2 (Deployment/api): kind" in str(err.value) and len(err.value.errors) == 2


BAD_PORT = b"""\
apiVersion: v1
kind: Service
metadata: {name: fine}
spec:
  selector: {app: fine}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: skipped}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: admin
    port: 8081
    targetPort: 70000
"""


def test_a_bad_port_deep_in_a_document_names_file_document_kind_name_path_and_value():
    with pytest.raises(ManifestInvalid) as err:
        parse_manifest(BAD_PORT, "shop.yaml")
    (one,) = err.value.errors
    assert str(one) == ("shop.yaml: document 3 (Service/web): spec.ports[1].targetPort: 70000: "
                        "must be a port number from 1 to 65535")  # fmt: skip
    assert "nothing of it was applied" in str(err.value)


@pytest.mark.parametrize(
    "text, says",
    [
        (b"kind: Service\napiVersion: v1\nmetadata: {name: a}\nspec: {ports: [{port: 80}], type: Bogus}\n",
         "document 1 (Service/a): spec.type: 'Bogus'"),
        (b"kind: Service\napiVersion: v2\nmetadata: {name: a}\n", "apiVersion: 'v2': svcdns takes Service as v1"),
        (b"kind: Service\napiVersion: v1\nmetadata: {}\n", "metadata.name: None: is required"),
        (b"kind: Pod\napiVersion: v1\nmetadata: {name: p, annotations: {svcdns.io/pod-ips: 'nope'}}\n",
         "metadata.annotations.svcdns.io/pod-ips: 'nope'"),
        (b"kind: Pod\napiVersion: v1\nmetadata: {name: p}\nspec: {containers: [{ports: [{containerPort: 1}, {containerPort: 0}]}]}\n",
         "spec.containers[0].ports[1].containerPort: 0"),
        (b"kind: Service\napiVersion: v1\nmetadata: {name: a}\nspec:\n  ports: [{port: 80}]\n"
         b"  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n",
         "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0"),
        (b"kind: List\napiVersion: v1\nitems:\n- {kind: Service, apiVersion: v1, metadata: {name: a}, spec: {ports: [{port: x}]}}\n",
         "document 1 (Service/a): items[0].spec.ports[0].port: 'x'"),
        (b"a: [\n", "document 1: does not parse"),
        (b"a: &x [1]\nb: *x\n", "aliases"),
        (b"kind: Service\napiVersion: v1\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n"
         b"kind: Service\napiVersion: v1\nmetadata: {name: a}\nspec: {ports: [{port: 81}]}\n", "document 2 (Service/a): metadata.name: 'a': is also"),
    ],
)
def test_errors_name_where_and_what(text, says):
    with pytest.raises(ManifestInvalid) as err:
        parse_manifest(text, "f.yaml")
    assert says in str(err.value), str(err.value)


def test_kubernetes_fields_map_onto_the_service():
    text = b"""{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w", "labels": {"app": "w"}},
      "spec": {"type": "LoadBalancer", "selector": {"app": "w"}, "ports": [{"port": 80, "nodePort": 30080}],
               "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
               "ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"], "publishNotReadyAddresses": true,
               "externalTrafficPolicy": "Local"}}"""
    m = parse_manifest(text, "w.json")
    svc = services(m)["w"]
    assert (svc.type, svc.affinity_seconds, svc.ip_families, svc.publish_not_ready_addresses) == (
        "ClusterIP", 60, ("IPv6", "IPv4"), True)  # fmt: skip
    assert "type LoadBalancer served as ClusterIP" in m.warnings[0]
    with pytest.raises(ManifestInvalid, match="spec.type: 'LoadBalancer'"):
        parse_manifest(text, "w.json", strict=True)


def test_a_running_pod_dump_gives_its_status_addresses_and_readiness():
    text = b"""apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}
status:
  podIP: 10.244.1.5
  podIPs: [{ip: 10.244.1.5}, {ip: "fd00::5"}]
  conditions: [{type: Ready, status: "False"}]
"""
    pod = pods(parse_manifest(text, "p.yaml"))["web-0"]
    assert ([str(ip) for ip in pod.ips], pod.ready, pod.namespace) == (["10.244.1.5", "fd00::5"], False, "shop")


def test_endpoints_v1_and_delete_references():
    text = b"""apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {ports: [{port: 5432}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext}
subsets:
- addresses: [{ip: 192.0.2.42}]
  notReadyAddresses: [{ip: 192.0.2.43}]
  ports: [{port: 5433}]
"""
    svc = services(parse_manifest(text, "e.yaml"))["ext"]
    assert [(str(e.address), e.ready, e.target_port(svc.ports[0])) for e in svc.endpoints] == [
        ("192.0.2.42", True, 5433), ("192.0.2.43", False, 5433)]  # fmt: skip
    refs, skipped = references(text + b"---\n{apiVersion: apps/v1, kind: Deployment, metadata: {name: d}}\n", "e.yaml")
    assert [(r.resource, r.name, r.service) for r in refs] == [("service", "ext", ""), ("endpoints", "ext", "ext")]
    assert [s.resource for s in skipped] == ["deployment.apps"]
