"""The etcd registry's state machine, without etcd: keys in, a ServiceTable out."""

import ipaddress
import json

from svcdns.registry.etcd.state import EtcdState, Keys

KEYS = Keys("/svcdns")


def doc(name, **kw):
    return json.dumps({"name": name, "ports": [{"port": 80}], **kw}).encode()


def state_with(*puts):
    state = EtcdState(KEYS)
    state.begin_full_read()
    for i, (key, value) in enumerate(puts, 1):
        state.apply_put(key, value, i)
    state.end_full_read()
    state.rebuild(len(puts))
    return state


def test_the_key_schema():
    assert KEYS.service(("ns", "web")) == b"/svcdns/services/ns/web"
    assert KEYS.vip(ipaddress.ip_address("10.96.0.5")) == b"/svcdns/vips/10.96.0.5"
    assert KEYS.parse(b"/svcdns/services/ns/web") == ("service", ("ns", "web"))
    assert KEYS.parse(b"/svcdns/vips/fd00::5") == ("vip", ipaddress.ip_address("fd00::5"))
    assert KEYS.parse(b"/svcdns/config") == ("config", None)
    for meaningless in (b"/svcdns/vips/not-an-ip", b"/svcdns/services/only-ns", b"/svcdns/other", b"/elsewhere/config"):
        assert KEYS.parse(meaningless) is None


def test_a_document_with_its_vip_key_is_in_the_table():
    state = state_with(
        (KEYS.service(("default", "web")), doc("web", clusterIP="10.96.0.5")),
        (KEYS.vip(ipaddress.ip_address("10.96.0.5")), b"default/web"),
    )
    snap = state.current()
    assert snap.synced and snap.revision == 2 and not snap.errors
    assert [str(ip) for ip in snap.table.get("default", "web").cluster_ips] == ["10.96.0.5"]


def test_a_document_without_vip_waits_for_adoption():
    state = state_with((KEYS.service(("default", "hand")), doc("hand")))
    assert ("default", "hand") not in state.table
    assert [k for k, _ in state.pending()] == [("default", "hand")]


def test_a_vip_held_by_another_service_is_an_error_and_changes_nothing():
    state = state_with(
        (KEYS.service(("default", "web")), doc("web", clusterIP="10.96.0.5")),
        (KEYS.vip(ipaddress.ip_address("10.96.0.5")), b"default/other"),
    )
    assert ("default", "web") not in state.table
    assert "held by Service default/other" in state.current().errors["/svcdns/services/default/web"]


def test_a_bad_put_keeps_the_last_good_version_and_a_delete_removes_it():
    web = KEYS.service(("default", "web"))
    vip = KEYS.vip(ipaddress.ip_address("10.96.0.5"))
    state = state_with((web, doc("web", clusterIP="10.96.0.5")), (vip, b"default/web"))
    good = state.table.get("default", "web")
    for bad in (b"{not json", b"[" * 100_000, doc("web", clusterIP="10.96.0.5", ports=[{"port": 0}]), doc("other")):
        state.apply_put(web, bad, 10)
        assert not state.rebuild() and state.table.get("default", "web") == good
        assert state.current().errors["/svcdns/services/default/web"]
    state.apply_delete(web, 11)
    state.apply_delete(vip, 12)
    assert state.rebuild() and ("default", "web") not in state.table and state.revision == 12
    assert state.orphans() == []


def test_a_full_read_forgets_what_it_does_not_bring():
    a, b = KEYS.service(("default", "a")), KEYS.service(("default", "b"))
    state = state_with((a, doc("a", type="Headless", ports=[])), (b, doc("b", type="Headless", ports=[])))
    assert len(state.table) == 2
    state.begin_full_read()
    state.apply_put(a, doc("a", type="Headless", ports=[]), 1)
    state.end_full_read()
    assert state.rebuild(5) and list(state.table.services) == [("default", "a")]


def test_an_orphaned_vip_key_is_found_and_cidrs_come_from_the_config_key():
    state = state_with(
        (KEYS.config, b'{"serviceCIDRs": ["10.100.0.0/16"]}'),
        (KEYS.vip(ipaddress.ip_address("10.100.0.9")), b"default/gone"),
    )
    assert state.cidrs == ["10.100.0.0/16"]
    assert [str(ip) for ip in state.orphans()] == ["10.100.0.9"]
    assert state.allocator().holder(ipaddress.ip_address("10.100.0.9")) == "default/gone"


