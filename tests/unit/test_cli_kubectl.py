"""kubectl habits of the CLI, as a user sees them: one-line outcomes of writes, --ignore-not-found,
-o wide / -o name, -l on Services' labels, partial endpoint updates, namespaces checked."""

import json

import pytest


def test_writes_say_what_they_did_in_one_line(svcdns):
    code, out, err = svcdns("service", "add", "web", "--port", "80")
    assert code == 0 and out.count("\n") == 1 and err == "service/web created\n"  # stdout: the VIP alone
    assert svcdns("endpoint", "add", "web", "10.0.1.5")[1] == "endpoint 10.0.1.5 of service/web added\n"
    assert svcdns("endpoint", "add", "web", "10.0.1.5", "--not-ready")[1] == "endpoint 10.0.1.5 of service/web configured\n"
    assert svcdns("endpoint", "add", "web", "10.0.1.5", "--not-ready")[1] == "endpoint 10.0.1.5 of service/web unchanged\n"
    assert svcdns("endpoint", "rm", "web", "10.0.1.5")[1] == "endpoint 10.0.1.5 of service/web removed\n"
    assert svcdns("pod", "add", "web-0", "10.244.0.5", "-l", "app=web")[1] == "pod/web-0 created\n"
    assert svcdns("pod", "add", "web-0", "10.244.0.5", "-l", "app=web")[1] == "pod/web-0 unchanged\n"
    assert svcdns("pod", "add", "web-0", "10.244.0.6", "-l", "app=web")[1] == "pod/web-0 configured\n"
    assert svcdns("pod", "rm", "web-0")[1] == "pod/web-0 deleted\n"
    assert svcdns("service", "rm", "web")[1] == "service/web deleted\n"


def test_removing_what_is_not_there(svcdns):
    svcdns("service", "add", "web", "--port", "80")
    for argv, says in [
        (["service", "rm", "nope"], "Service default/nope not found"),
        (["endpoint", "rm", "web", "10.0.1.9"], "endpoint 10.0.1.9 of service default/web not found"),
        (["endpoint", "rm", "nope", "10.0.1.9"], "Service default/nope not found"),
        (["pod", "rm", "web-9"], "pod default/web-9 not found"),
    ]:
        code, out, err = svcdns(*argv)
        assert (code, out) == (1, "") and says in err, (argv, err)
        assert svcdns(*argv, "--ignore-not-found") == (0, "", ""), argv


def test_endpoint_add_of_an_existing_address_changes_only_what_is_given(svcdns):
    svcdns("service", "add", "web", "--port", "80")
    svcdns("endpoint", "add", "web", "10.0.1.5", "--hostname", "web-0")

    def endpoint():
        return json.loads(svcdns("service", "get", "web", "-o", "json")[1])["endpoints"][0]

    svcdns("endpoint", "add", "web", "10.0.1.5", "--not-ready")
    assert endpoint() == {"address": "10.0.1.5", "ready": False, "serving": False, "terminating": False, "hostname": "web-0"}
    svcdns("endpoint", "add", "web", "10.0.1.5", "--ready")
    assert endpoint()["ready"] is True and endpoint()["hostname"] == "web-0"
    svcdns("endpoint", "add", "web", "10.0.1.5", "--terminating")
    assert endpoint() == {"address": "10.0.1.5", "ready": False, "serving": True, "terminating": True, "hostname": "web-0"}
    code, _, err = svcdns("endpoint", "add", "web", "10.0.1.5", "--ready")
    assert code == 2 and "terminating" in err and "--no-terminating" in err
    svcdns("endpoint", "add", "web", "10.0.1.5", "--no-terminating", "--ready", "--hostname", "")
    assert endpoint() == {"address": "10.0.1.5", "ready": True, "serving": True, "terminating": False}


@pytest.mark.parametrize("argv", [["service", "list"], ["pod", "list"], ["service", "get", "web"],
                                  ["endpoint", "list", "web"], ["service", "rm", "web"]])  # fmt: skip
