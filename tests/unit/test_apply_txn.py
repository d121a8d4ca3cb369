"""`svcdns apply -f` on etcd, the pure part: a file's plan and the one transaction it becomes
(svcdns.cli.apply.plan_manifest, svcdns.registry.etcd.batch); no etcd here."""

import json

import pytest

from svcdns.cli.apply import plan_manifest, reads
from svcdns.errors import NotFound, UsageError
from svcdns.ipam import VIPConflict
from svcdns.model import Service, ServicePort, parse_ip
from svcdns.registry.etcd.batch import MAX_TXN_OPS, Read, build_txn
from svcdns.registry.etcd.keys import Keys
from svcdns.registry.manifests import parse_manifest

KEYS = Keys("/p")
CIDRS = ["10.96.0.0/12"]


def doc(kind, name, spec, **meta):
    return json.dumps({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, **meta}, "spec": spec})


def service(name, **spec):
    return doc("Service", name, {"ports": [{"port": 80}], **spec})


def pod(name, ip):
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
                       "spec": {"containers": [{"name": "c", "image": "c"}]}, "status": {"podIP": ip}})  # fmt: skip


def manifest(*docs):
    return parse_manifest(("---\n" + "\n---\n".join(docs)).encode(), "app.yaml")  # YAML of JSON documents


def plan_and_txn(m, services=None, pods=None, vips=None):
    services, pods = services or {}, pods or {}
    skeys, pkeys = reads(m)
    read = Read({k: services.get(k, (None, 0)) for k in skeys}, {k: pods.get(k, (None, 0)) for k in pkeys}, vips or {})
    plan = plan_manifest(m, {k: v[0] for k, v in read.services.items()}, {k: v[0] for k, v in read.pods.items()})
    return plan, build_txn(KEYS, CIDRS, read, plan.services, plan.pods, "app.yaml")


def test_a_new_file_is_one_transaction_of_create_if_absent_compares():
    m = manifest(service("web", selector={"app": "web"}), pod("web-0", "10.244.1.2"), service("db", clusterIP="10.96.0.50"))
    plan, txn = plan_and_txn(m)
    assert set(plan.outcomes.values()) == {"created"}
    # every key read is compared absent (never created), and so is every VIP key it claims
    assert {(c.key, c.absent) for c in txn.compares} == {
        (b"/p/services/default/web", True), (b"/p/services/default/db", True), (b"/p/pods/default/web-0", True),
        (b"/p/vips/" + str(txn.services[("default", "web")].cluster_ips[0]).encode(), True),
        (b"/p/vips/10.96.0.50", True)}  # fmt: skip
    written = sorted(op.key for op in txn.ops)
    assert written == sorted([b"/p/services/default/web", b"/p/services/default/db", b"/p/pods/default/web-0",
                              *(KEYS.vip(s.cluster_ips[0]) for s in txn.services.values())])  # fmt: skip
    assert all(op.value for op in txn.ops)


def test_existing_keys_are_compared_at_the_revision_read_and_keep_their_vips():
    m = manifest(service("web", selector={"app": "web"}, ports=[{"port": 81}]))
    old = Service("web", selector=(("app", "web"),), ports=(ServicePort(80),)).with_cluster_ips([parse_ip("", "10.96.5.5")])
    plan, txn = plan_and_txn(m, services={("default", "web"): (old, 42)})
    assert list(plan.outcomes.values()) == ["configured"]
    assert [(c.key, c.mod) for c in txn.compares] == [(b"/p/services/default/web", 42)]
    assert [op.key for op in txn.ops] == [b"/p/services/default/web"]  # no new VIP key
    assert str(txn.services[("default", "web")].cluster_ips[0]) == "10.96.5.5"


def test_a_taken_vip_in_the_last_document_fails_the_plan_before_any_write():
    m = manifest(service("web"), pod("web-0", "10.244.1.2"), service("db", clusterIP="10.96.0.50"))
    with pytest.raises(VIPConflict, match="10.96.0.50.*default/other"):
        plan_and_txn(m, vips={parse_ip("", "10.96.0.50"): "default/other"})


def test_endpoints_of_a_missing_service_fail_the_file():
    m = manifest(json.dumps({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ghost"},
                             "subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]}))  # fmt: skip
    with pytest.raises(NotFound, match="ghost"):
        plan_and_txn(m)


def test_an_unchanged_file_plans_no_write():
    m = manifest(pod("web-0", "10.244.1.2"))
    first, _ = plan_and_txn(m)
    again = plan_manifest(m, {}, dict(first.pods))
    assert list(again.outcomes.values()) == ["unchanged"] and not again.pods and not again.services


def test_a_file_past_etcds_transaction_limit_fails_before_writing_and_says_to_split():
    m = manifest(*(pod(f"p-{i}", f"10.244.{i // 200}.{i % 200 + 2}") for i in range(MAX_TXN_OPS + 1)))
    with pytest.raises(UsageError) as err:
        plan_and_txn(m)
    assert "app.yaml" in str(err.value) and "129 writes" in str(err.value) and "split it" in str(err.value)
    plan_and_txn(manifest(*(pod(f"p-{i}", f"10.244.0.{i + 2}") for i in range(MAX_TXN_OPS))))  # 128 fit
