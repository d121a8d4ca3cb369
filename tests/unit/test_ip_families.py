"""IP families of Services that do not give them, as Kubernetes' apiserver resolves them: pods +
Service + service CIDRs -> the endpoints per family a headless Service's DNS answers."""

import pytest

from svcdns.endpoints import Derivation
from svcdns.ipam import Allocator, cidr_families, service_families
from svcdns.labels import parse_selector
from svcdns.model import Endpoint, Service, ServicePort, ValidationError
from svcdns.pod import Pod

V4 = ["10.96.0.0/12"]
V6 = ["fd00:96::/108"]
DUAL = V4 + V6
DUAL6 = V6 + V4  # IPv6 primary


def svc(kind="Headless", selector="app=db", policy="", families=(), endpoints=()):
    return Service("db", type=kind, selector=parse_selector(selector) if selector else (), ip_family_policy=policy,
                   ip_families=families, ports=(ServicePort(5432),), endpoints=endpoints)  # fmt: skip


def answers(service, cidrs):
    """The addresses per family a dual-stack pod gives the Service, as its DNS answers them."""
    d = Derivation()
    d.families = tuple(cidr_families(cidrs))
    d.put_service(service)
    d.put_pod(Pod("db-0", labels=parse_selector("app=db"), ips=("10.244.1.2", "fd00:244::2")), now=0)
    eps = d.apply(service).endpoints
    return {fam: [str(e.address) for e in eps if e.family == fam] for fam in ("IPv4", "IPv6")}


BOTH = {"IPv4": ["10.244.1.2"], "IPv6": ["fd00:244::2"]}
ONLY4 = {"IPv4": ["10.244.1.2"], "IPv6": []}
ONLY6 = {"IPv4": [], "IPv6": ["fd00:244::2"]}


@pytest.mark.parametrize(
    "case, service, cidrs, expected",
    [
        ("no policy, dual-stack config: the primary family only", svc(), DUAL, ONLY4),
        ("no policy, IPv6 primary", svc(), DUAL6, ONLY6),
        ("no policy, single-stack config", svc(), V4, ONLY4),
        ("SingleStack", svc(policy="SingleStack"), DUAL, ONLY4),
        ("PreferDualStack, dual-stack config", svc(policy="PreferDualStack"), DUAL, BOTH),
        ("PreferDualStack, single-stack config", svc(policy="PreferDualStack"), V4, ONLY4),
        ("RequireDualStack, dual-stack config", svc(policy="RequireDualStack"), DUAL, BOTH),
        ("ipFamilies given", svc(families=("IPv6",)), DUAL, ONLY6),
        ("ipFamilies both", svc(families=("IPv4", "IPv6")), DUAL, BOTH),
        ("PreferDualStack adds the other family to one given", svc(policy="PreferDualStack", families=("IPv6",)),
         DUAL, BOTH),
        ("config not known: as given", svc(), [], BOTH),
        ("ClusterIP: its VIPs' families", svc("ClusterIP").with_cluster_ips(["10.96.0.5"]), DUAL, ONLY4),
        ("ClusterIP dual-stack VIPs", svc("ClusterIP").with_cluster_ips(["10.96.0.5", "fd00:96::5"]), DUAL, BOTH),
    ],
)
def test_selector_service_families(case, service, cidrs, expected):
    assert answers(service, cidrs) == expected, case


@pytest.mark.parametrize(
    "case, service, cidrs, expected",
    [
        ("headless with a selector", svc(), DUAL, ("IPv4",)),
        ("headless without a selector: every family (RequireDualStack)", svc(selector=""), DUAL, ("IPv4", "IPv6")),
        ("headless without a selector, IPv6 primary", svc(selector=""), DUAL6, ("IPv6", "IPv4")),
        ("headless without a selector, single-stack", svc(selector=""), V4, ("IPv4",)),
        ("headless without a selector, SingleStack", svc(selector="", policy="SingleStack"), DUAL, ("IPv4",)),
        ("ClusterIP, no policy", svc("ClusterIP"), DUAL, ("IPv4",)),
        ("ClusterIP, PreferDualStack, IPv6 primary", svc("ClusterIP", policy="PreferDualStack"), DUAL6, ("IPv6", "IPv4")),
        ("ClusterIP, PreferDualStack, single-stack", svc("ClusterIP", policy="PreferDualStack"), V4, ("IPv4",)),
    ],
)
def test_service_families(case, service, cidrs, expected):
    assert service_families(service, cidr_families(cidrs)) == expected, case


def test_selectorless_headless_answers_every_explicit_endpoint():
    eps = (Endpoint("10.244.1.2"), Endpoint("fd00:244::2"))
    service = svc(selector="", endpoints=eps)
    assert Derivation().apply(service).endpoints == eps  # explicit endpoints are never filtered


@pytest.mark.parametrize("kind", ["Headless", "ClusterIP"])
def test_require_dual_stack_on_a_single_stack_config_is_refused(kind):
    service = svc(kind, policy="RequireDualStack")
    with pytest.raises(ValidationError) as err:
        Allocator(V4).check_service(service)
    assert (err.value.field, err.value.value) == ("ipFamilyPolicy", "RequireDualStack")
    assert "needs an IPv4 and an IPv6 service CIDR; only IPv4 is configured" in str(err.value)
    Allocator(DUAL).check_service(service)  # fine with both families


def test_require_dual_stack_written_by_hand_does_not_break_the_table():
    d = Derivation()
    d.families = ("IPv4",)
    assert d.families_of(svc(policy="RequireDualStack")) == ("IPv4",)


def test_single_stack_with_two_families_is_refused():
    with pytest.raises(ValidationError) as err:
        svc(policy="SingleStack", families=("IPv4", "IPv6"))
    assert (err.value.field, err.value.value) == ("ipFamilyPolicy", "SingleStack")
    with pytest.raises(ValidationError) as err:
        svc(policy="DualStack")
    assert err.value.field == "ipFamilyPolicy"


def test_dual_stack_vips_for_prefer_dual_stack():
    alloc = Allocator(DUAL)
    service = svc("ClusterIP", policy="PreferDualStack")
    ips = alloc.assign(service.ref, (), service_families(service, alloc.families()))
    assert [ip.version for ip in ips] == [4, 6]
