"""`svcdns apply -f` and `svcdns delete -f` end to end, in a temporary registry."""

import json
from pathlib import Path

MANIFESTS = Path(__file__).parent.parent / "manifests"
TUTORIAL = str(MANIFESTS / "tutorial" / "app.yaml")



def vips(svcdns):
    code, out, err = svcdns("service", "list", "-A", "-o", "json")
    assert code == 0, err
    return {(s["namespace"], s["name"]): s.get("clusterIP") for s in json.loads(out)["items"]
            if s["namespace"] != "kube-system"}  # (kube-dns: the agent's own, not applied)


def test_apply_creates_then_is_unchanged_then_configures_keeping_the_vip(svcdns):
    code, out, err = svcdns("apply", "-f", TUTORIAL)
    assert code == 0, err
    assert out.splitlines() == [
        "pod/api-7d4b9c6f5-2xkqp created", "pod/api-7d4b9c6f5-9vlmz created", "pod/api-7d4b9c6f5-q8hrt created",
        "pod/db-0 created", "service/api created", "service/db created"]  # fmt: skip
    assert err.splitlines() == [
        f"configmap/api-config skipped ({TUTORIAL}: document 1): svcdns does not take ConfigMap",
        f"deployment.apps/api skipped ({TUTORIAL}: document 2): svcdns does not take Deployment"]  # fmt: skip
    before = vips(svcdns)
    code, out, _ = svcdns("endpoint", "list", "api", "-o", "json")
    assert sorted(e["address"] for e in json.loads(out)["endpoints"]) == ["10.244.1.2", "10.244.2.2", "10.244.3.2"]

    files = {p: p.stat().st_mtime_ns for p in svcdns.root.rglob("*.yaml")}
    code, out, _ = svcdns("apply", "-f", TUTORIAL)
    assert code == 0 and set(line.split()[1] for line in out.splitlines()) == {"unchanged"}
    assert {p: p.stat().st_mtime_ns for p in svcdns.root.rglob("*.yaml")} == files  # nothing written

    changed = svcdns.tmp / "app.yaml"
    changed.write_text(Path(TUTORIAL).read_text().replace("port: 5432\n", "port: 5433\n"))
    code, out, _ = svcdns("apply", "-f", str(changed))
    assert "service/db configured" in out.splitlines() and "pod/db-0 unchanged" in out
    assert vips(svcdns) == before
    code, out, _ = svcdns("service", "get", "db", "-o", "json")
    assert json.loads(out)["ports"][0]["port"] == 5433


def test_a_bad_port_deep_in_a_file_names_it_and_writes_nothing_of_that_file(svcdns):
    bad = svcdns.tmp / "bad.yaml"
    bad.write_text(Path(TUTORIAL).read_text().replace(
        "  - name: postgres\n    port: 5432\n    targetPort: postgres\n",
        "  - name: postgres\n    port: 5432\n    targetPort: postgres\n  - name: admin\n    port: 8081\n    targetPort: 99999\n"))  # fmt: skip
    good = MANIFESTS / "kubernetes-docs" / "multi-port.yaml"
    code, out, err = svcdns("apply", "-f", str(bad), "-f", str(good))
    assert code == 2
    assert f"{bad}: document 8 (Service/db): spec.ports[1].targetPort: 99999: must be a port number" in err
    assert "nothing of it was applied" in err
    assert out == "service/my-service created\n"  # the other file applies
    assert vips(svcdns).keys() == {("default", "my-service")}
    assert not (svcdns.root / "pods").exists() or not list((svcdns.root / "pods").rglob("*.yaml"))


def test_a_write_refused_part_way_undoes_the_file(svcdns):
    svcdns("service", "add", "taken", "--vip", "10.96.0.50", "--port", "80")
    text = Path(TUTORIAL).read_text() + "---\napiVersion: v1\nkind: Service\nmetadata: {name: z}\nspec: {clusterIP: 10.96.0.50, ports: [{port: 80}]}\n"  # fmt: skip
    clash = svcdns.tmp / "clash.yaml"
    clash.write_text(text)
    code, out, err = svcdns("apply", "-f", str(clash))
    assert code != 0 and "nothing of it was applied" in err and out == ""
    assert vips(svcdns).keys() == {("default", "taken")}
    assert svcdns("pod", "list", "-o", "json")[1].count('"name"') == 0


