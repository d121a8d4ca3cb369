"""Pods to endpoints (EndpointSlice semantics) as a table, and the selector index."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from svcdns.endpoints import Derivation, SelectorIndex, derive
from svcdns.labels import labels_of, parse_selector
from svcdns.model import Service, ServicePort, ValidationError
from svcdns.pod import ContainerPort, Pod


def pod(name, ip="10.244.1.2", labels="app=web", ns="default", **kw):
    ips = tuple(ip.split()) if ip else ()
    return Pod(name, namespace=ns, labels=parse_selector(labels) if labels else (), ips=ips, **kw)


def web(**kw):
    kw.setdefault("selector", parse_selector("app=web"))
    kw.setdefault("ports", (ServicePort(80, target_port=8080),))
    return Service("web", **kw)


def headless(name, selector, **kw):
    return Service(name, type="Headless", selector=parse_selector(selector), **kw)


def rows(eps):
    """Each endpoint as the text a user reads in ``svcdns endpoint list``."""
    out = []
    for e in eps:
        flags = "".join(c for c, on in (("R", e.ready), ("S", e.serving), ("T", e.terminating)) if on)
        extra = f" host={e.hostname}" if e.hostname else ""
        extra += "".join(f" {n or '-'}={p}" for n, p in e.ports)
        out.append(f"{e.address} {flags or '-'} pod={e.pod}{extra}")
    return out


@pytest.mark.parametrize(
    "service, pods, expected",
    [
        ("labels match", [pod("a"), pod("b", "10.244.2.2")], ["10.244.1.2 RS pod=a", "10.244.2.2 RS pod=b"]),
        ("a label differs", [pod("a"), pod("b", "10.244.2.2", "app=db")], ["10.244.1.2 RS pod=a"]),
        ("extra labels are fine", [pod("a", labels="app=web,tier=front")], ["10.244.1.2 RS pod=a"]),
        ("another namespace", [pod("a", ns="prod")], []),
        ("no address yet", [pod("a", ip="")], []),
        ("not ready", [pod("a", ready=False)], ["10.244.1.2 - pod=a"]),
        ("terminating", [pod("a", terminating=True)], ["10.244.1.2 ST pod=a"]),
        ("not ready and terminating", [pod("a", ready=False, terminating=True)], ["10.244.1.2 T pod=a"]),
        ("dual-stack pod, single-stack Service", [pod("a", "10.244.1.2 fd00::2")], ["10.244.1.2 RS pod=a"]),
        ("hostname without subdomain", [pod("a", hostname="web-0")], ["10.244.1.2 RS pod=a"]),
        ("hostname, subdomain naming another", [pod("a", hostname="web-0", subdomain="db")], ["10.244.1.2 RS pod=a"]),
        ("hostname, subdomain naming it", [pod("a", hostname="web-0", subdomain="web")],
         ["10.244.1.2 RS pod=a host=web-0"]),
    ],
)
def test_derivation(service, pods, expected):
    svc = web(ip_families=("IPv4",))
    assert rows(derive(svc, pods)) == expected, service


def test_dual_stack_service_takes_both_addresses():
    svc = web(ip_families=("IPv4", "IPv6"))
    assert rows(derive(svc, [pod("a", "10.244.1.2 fd00::2")])) == ["10.244.1.2 RS pod=a", "fd00::2 RS pod=a"]


def test_publish_not_ready_addresses_makes_every_pod_ready():
    svc = web(publish_not_ready_addresses=True)
    assert rows(derive(svc, [pod("a", ready=False), pod("b", "10.244.2.2", terminating=True)])) == [
        "10.244.1.2 R pod=a",
        "10.244.2.2 RST pod=b",
    ]


def test_named_target_port_resolves_per_pod():
    svc = web(ports=(ServicePort(80, name="http", target_port_name="http"),))
    a = pod("a", ports=(ContainerPort(8080, "http"),))
    b = pod("b", "10.244.2.2", ports=(ContainerPort(9090, "http"),))
    c = pod("c", "10.244.3.2", ports=(ContainerPort(9090, "metrics"),))  # no 'http': cannot serve it
    udp = pod("d", "10.244.4.2", ports=(ContainerPort(8080, "http", "UDP"),))  # the name, another protocol
    assert rows(derive(svc, [a, b, c, udp])) == ["10.244.1.2 RS pod=a http=8080", "10.244.2.2 RS pod=b http=9090"]
    targets = svc.with_endpoints(derive(svc, [a, b])).targets(svc.ports[0], "IPv4")
    assert targets == (("10.244.1.2", 8080), ("10.244.2.2", 9090))


def test_a_service_without_selector_selects_nothing():
    assert derive(web(selector=()), [pod("a")]) == ()


@pytest.mark.parametrize("text", ["app", "app!=web", "App Name=x", "a=" + "x" * 64, "-a=b"])
def test_bad_selectors_name_the_field(text):
    with pytest.raises(ValidationError, match="selector"):
        parse_selector(text)


def test_label_keys_may_carry_a_prefix():
    assert labels_of({"app.kubernetes.io/name": "web"}) == (("app.kubernetes.io/name", "web"),)
    with pytest.raises(ValidationError, match="prefix"):
        labels_of({"Bad_Prefix/name": "web"})


def test_index_finds_exactly_the_services_a_pod_change_touches():
    idx = SelectorIndex()
    front = headless("front", "app=web,tier=front")
    back = headless("back", "app=web,tier=back")
    other = headless("front", "app=web,tier=front", namespace="prod")
    for svc in (front, back, other, Service("manual", type="Headless")):
        idx.put(svc)
    old = pod("a", labels="app=web,tier=front")
    new = pod("a", labels="app=web,tier=back")
    assert idx.affected(None, old) == {("default", "front")}
    assert idx.affected(old, new) == {("default", "front"), ("default", "back")}
    assert idx.affected(new, None) == {("default", "back")}
    idx.put(headless("back", "app=db"))  # its selector changed
    assert idx.affected(None, new) == set()
    idx.remove(("default", "front"))
    assert idx.affected(old, None) == set()


def test_two_pods_claiming_one_address_give_one_endpoint_the_readier():
    # a stale record beside its replacement: before, the Service refused its duplicate address
    stale = pod("old", ready=False)
    fresh = pod("new")
    assert rows(derive(web(), [stale, fresh])) == ["10.244.1.2 RS pod=new"]
    assert web().with_endpoints(derive(web(), [stale, fresh])).endpoints[0].pod == "new"


def test_an_external_name_service_derives_nothing():
    svc = Service("ext", type="ExternalName", external_name="example.org", selector=parse_selector("app=web"))
    assert derive(svc, [pod("a")]) == ()


def test_derivation_recomputes_only_what_a_pod_change_touches():
    d = Derivation()
    front, back = headless("front", "app=web,tier=front"), headless("back", "app=web,tier=back")
    d.put_service(front)
    d.put_service(back)
    a = pod("a", labels="app=web,tier=front")
    assert d.put_pod(a, now=0) == {("default", "front")}
    assert d.put_pod(a, now=0) == set()  # unchanged: nothing to do
    assert [e.pod for e in d.apply(front).endpoints] == ["a"] and d.apply(back).endpoints == ()
    moved = pod("a", labels="app=web,tier=back")
    assert d.put_pod(moved, now=0) == {("default", "front"), ("default", "back")}
    assert d.apply(front).endpoints == () and [e.pod for e in d.apply(back).endpoints] == ["a"]
    assert d.remove_pod(("default", "a")) == {("default", "back")}
    assert d.apply(back).endpoints == ()


def test_a_pod_past_its_deadline_is_gone():
    d = Derivation()
    d.put_service(web())
    dying = pod("a", deletion_deadline=100.0)
    assert d.put_pod(dying, now=50) == {("default", "web")}
    assert rows(d.apply(web()).endpoints) == ["10.244.1.2 ST pod=a"]
    assert d.next_deadline() == 100.0 and d.expire(99) == set()
    assert d.expire(100) == {("default", "web")} and d.apply(web()).endpoints == () and d.next_deadline() is None
    assert d.put_pod(dying, now=101) == set()  # read again after its deadline: still gone


def test_a_derived_endpoint_equals_the_one_a_user_would_write():
    """Derivation builds endpoints without checking the pod's fields again: they must be the same
    values, sorted ports included, as the validating constructor makes."""
    from svcdns.model import Endpoint

    svc = Service("web", selector=parse_selector("app=web"), ip_families=("IPv4",),
                  ports=(ServicePort(443, name="https", target_port_name="tls"),
                         ServicePort(80, name="http", target_port_name="web")))  # fmt: skip
    p = pod("web-0", hostname="web-0", subdomain="web", terminating=True,
            ports=(ContainerPort(8080, "web"), ContainerPort(8443, "tls")))  # fmt: skip
    (got,) = derive(svc, [p])
    want = Endpoint("10.244.1.2", ready=False, serving=True, terminating=True, hostname="web-0",
                    ports={"https": 8443, "http": 8080}, pod="web-0")  # fmt: skip
    assert got == want and hash(got) == hash(want) and got.ports == (("http", 8080), ("https", 8443))
    assert Derivation().apply(svc).endpoints == ()


_KEYS = st.sampled_from(["app", "tier", "example.com/team", "v"])
_VALUES = st.sampled_from(["", "web", "db", "1"])


@given(st.dictionaries(_KEYS, _VALUES, max_size=4), st.dictionaries(_KEYS, _VALUES, max_size=4))
def test_matches_is_every_selector_pair_among_the_labels(selector, labels):
    from svcdns.labels import matches

    want = bool(selector) and all(labels.get(k) == v for k, v in selector.items())
    assert matches(labels_of(selector), labels_of(labels)) is want
