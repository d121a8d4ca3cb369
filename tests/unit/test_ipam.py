"""VIP allocation: stable, never twice, reserved addresses kept back, IPv6, exhaustion, persistence."""

import ipaddress

import pytest

from svcdns.errors import UsageError
from svcdns.ipam import AllocationError, Allocator, VIPConflict, parse_cidr
from svcdns.registry.files.store import AllocationStore

ip = ipaddress.ip_address


def test_allocations_are_unique_and_skip_network_broadcast_and_reserved():
    alloc = Allocator(["10.0.0.0/28"])
    got = [alloc.assign(f"default/s{i}")[0] for i in range(12)]  # 16 - network - broadcast - .1 - .10
    assert len(set(got)) == 12
    assert ip("10.0.0.0") not in got and ip("10.0.0.15") not in got and ip("10.0.0.1") not in got
    assert ip("10.0.0.10") not in got  # the cluster DNS address
    with pytest.raises(AllocationError, match="no free VIP left in 10.0.0.0/28"):
        alloc.assign("default/one-too-many")


def test_release_makes_room_and_stability_of_current():
    alloc = Allocator(["10.0.0.0/29"])
    first = alloc.assign("default/a")
    assert alloc.assign("default/a") == first  # asking again changes nothing
    for i in range(4):
        alloc.assign(f"default/b{i}")
    with pytest.raises(AllocationError):
        alloc.assign("default/c")
    alloc.release("default/a")
    assert alloc.assign("default/c") == first


def test_requested_vip_conflicts_name_the_holder():
    alloc = Allocator(["10.96.0.0/12"])
    alloc.assign("default/fixed", (ip("10.96.0.50"),))
    with pytest.raises(VIPConflict) as err:
        alloc.assign("default/other", (ip("10.96.0.50"),))
    assert err.value.holder == "default/fixed"
    assert "10.96.0.50" in str(err.value) and "default/fixed" in str(err.value)
    with pytest.raises(VIPConflict, match="outside the service CIDRs"):
        alloc.assign("default/out", (ip("192.168.1.1"),))
    # the reserved first address can be requested explicitly (the cluster DNS service)
    assert alloc.assign("kube-system/dns", (ip("10.96.0.1"),)) == (ip("10.96.0.1"),)


def test_dynamic_allocations_avoid_the_static_band():
    alloc = Allocator(["10.96.0.0/24"])
    got = alloc.assign("default/a")[0]
    assert int(got) - int(ip("10.96.0.0")) >= 16  # /24: the first 16 are the static band


def test_changing_the_requested_vip_moves_the_service_and_frees_the_old_one():
    alloc = Allocator(["10.96.0.0/12"])
    alloc.assign("default/a", (ip("10.96.0.50"),))
    alloc.assign("default/a", (ip("10.96.0.51"),))
    assert alloc.holder(ip("10.96.0.50")) is None
    assert alloc.holder(ip("10.96.0.51")) == "default/a"


def test_ipv6_and_dual_stack():
    alloc = Allocator(["10.96.0.0/12", "fd00:96::/108"])
    v6 = alloc.assign("default/six", families=("IPv6",))
    assert v6[0] in ipaddress.ip_network("fd00:96::/108")
    dual = alloc.assign("default/dual", families=("IPv4", "IPv6"))
    assert [a.version for a in dual] == [4, 6]
    with pytest.raises(UsageError, match="no IPv6 service CIDR"):
        Allocator(["10.96.0.0/12"]).assign("default/x", families=("IPv6",))
    # a /64 is usable: only its first 2^20 addresses are handed out
    assert Allocator(["fd00:1::/64"]).assign("default/big", families=("IPv6",))[0] in ipaddress.ip_network(
        "fd00:1::/64"
    )


def test_bad_cidrs_are_refused_clearly():
    with pytest.raises(UsageError, match="10.96.0.1/12"):
        parse_cidr("10.96.0.1/12")
    with pytest.raises(UsageError, match="too small"):
        parse_cidr("10.0.0.0/31")
    with pytest.raises(UsageError, match="overlap"):
        Allocator(["10.96.0.0/12", "10.96.0.0/16"])


def test_ten_thousand_allocations_are_distinct():
    alloc = Allocator(["10.96.0.0/12"])
    got = {alloc.assign(f"default/s{i}")[0] for i in range(10_000)}
    assert len(got) == 10_000


def test_store_persists_allocations(tmp_path):
    store = AllocationStore.load(tmp_path, ["10.96.0.0/12", "fd00:96::/108"])
    alloc = store.allocator()
    from svcdns.registry.files.store import Allocation

    store.services["default/a"] = Allocation(alloc.assign("default/a"), "default/a.yaml")
    store.services["default/b"] = Allocation(alloc.assign("default/b", families=("IPv4", "IPv6")), "b.json")
    store.save()
    again = AllocationStore.load(tmp_path)  # no CIDRs given: the recorded ones
    assert again.cidrs == ["10.96.0.0/12", "fd00:96::/108"]
    assert again.services == store.services
    restored = again.allocator()
    assert restored.assign("default/a") == store.services["default/a"].ips
    assert restored.assign("default/c")[0] not in {
        store.services["default/a"].ips[0],
        store.services["default/b"].ips[0],
    }


def test_corrupt_store_is_a_clear_error(tmp_path):
    (tmp_path / ".svcdns").mkdir()
    (tmp_path / ".svcdns" / "allocations.json").write_text("{not json")
    with pytest.raises(Exception, match="cannot read the VIP allocation store"):
        AllocationStore.load(tmp_path)


def test_the_cluster_dns_address_is_never_allocated_automatically_but_can_be_requested():
    """The agent answers DNS on the 10th address of the first service CIDR (10.96.0.10): a Service
    given it automatically would take every pod's DNS traffic."""
    alloc = Allocator(["10.96.0.0/24", "10.97.0.0/28"])
    got = {alloc.assign(f"default/s{i}")[0] for i in range(252)}  # every address of the /24 but .1 and .10
    assert ip("10.96.0.10") not in got and ip("10.96.0.1") not in got
    with pytest.raises(AllocationError):
        alloc.assign("default/one-too-many")
    assert alloc.assign("kube-system/kube-dns", (ip("10.96.0.10"),)) == (ip("10.96.0.10"),)
    assert alloc.assign("default/second-cidr", (ip("10.97.0.10"),)) == (ip("10.97.0.10"),)
    assert Allocator(["10.98.0.0/28"]).pools[0].capacity() == 12


def test_endpoints_and_pod_addresses_inside_the_service_cidrs_are_refused():
    from svcdns.model import Endpoint, Service, ServicePort, ValidationError
    from svcdns.pod import Pod

    alloc = Allocator(["10.96.0.0/12", "fd00:96::/108"])
    web = Service("web", ports=(ServicePort(80),), endpoints=(Endpoint("10.0.1.5"), Endpoint("10.96.1.1")))
    with pytest.raises(ValidationError, match=r"endpoints\[1\]\.address: '10\.96\.1\.1': is inside the service CIDR 10\.96\.0\.0/12"):
        alloc.check_endpoints(web)
    alloc.check_endpoints(Service("ok", ports=(ServicePort(80),), endpoints=(Endpoint("10.112.0.1"),)))
    with pytest.raises(ValidationError, match=r"podIPs\[1\]: 'fd00:96::5': is inside the service CIDR fd00:96::/108"):
        alloc.check_pod(Pod("p", ips=("10.0.1.7", "fd00:96::5")))
    alloc.check_pod(Pod("q", ips=("10.0.1.7",)))