def test_endpoint_slices_of_a_service_without_selector_and_delete(svcdns):
    docs = MANIFESTS / "kubernetes-docs"
    code, out, err = svcdns("apply", "-f", str(docs / "without-selector.yaml"))
    assert out.splitlines() == ["service/my-service created", "endpointslice.discovery.k8s.io/my-service-1 created"]
    code, out, _ = svcdns("endpoint", "list", "my-service", "-o", "json")
    assert [(e["address"], e["ports"]["http"]) for e in json.loads(out)["endpoints"]] == [("10.4.5.6", 9376), ("10.1.2.3", 9376)]
    code, out, err = svcdns("delete", "-f", str(docs / "without-selector.yaml"))
    assert code == 0 and out.splitlines() == ['service/my-service deleted',
                                              'endpointslice.discovery.k8s.io/my-service-1 deleted']  # fmt: skip
    code, _, err = svcdns("delete", "-f", str(docs / "without-selector.yaml"))
    assert code == 1 and "not found" in err
    assert svcdns("delete", "-f", str(docs / "without-selector.yaml"), "--ignore-not-found")[0] == 0


def test_apply_a_directory_and_stdin_and_strict(svcdns, monkeypatch):
    import io

    code, out, err = svcdns("apply", "-f", str(MANIFESTS / "kubernetes-docs"))
    assert code == 0, err
    assert "service/nginx-service created" in out and "service/busybox-subdomain created" in out
    assert "pod/busybox1 (" in err and "no address" in err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(Path(TUTORIAL).read_bytes())))
    code, out, err = svcdns("apply", "-f", "-", "--strict")
    assert code == 2 and "<stdin>: document 1 (ConfigMap/api-config): kind" in err and out == ""
    assert svcdns("apply", "-f", str(svcdns.tmp / "nope.yaml"))[2].endswith("no such file or directory\n")


def test_applying_again_writes_spec_only_and_keeps_the_probers_status(svcdns):
    from svcdns.pod import PodStatus, readiness
    from svcdns.registry.files import FileRegistry

    code, _, err = svcdns("apply", "-f", TUTORIAL)
    assert code == 0, err
    reg = FileRegistry(svcdns.root)
    probed = [p for p in reg.list_pods() if p.readiness_probes]
    assert probed, "the tutorial's api pods carry readinessProbes"
    records = {p.key: (svcdns.root / f"pods/{p.namespace}/{p.name}.yaml").read_bytes() for p in probed}
    # what the agent's prober writes once the probes pass: the statuses, never the records
    reg.set_pod_statuses({p.key: PodStatus(True) for p in probed})
    code, out, _ = svcdns("apply", "-f", TUTORIAL)
    assert code == 0 and set(line.split()[1] for line in out.splitlines()) == {"unchanged"}, out
    again = FileRegistry(svcdns.root)
    statuses = again.pod_statuses()
    assert all(readiness(again.get_pod(*p.key), statuses.get(p.key))[0] for p in probed)
    # a changed manifest replaces the record (spec), and the pod stays ready: its status is untouched
    changed = Path(TUTORIAL).read_text().replace("path: /healthz", "path: /ready")
    assert changed != Path(TUTORIAL).read_text(), "the tutorial's probes get /healthz"
    (svcdns.tmp / "changed.yaml").write_text(changed)
    code, out, err = svcdns("apply", "-f", str(svcdns.tmp / "changed.yaml"))
    assert code == 0 and "configured" in out, (out, err)
    assert any((svcdns.root / f"pods/{k[0]}/{k[1]}.yaml").read_bytes() != v for k, v in records.items())
    after = FileRegistry(svcdns.root)
    assert after.pod_statuses() == statuses
    assert "reason" not in "".join(
        (svcdns.root / f"pods/{k[0]}/{k[1]}.yaml").read_text() for k in records)


def test_a_load_balancer_service_is_served_as_cluster_ip_with_a_warning_and_strict_refuses_it(svcdns):
    manifest = svcdns.tmp / "lb.yaml"
    manifest.write_text("""apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
""")
    code, out, err = svcdns("apply", "-f", str(manifest), "--strict")
    assert code == 2 and out == "" and "spec.type: 'LoadBalancer'" in err and "lb.yaml: document 1 (Service/web)" in err, err
    assert ("default", "web") not in vips(svcdns)  # nothing of the file applied
    code, out, err = svcdns("apply", "-f", str(manifest))
    assert code == 0 and out == "service/web created\n" and "type LoadBalancer served as ClusterIP" in err, (out, err)
    assert json.loads(svcdns("service", "get", "web", "-o", "json")[1])["type"] == "ClusterIP"