def test_an_etcd_of_another_history_is_told_apart():
    """A watch resumes only on the etcd the keys came from: the same cluster ID, its revision not
    behind the one held. A wiped etcd (revisions from 1) or another cluster is read again in full,
    and that read's revision becomes the state's, lower than before."""
    a = KEYS.service(("default", "a"))
    state = EtcdState(KEYS)
    state.begin_full_read(40, cluster_id=0xABC)
    state.apply_put(a, doc("a", type="Headless", ports=[]), 30)
    state.end_full_read()
    state.rebuild(40)
    assert state.replaced(0xABC, 40) is None and state.replaced(0xABC, 95) is None
    assert state.replaced(0xABC, 3) == "etcd's revision went back from 40 to 3"
    assert state.replaced(0xDEF, 95) == "etcd's cluster ID changed from abc to def"
    state.begin_full_read(3, cluster_id=0xDEF)
    state.end_full_read()
    assert state.rebuild(3) and len(state.table) == 0 and state.revision == 3
    assert state.replaced(0xDEF, 3) is None


def test_an_entry_with_an_address_inside_the_service_cidrs_is_reported_and_the_last_good_version_stays():
    web, pod = KEYS.service(("default", "web")), KEYS.pod(("default", "web-0"))
    state = state_with(
        (KEYS.config, b'{"serviceCIDRs": ["10.100.0.0/16"]}'),
        (web, doc("web", type="Headless", ports=[], endpoints=["10.0.1.5"])),
    )
    good = state.table.get("default", "web")
    state.apply_put(web, doc("web", type="Headless", ports=[], endpoints=["10.0.1.5", "10.100.0.7"]), 5)
    state.apply_put(pod, json.dumps({"name": "web-0", "podIPs": ["10.100.3.3"]}).encode(), 6)
    state.rebuild(6)
    assert state.table.get("default", "web") == good
    errors = state.current().errors
    assert errors["/svcdns/services/default/web"] == (
        "/svcdns/services/default/web: field 'endpoints[1].address': value '10.100.0.7': is inside the "
        "service CIDR 10.100.0.0/16, where only VIPs live; an endpoint must lie outside it"
    )
    assert "'podIPs[0]': value '10.100.3.3': is inside the service CIDR 10.100.0.0/16" in errors["/svcdns/pods/default/web-0"]


def test_a_bad_pod_value_is_reported_until_it_is_fixed_or_deleted():
    """current() reads the refused pods from their own set (not every pod entry): the report must
    still follow each pod's latest value, through a full read that drops it too."""
    key = KEYS.pod(("default", "web-0"))
    good = json.dumps({"name": "web-0", "podIPs": ["10.244.1.5"]}).encode()
    bad = json.dumps({"name": "web-0", "podIPs": ["10.244.1.500"]}).encode()
    state = state_with((key, bad))
    assert "'podIPs[0]': value '10.244.1.500'" in state.current().errors["/svcdns/pods/default/web-0"]
    state.apply_put(key, good, 5)
    assert not state.current().errors
    state.apply_put(key, bad, 6)
    assert list(state.current().errors) == ["/svcdns/pods/default/web-0"]
    state.apply_delete(key, 7)
    assert not state.current().errors
    state.apply_put(key, bad, 8)
    state.begin_full_read(9)
    state.end_full_read()
    assert not state.current().errors


def test_a_bad_service_value_is_reported_until_it_is_fixed_or_deleted():
    key, raw = ("default", "web"), KEYS.service(("default", "web"))
    vip = (KEYS.vip(ipaddress.ip_address("10.96.0.5")), b"default/web")
    state = state_with((raw, doc("web", clusterIP="10.96.0.5", ports=[{"port": 0}])), vip)
    assert "ports[0].port" in state.current().errors["/svcdns/services/default/web"]
    state.apply_put(raw, doc("web", clusterIP="10.96.0.5"), 5)
    state.rebuild()
    assert not state.current().errors and state.table.get(*key)
    state.refuse(key, "/svcdns/services/default/web: no VIP left")  # what the registry's adopt() records
    assert state.current().errors == {"/svcdns/services/default/web": "/svcdns/services/default/web: no VIP left"}
    state.apply_delete(raw, 6)
    assert not state.current().errors
