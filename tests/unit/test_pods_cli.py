"""`svcdns pod ...`, `service add --selector` and `endpoint list` end to end, in a temporary registry."""

import json

import pytest
import yaml


def endpoints(svcdns, service="web"):
    code, out, err = svcdns("endpoint", "list", service, "-o", "json")
    assert code == 0, err
    return [(e["address"], e.get("ports", {}).get("http"), e["targetRef"]["name"], e["ready"], e["terminating"])
            for e in json.loads(out)["endpoints"]]  # fmt: skip


def test_pods_give_a_selector_service_its_endpoints_with_named_target_ports(svcdns):
    assert svcdns("service", "add", "web", "--selector", "app=web", "--port", "http:80:http")[0] == 0
    assert svcdns("pod", "add", "web-0", "10.244.1.5", "-l", "app=web,tier=front", "--port", "http:8080/tcp")[1] == (
        "pod/web-0 created\n"
    )
    svcdns("pod", "add", "web-1", "10.244.1.6", "-l", "app=web", "--port", "http:9090", "--not-ready")
    svcdns("pod", "add", "db-0", "10.244.1.7", "-l", "app=db", "--port", "http:5432")
    assert endpoints(svcdns) == [("10.244.1.5", 8080, "web-0", True, False), ("10.244.1.6", 9090, "web-1", False, False)]
    code, out, _ = svcdns("endpoint", "list", "web")
    assert "10.244.1.5  http:8080/tcp  true" in out and "web-0" in out
    code, out, _ = svcdns("pod", "list", "-l", "app=web", "-o", "wide")
    assert "web-0" in out and "web-1" in out and "db-0" not in out and "tier=front" in out
    assert [p["name"] for p in yaml.safe_load(svcdns("pod", "list", "-o", "yaml")[1])["items"]] == ["db-0", "web-0", "web-1"]


def test_label_moves_a_pod_and_rm_with_grace_makes_it_terminating(svcdns):
    svcdns("service", "add", "web", "--selector", "app=web", "--port", "80")
    svcdns("pod", "add", "web-0", "10.244.1.5", "-l", "app=web,tier=front")
    assert svcdns("pod", "label", "web-0", "app-", "tier=back")[0] == 0
    assert json.loads(svcdns("pod", "get", "web-0", "-o", "json")[1])["labels"] == {"tier": "back"}
    assert endpoints(svcdns) == []
    svcdns("pod", "label", "web-0", "app=web")
    code, out, _ = svcdns("pod", "rm", "web-0", "--grace", "30")
    assert code == 0 and "terminating" in out
    assert endpoints(svcdns) == [("10.244.1.5", None, "web-0", False, True)]
    assert "Terminating" in svcdns("pod", "get", "web-0")[1]
    assert svcdns("pod", "rm", "web-0")[0] == 0
    assert endpoints(svcdns) == [] and not (svcdns.root / "pods" / "default" / "web-0.yaml").exists()
    assert svcdns("pod", "rm", "web-0")[0] == 1
    assert svcdns("pod", "rm", "web-0", "--ignore-not-found")[0] == 0


@pytest.mark.parametrize(
    "argv, says",
    [
        (["pod", "add", "web-0", "10.0.0.1", "-l", "app"], "expected key=value"),
        (["pod", "add", "web-0", "10.0.0.1", "10.0.0.2"], "one address per family"),
        (["pod", "add", "web-0", "nope"], "IPv4 or IPv6"),
        (["pod", "add", "web-0", "10.0.0.1", "--port", "http:x"], "expected [name:]port"),
        (["service", "add", "web", "--selector", "app=web", "--port", "80", "--endpoint", "10.0.0.1"], "from its pods"),
        (["service", "add", "web", "--port", "80", "--publish-not-ready-addresses"], "only with --selector"),
    ],
)
def test_usage_errors_name_what_is_wrong(svcdns, argv, says):
    code, _, err = svcdns(*argv)
    assert code == 2 and says in err, err


def test_explicit_endpoint_changes_are_refused_on_a_selector_service(svcdns):
    svcdns("service", "add", "web", "--selector", "app=web", "--port", "80")
    code, _, err = svcdns("endpoint", "add", "web", "10.0.0.1")
    assert code == 2 and "selector" in err and "svcdns pod" in err


def test_a_dual_stack_pod_with_hostname_and_subdomain_in_endpoint_list_yaml(svcdns):
    """The issue's `pod add web-0 10.244.1.5 fd00:244::5 --hostname web-0 --subdomain web`: a
    headless Service named like the subdomain gives both addresses that hostname, each naming the
    pod (EndpointSlice's targetRef); a Service of another name gives no hostname."""
    svcdns("service", "add", "web", "--headless", "--ip-family", "dual", "--selector", "app=web", "--port", "80")
    svcdns("service", "add", "other", "--headless", "--selector", "app=web", "--port", "80")
    code, _, err = svcdns("pod", "add", "web-0", "10.244.1.5", "fd00:244::5", "-l", "app=web",
                          "--hostname", "web-0", "--subdomain", "web")  # fmt: skip
    assert code == 0, err
    pod = json.loads(svcdns("pod", "get", "web-0", "-o", "json")[1])
    assert (pod["hostname"], pod["subdomain"], pod["podIPs"]) == ("web-0", "web", ["10.244.1.5", "fd00:244::5"])
    code, out, _ = svcdns("endpoint", "list", "web", "-o", "yaml")
    got = [(e["address"], e.get("hostname"), e["targetRef"]) for e in yaml.safe_load(out)["endpoints"]]
    assert got == [("10.244.1.5", "web-0", {"kind": "Pod", "name": "web-0"}),
                   ("fd00:244::5", "web-0", {"kind": "Pod", "name": "web-0"})]  # fmt: skip
    other = yaml.safe_load(svcdns("endpoint", "list", "other", "-o", "yaml")[1])["endpoints"]
    assert other and all("hostname" not in e and e["targetRef"]["name"] == "web-0" for e in other), other
