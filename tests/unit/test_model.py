"""The Service model: the port syntax, validation errors that name field and value, the document form."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from svcdns.errors import MAX_VALUE, UsageError
from svcdns.model import (
    Endpoint,
    Service,
    ServicePort,
    ValidationError,
    parse_port_spec,
)
from svcdns.registry.documents import from_document, to_document


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("80", ServicePort(80, "TCP", 80, "")),
        ("80/udp", ServicePort(80, "UDP", 80, "")),
        ("http:80", ServicePort(80, "TCP", 80, "http")),
        ("http:80:8080/tcp", ServicePort(80, "TCP", 8080, "http")),
        ("80:8080", ServicePort(80, "TCP", 8080, "")),
        ("dns:53/UDP", ServicePort(53, "UDP", 53, "dns")),
        ("diameter:3868/sctp", ServicePort(3868, "SCTP", 3868, "diameter")),
    ],
)
def test_port_spec_parses(spec, expected):
    assert parse_port_spec(spec) == expected


@pytest.mark.parametrize(
    "spec, says",
    [
        ("", "expected [name:]port"),
        ("70000", "1 to 65535"),
        ("0", "1 to 65535"),
        ("80/icmp", "unknown protocol 'icmp'"),
        ("http:", "expected [name:]port"),
        ("http:80:90:100", "expected [name:]port"),
        ("HTTP:80", "RFC 1123 DNS label"),
        ("-a:80", "RFC 1123 DNS label"),
        ("x" * 64 + ":80", "RFC 1123 DNS label"),
        ("80:0", "1 to 65535"),
    ],
)
def test_port_spec_errors_name_the_value(spec, says):
    with pytest.raises(ValidationError) as err:
        parse_port_spec(spec)
    assert says in str(err.value)
    assert err.value.value == spec


_port_names = st.from_regex(r"\A[a-z]([a-z0-9]{0,13})\Z")


@given(
    name=st.one_of(st.just(""), _port_names),
    port=st.integers(1, 65535),
    target=st.integers(1, 65535),
    proto=st.sampled_from(["tcp", "udp", "sctp"]),
)
def test_port_spec_round_trips(name, port, target, proto):
    p = ServicePort(port, proto, target, name)
    assert parse_port_spec(str(p)) == p


def _svc(**kw):
    kw.setdefault("name", "web")
    kw.setdefault("ports", (ServicePort(80, name="http"),))
    return Service(**kw)


@pytest.mark.parametrize(
    "kw, field, value",
    [
        ({"name": "Web"}, "name", "Web"),
        ({"name": "a" * 64}, "name", "a" * 64),
        ({"name": "-web"}, "name", "-web"),
        ({"namespace": "my_ns"}, "namespace", "my_ns"),
        ({"type": "LoadBalancer"}, "type", "LoadBalancer"),
        ({"ports": (ServicePort(80, name="a"), ServicePort(81, name="a"))}, "ports[1].name", "a"),
        ({"ports": (ServicePort(80, name="a"), ServicePort(80, name="b"))}, "ports[1].port", 80),
        ({"ports": (ServicePort(80), ServicePort(81, name="b"))}, "ports[0].name", ""),
        ({"ports": ()}, "ports", []),
        ({"cluster_ips": ("10.96.0.300",)}, "clusterIPs[0]", "10.96.0.300"),
        ({"cluster_ips": ("224.0.0.1",)}, "clusterIPs[0]", "224.0.0.1"),
        ({"session_affinity": "Cookie"}, "sessionAffinity", "Cookie"),
        ({"session_affinity": "ClientIP", "affinity_timeout": 0}, "sessionAffinityTimeoutSeconds", 0),
        ({"endpoints": (Endpoint("10.0.0.1"), Endpoint("10.0.0.1"))}, "endpoints[1].address", "10.0.0.1"),
        (
            {"cluster_ips": ("10.96.0.5",), "endpoints": (Endpoint("fd00::5"),)},
            "endpoints[0].address",
            "fd00::5",
        ),
        ({"type": "ExternalName", "ports": ()}, "externalName", ""),
        ({"type": "ExternalName", "external_name": "bad..name"}, "externalName", "bad..name"),
        ({"type": "Headless", "cluster_ips": ("10.96.0.5",)}, "clusterIP", "10.96.0.5"),
    ],
)
def test_service_validation_names_field_and_value(kw, field, value):
    with pytest.raises(ValidationError) as err:
        _svc(**kw)
    assert err.value.field == field
    assert err.value.value == value
    assert repr(value) in str(err.value)


def test_endpoint_validation():
    with pytest.raises(ValidationError, match="'hostname'|hostname"):
        Endpoint("10.0.0.1", hostname="Web_0")
    with pytest.raises(ValidationError) as err:
        Endpoint("not-an-ip")
    assert err.value.field == "address"
    with pytest.raises(ValidationError):
        Endpoint("::ffff:10.0.0.1")  # IPv4-mapped: write the IPv4 address
    assert Endpoint("10.0.0.1", ready=False).serving is False
    assert Endpoint("FD00::0001").address == ipaddress.ip_address("fd00::1")


def test_usable_endpoints_fall_back_to_serving_terminating():
    ready = Endpoint("10.0.0.1")
    draining = Endpoint("10.0.0.2", ready=False, serving=True, terminating=True)
    dead = Endpoint("10.0.0.3", ready=False, serving=False, terminating=True)
    unready = Endpoint("10.0.0.4", ready=False)
    assert _svc(endpoints=(ready, draining, dead, unready)).usable_endpoints() == (ready,)
    assert _svc(endpoints=(draining, dead, unready)).usable_endpoints() == (draining,)
    assert _svc(endpoints=(dead, unready)).usable_endpoints() == ()


def test_document_round_trip_and_kubernetes_field_names():
    svc = Service(
        name="web",
        ports=(ServicePort(80, "TCP", 8080, "http"), ServicePort(53, "UDP", 53, "dns")),
        cluster_ips=("10.96.0.10",),
        session_affinity="ClientIP",
        affinity_timeout=60,
        endpoints=(Endpoint("10.0.0.1", hostname="web-0"), Endpoint("10.0.0.2", ready=False)),
    )
    doc = to_document(svc)
    assert doc["clusterIP"] == "10.96.0.10" and doc["clusterIPs"] == ["10.96.0.10"]
    assert doc["ports"][0] == {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}
    assert doc["sessionAffinity"] == "ClientIP" and doc["sessionAffinityTimeoutSeconds"] == 60
    assert doc["endpoints"][1] == {"address": "10.0.0.2", "ready": False, "serving": False, "terminating": False}
    assert from_document(doc) == svc


def test_from_dict_reports_nested_fields_and_unknown_keys():
    with pytest.raises(ValidationError) as err:
        from_document({"name": "web", "ports": [{"port": 80, "protocol": "ICMP"}]})
    assert err.value.field == "ports[0].protocol" and err.value.value == "ICMP"
    with pytest.raises(ValidationError) as err:
        from_document({"name": "web", "prots": []})
    assert err.value.field == "prots" and "known fields" in err.value.reason
    with pytest.raises(ValidationError) as err:
        from_document(
            {"name": "web", "ports": [{"port": 80}], "endpoints": [{"address": "10.0.0.1", "ready": "yes"}]}
        )
    assert err.value.field == "endpoints[0].ready"


def test_kubernetes_headless_spelling_and_dual_stack_policy():
    assert from_document({"name": "db", "clusterIP": "None", "ports": [{"port": 5432}]}).type == "Headless"
    dual = from_document({"name": "web", "ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]})
    # kept as given: the registry resolves it against its service CIDRs (ipam.service_families)
    assert (dual.ip_family_policy, dual.ip_families) == ("PreferDualStack", ())
    assert from_document(to_document(dual)) == dual


_labels = st.from_regex(r"\A[a-z]([a-z0-9-]{0,10}[a-z0-9])?\Z")
_ipv4 = st.ip_addresses(v=4).filter(lambda ip: not (ip.is_unspecified or ip.is_multicast or ip.is_loopback))


@given(
    name=_labels,
    namespace=_labels,
    ports=st.lists(
        st.tuples(st.integers(1, 65535), st.sampled_from(["TCP", "UDP", "SCTP"])), min_size=1, max_size=4, unique=True
    ),
    endpoints=st.lists(st.tuples(_ipv4, st.booleans()), max_size=5, unique_by=lambda t: t[0]),
)
def test_document_round_trip_property(name, namespace, ports, endpoints):
    svc = Service(
        name=name,
        namespace=namespace,
        ports=tuple(ServicePort(p, proto, 0, f"p{i}") for i, (p, proto) in enumerate(ports)),
        endpoints=tuple(Endpoint(ip, ready=r) for ip, r in endpoints),
    )
    assert from_document(to_document(svc)) == svc


def test_a_validation_error_is_a_usage_error_and_a_value_error_with_a_bounded_value():
    with pytest.raises(ValidationError) as err:
        Service("x" * 100_000)
    assert isinstance(err.value, UsageError) and isinstance(err.value, ValueError)
    assert err.value.exit_code == 2 and err.value.field == "name"
    assert len(str(err.value)) < MAX_VALUE + 200


@pytest.mark.parametrize("port", ["²", "٨٠", "1" * 30, "80a"])
def test_a_port_in_anything_but_ascii_digits_is_a_validation_error(port):
    with pytest.raises(ValidationError, match="must be a port number"):
        ServicePort(port)


# ---- selectors and named target ports (issue 13) ------------------------------------------------------


def test_a_named_target_port_parses_prints_and_round_trips():
    port = parse_port_spec("http:80:http")
    assert (port.port, port.target_port_name, port.target_port, str(port)) == (80, "http", 80, "http:80:http/tcp")
    svc = Service("web", ports=(port,), selector=(("app", "web"),))
    doc = to_document(svc)
    assert doc["ports"] == [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}]
    assert doc["selector"] == {"app": "web"} and "endpoints" not in doc
    assert from_document(doc) == svc


def test_explicit_endpoints_beside_a_selector_are_refused_saying_why():
    doc = {"name": "web", "ports": [{"port": 80}], "selector": {"app": "web"}, "endpoints": ["10.0.0.1"]}
    with pytest.raises(ValidationError) as err:
        from_document(doc, "web.yaml")
    assert "endpoints" in str(err.value) and "selector" in str(err.value) and "pods" in str(err.value)


@pytest.mark.parametrize(
    "doc, field",
    [
        ({"name": "web", "ports": [{"port": 80}], "selector": ["app=web"]}, "selector"),
        ({"name": "web", "ports": [{"port": 80}], "selector": {"app": "we b"}}, "selector.app"),
        ({"name": "web", "ports": [{"port": 80, "targetPort": "HTTP"}]}, "ports[0].targetPort"),
        ({"name": "web", "ports": [{"port": 80}], "publishNotReadyAddresses": "yes"}, "publishNotReadyAddresses"),
    ],
)
def test_selector_errors_name_the_field(doc, field):
    with pytest.raises(ValidationError) as err:
        from_document(doc)
    assert err.value.field == field


def test_a_name_with_a_trailing_newline_is_refused():
    # `$` matches before a final newline: "web\n" passed as a name and a label before fullmatch
    with pytest.raises(ValidationError):
        Service("web\n", type="Headless")
    with pytest.raises(ValidationError):
        Service("web", type="Headless", selector=(("app", "web\n"),))


@pytest.mark.parametrize(
    "text, says",
    [
        ("010.1.1.1", "must be an IPv4 or IPv6 address"),  # a leading zero (octal to some parsers)
        ("10.1.1", "must be an IPv4 or IPv6 address"),
        ("10.1.1.256", "must be an IPv4 or IPv6 address"),
        ("0x0a.1.1.1", "must be an IPv4 or IPv6 address"),
        ("10.0.0.1\x00", "must be an IPv4 or IPv6 address"),
        ("127.0.0.5", "must be a unicast address"),
        ("224.0.0.1", "must be a unicast address"),
        ("239.255.255.255", "must be a unicast address"),
        ("0.0.0.0", "must be a unicast address"),
        ("::1", "must be a unicast address"),
    ],
)
def test_an_address_the_fast_parser_refuses_is_refused_naming_field_and_value(text, says):
    with pytest.raises(ValidationError, match=says) as err:
        Endpoint(text)
    assert (err.value.field, err.value.value) == ("address", text)


@pytest.mark.parametrize("text", ["10.0.0.1", " 10.0.0.1 ", "223.255.255.255", "240.0.0.1", "fd00::5", "128.0.0.1"])
def test_addresses_parse_as_ipaddress_does(text):
    assert Endpoint(text).address == ipaddress.ip_address(text.strip())
    assert type(Endpoint(text).address) is type(ipaddress.ip_address(text.strip()))


def test_a_label_or_port_name_once_valid_does_not_make_a_bad_one_valid():
    from svcdns.model import check_port_name, labels_of

    assert labels_of({"app": "web"}) == labels_of({"app": "web"}) == (("app", "web"),)
    with pytest.raises(ValidationError) as err:
        labels_of({"app": "web!"})
    assert (err.value.field, err.value.value) == ("labels.app", "web!")
    assert check_port_name("name", "http") == check_port_name("name", "http")
    with pytest.raises(ValidationError):
        check_port_name("name", "http--x")


def test_with_endpoints_and_with_cluster_ips_check_what_they_change():
    svc = Service("web", ports=(ServicePort(80, name="http"),), cluster_ips=("10.96.0.5",))
    ok = svc.with_endpoints([Endpoint("10.0.0.1"), Endpoint("10.0.0.2")])
    assert ok == Service("web", ports=svc.ports, cluster_ips=svc.cluster_ips, endpoints=ok.endpoints)
    with pytest.raises(ValidationError) as err:
        svc.with_endpoints([Endpoint("10.0.0.1"), Endpoint("10.0.0.1")])
    assert (err.value.field, err.value.value) == ("endpoints[1].address", "10.0.0.1")
    with pytest.raises(ValidationError) as err:
        svc.with_endpoints([Endpoint("fd00::1")])
    assert err.value.field == "endpoints[0].address"
    with pytest.raises(ValidationError) as err:
        svc.with_endpoints([Endpoint("10.0.0.1", ports={"grpc": 9000})])
    assert (err.value.field, err.value.value) == ("endpoints[0].ports", "grpc")
    v6 = Service("web", ports=svc.ports).with_cluster_ips([ipaddress.ip_address("fd00:96::5")])
    assert v6.ip_families == ("IPv6",) and v6 == Service("web", ports=svc.ports, cluster_ips=("fd00:96::5",))
    with pytest.raises(ValidationError) as err:
        ok.with_cluster_ips([ipaddress.ip_address("fd00:96::5")])  # its endpoints are IPv4
    assert err.value.field == "endpoints[0].address"
    with pytest.raises(ValidationError) as err:
        Service("h", type="Headless").with_cluster_ips([ipaddress.ip_address("10.96.0.9")])
    assert (err.value.field, err.value.value) == ("clusterIP", "10.96.0.9")
    with pytest.raises(ValidationError) as err:
        svc.with_cluster_ips(["10.96.0.5", "10.96.0.6"])
    assert err.value.field == "ipFamilies"  # as construction says it: the families derived from the VIPs repeat