def test_an_invalid_namespace_is_refused_naming_it(svcdns, argv):
    code, out, err = svcdns("-n", "Prod", *argv)
    assert code == 2 and out == "" and "invalid namespace 'Prod'" in err and "RFC 1123" in err
    assert svcdns(*argv, "-n", "Prod")[0] == 2


def test_output_name_and_wide(svcdns):
    svcdns("service", "add", "web", "--selector", "app=web", "--port", "http:80:8080", "-l", "tier=front")
    svcdns("service", "add", "db", "--port", "5432", "--endpoint", "10.0.2.1")
    svcdns("pod", "add", "web-0", "10.244.0.5", "-l", "app=web", "--node", "n1")
    svcdns("pod", "add", "web-1", "10.244.0.6", "-l", "app=web", "--not-ready")
    assert svcdns("service", "list", "-o", "name")[1] == "service/db\nservice/web\n"
    assert svcdns("service", "get", "web", "-o", "name")[1] == "service/web\n"
    assert svcdns("pod", "list", "-o", "name")[1] == "pod/web-0\npod/web-1\n"
    assert svcdns("pod", "get", "web-1", "-o", "name")[1] == "pod/web-1\n"
    assert svcdns("endpoint", "list", "web", "-o", "name")[1] == "10.244.0.5\n10.244.0.6\n"
    lines = svcdns("service", "list", "-o", "wide")[1].splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORTS", "ENDPOINTS", "SELECTOR", "LABELS"]
    web = lines[2].split()
    assert web[1] == "web" and web[-4:] == ["1/2", "ready", "app=web", "tier=front"]
    assert lines[1].split()[-4:] == ["1/1", "ready", "<none>", "<none>"]
    get = svcdns("service", "get", "web", "-o", "wide")[1].splitlines()
    assert len(get) == 2 and get[1].split() == web
    pod = svcdns("pod", "get", "web-0", "-o", "wide")[1].splitlines()[1].split()
    assert pod == ["default", "web-0", "Ready", "10.244.0.5", "-", "n1", "app=web"]


def test_service_list_selects_on_the_services_own_labels(svcdns):
    svcdns("service", "add", "web", "--port", "80", "-l", "tier=front,app=shop")
    svcdns("service", "add", "api", "--port", "80", "-l", "tier=back,app=shop")
    svcdns("service", "add", "plain", "--port", "80")
    assert svcdns("service", "list", "-l", "tier=front", "-o", "name")[1] == "service/web\n"
    assert svcdns("service", "list", "-l", "app=shop", "-o", "name")[1] == "service/api\nservice/web\n"
    code, out, err = svcdns("service", "list", "-l", "tier=none")
    assert code == 0 and out == "" and "No Services in namespace default with labels tier=none" in err
    assert svcdns("service", "list", "-l", "tier")[0] == 2
    assert json.loads(svcdns("service", "get", "web", "-o", "json")[1])["labels"] == {"app": "shop", "tier": "front"}
    assert "Labels:            app=shop,tier=front" in svcdns("service", "get", "web")[1]


def test_apply_keeps_a_services_metadata_labels(svcdns):
    manifest = svcdns.tmp / "web.yaml"
    manifest.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web, labels: {tier: front}}\n"
                        "spec: {selector: {app: web}, ports: [{port: 80}]}\n")  # fmt: skip
    assert svcdns("apply", "-f", str(manifest))[1] == "service/web created\n"
    assert svcdns("service", "list", "-l", "tier=front", "-o", "name")[1] == "service/web\n"
    assert svcdns("delete", "-f", str(manifest))[1] == "service/web deleted\n"
    manifest.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web, labels: {tier: 'a b'}}\n"
                        "spec: {ports: [{port: 80}]}\n")  # fmt: skip
    code, _, err = svcdns("apply", "-f", str(manifest))
    assert code == 2 and "metadata.labels.tier" in err and "'a b'" in err


def test_an_endpoint_at_another_services_vip_is_refused(svcdns):
    vip = svcdns("service", "add", "db", "--port", "5432")[1].strip()
    svcdns("service", "add", "web", "--port", "80")
    code, _, err = svcdns("endpoint", "add", "web", vip)
    assert code == 2 and vip in err and "inside the service CIDR" in err
