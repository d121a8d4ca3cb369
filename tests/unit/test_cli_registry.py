"""`svcdns service ...` and `svcdns endpoint ...` end to end, in a temporary registry directory."""

import ipaddress
import json
import os
import subprocess
import sys

import pytest
import yaml


def test_add_prints_the_vip_and_get_shows_it(svcdns):
    code, out, _ = svcdns("service", "add", "web", "--port", "http:80:8080/tcp", "--port", "dns:53/udp")
    assert code == 0
    vip = ipaddress.ip_address(out.strip())
    assert vip in ipaddress.ip_network("10.96.0.0/12")
    code, out, _ = svcdns("service", "get", "web", "-o", "json")
    doc = json.loads(out)
    assert doc["clusterIP"] == str(vip) and doc["type"] == "ClusterIP"
    assert doc["ports"] == [
        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
        {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53},
    ]
    code, out, _ = svcdns("service", "get", "web")
    assert "VIPs:" in out and str(vip) in out and "http 80/TCP -> 8080" in out
    code, out, _ = svcdns("service", "get", "web", "-o", "yaml")
    assert yaml.safe_load(out)["clusterIP"] == str(vip)


def test_headless_external_and_fixed(svcdns):
    assert svcdns("service", "add", "db", "--headless", "--port", "5432/tcp")[1].strip() == "None"
    assert svcdns("service", "add", "ext", "--external-name", "example.org")[1].strip() == "example.org"
    assert svcdns("service", "add", "fixed", "--vip", "10.96.0.50", "--port", "80/tcp")[1].strip() == "10.96.0.50"
    code, _, err = svcdns("service", "add", "again", "--vip", "10.96.0.50", "--port", "80/tcp")
    assert code == 2 and "10.96.0.50" in err and "default/fixed" in err
    code, _, err = svcdns("service", "add", "far", "--vip", "192.168.0.1", "--port", "80/tcp")
    assert code == 2 and "192.168.0.1" in err and "outside" in err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["service", "add", "Web", "--port", "80"], "invalid name 'Web'"),
        (["service", "add", "web", "--port", "99999"], "'99999'"),
        (["service", "add", "web", "--port", "80/icmp"], "unknown protocol 'icmp'"),
        (["service", "add", "web"], "needs at least one --port"),
        (["service", "add", "web", "--port", "a:80", "--port", "a:81"], "duplicate port name"),
        (["service", "add", "web", "--port", "80", "--vip", "10.96.0.999"], "'10.96.0.999'"),
        (["service", "add", "web", "--headless", "--vip", "10.96.0.9"], "Headless Service has no VIP"),
        (["service", "add", "web", "--port", "80", "--ip-family", "ipv6"], "no IPv6 service CIDR"),
    ],
)
def test_bad_usage_exits_2_naming_the_value(svcdns, argv, says):
    code, _, err = svcdns(*argv)
    assert code == 2
    assert says in err


def test_endpoints_add_update_remove(svcdns):
    svcdns("service", "add", "web", "--port", "80")
    assert svcdns("endpoint", "add", "web", "10.0.1.5", "--hostname", "web-0")[0] == 0
    assert svcdns("endpoint", "add", "web", "10.0.1.6", "--not-ready")[0] == 0
    assert svcdns("endpoint", "add", "web", "10.0.1.7", "--terminating")[0] == 0
    eps = json.loads(svcdns("service", "get", "web", "-o", "json")[1])["endpoints"]
    assert eps == [
        {"address": "10.0.1.5", "ready": True, "serving": True, "terminating": False, "hostname": "web-0"},
        {"address": "10.0.1.6", "ready": False, "serving": False, "terminating": False},
        {"address": "10.0.1.7", "ready": False, "serving": True, "terminating": True},
    ]
    svcdns("endpoint", "add", "web", "10.0.1.6", "--ready")  # now ready: updated in place
    eps = json.loads(svcdns("service", "get", "web", "-o", "json")[1])["endpoints"]
    assert [e["ready"] for e in eps] == [True, True, False]
    assert svcdns("endpoint", "rm", "web", "10.0.1.5")[0] == 0
    code, _, err = svcdns("endpoint", "rm", "web", "10.0.1.5")
    assert code == 1 and "endpoint 10.0.1.5 of service default/web not found" in err
    code, _, err = svcdns("endpoint", "add", "web", "fd00::5")
    assert code == 2 and "IPv6 but the Service has only IPv4" in err
    code, _, err = svcdns("endpoint", "add", "nope", "10.0.0.1")
    assert code == 1 and "default/nope not found" in err


def test_list_namespaces_and_error_rows(svcdns):
    svcdns("service", "add", "web", "--port", "80")
    svcdns("service", "add", "api", "-n", "prod", "--port", "80")
    (svcdns.root / "broken.yaml").write_text("name: [")
    _, out, _ = svcdns("service", "list")
    assert "web" in out and "api" not in out
    assert "ERROR" in out and "broken.yaml" in out
    _, out, _ = svcdns("service", "list", "-A")
    assert "web" in out and "api" in out
    _, out, _ = svcdns("service", "list", "-n", "prod", "-o", "json")
    doc = json.loads(out)
    assert [s["name"] for s in doc["items"]] == ["api"]
    assert doc["errors"][0]["source"] == "broken.yaml"


def test_kube_dns_is_listed_at_the_cluster_dns_address_until_the_registry_has_its_own(svcdns):
    """Issue 14: the cluster DNS address appears as kube-dns in kube-system, as Kubernetes names it."""
    _, out, _ = svcdns("service", "list", "-A")
    row = next(line.split() for line in out.splitlines() if "kube-dns" in line)
    assert row[:5] == ["kube-system", "kube-dns", "ClusterIP", "10.96.0.10", "dns:53/udp,dns-tcp:53/tcp"], out
    _, out, _ = svcdns("service", "list", "-n", "kube-system", "-o", "json")
    (doc,) = json.loads(out)["items"]
    assert doc["clusterIP"] == "10.96.0.10" and [p["name"] for p in doc["ports"]] == ["dns", "dns-tcp"]
    _, out, _ = svcdns("service", "list")  # default namespace: not there
    assert "kube-dns" not in out
    _, out, _ = svcdns("service", "list", "-A", "--service-cidr", "10.100.0.0/16")
    assert "10.100.0.10" in out  # the 10th address of the first service CIDR, as the agent serves
    svcdns("service", "add", "kube-dns", "-n", "kube-system", "--vip", "10.96.0.10", "--port", "53/udp")
    _, out, _ = svcdns("service", "list", "-n", "kube-system", "-o", "json")
    assert [p["protocol"] for p in json.loads(out)["items"][0]["ports"]] == ["UDP"]  # the registry's own wins


def test_get_missing_exits_1_and_rm_frees(svcdns):
    code, _, err = svcdns("service", "get", "nope")
    assert code == 1 and "default/nope not found" in err
    svcdns("service", "add", "web", "--port", "80")
    assert svcdns("service", "rm", "web")[0] == 0
    assert svcdns("service", "get", "web")[0] == 1
    assert svcdns("service", "rm", "web")[0] == 1


def test_dual_stack_with_an_ipv6_cidr(svcdns):
    code, out, err = svcdns(
        "service",
        "add",
        "web",
        "--port",
        "80",
        "--ip-family",
        "dual",
        "--service-cidr",
        "10.96.0.0/12",
        "--service-cidr",
        "fd00:96::/108",
    )
    assert code == 0, err
    v4, v6 = out.strip().split(",")
    assert ipaddress.ip_address(v6) in ipaddress.ip_network("fd00:96::/108")
    # later commands use the CIDRs the registry recorded
    code, out, err = svcdns("service", "add", "six", "--port", "80", "--ip-family", "ipv6")
    assert code == 0, err
    assert ipaddress.ip_address(out.strip()).version == 6
    assert svcdns("endpoint", "add", "web", "fd00:244:1::2")[0] == 0


def test_concurrent_endpoint_adds_all_land(tmp_path):
    env = dict(os.environ, SVCDNS_REGISTRY=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "svcdns"]
    subprocess.run([*cmd, "service", "add", "web", "--port", "80"], env=env, check=True, capture_output=True)
    procs = [
        subprocess.Popen([*cmd, "endpoint", "add", "web", f"10.0.2.{i}"], env=env, stderr=subprocess.PIPE)
        for i in range(1, 21)
    ]
    assert all(p.wait(60) == 0 for p in procs), [p.stderr.read() for p in procs]
    out = subprocess.run([*cmd, "service", "get", "web", "-o", "json"], env=env, check=True, capture_output=True).stdout
    assert {e["address"] for e in json.loads(out)["endpoints"]} == {f"10.0.2.{i}" for i in range(1, 21)}


def test_python_m_svcdns_and_usage_errors(tmp_path):
    env = dict(os.environ, SVCDNS_REGISTRY=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "svcdns", "service", "frobnicate"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "svcdns", "--registry", str(tmp_path / "missing"), "service", "list"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "does not exist; create it" in proc.stderr  # before the command
    proc = subprocess.run(
        [sys.executable, "-m", "svcdns", "service", "list", "--registry", str(tmp_path / "missing")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "does not exist; create it" in proc.stderr


def test_list_on_an_empty_etcd_registry_names_it_without_its_password(svcdns, etcd_url):
    """It used to fail with AttributeError: 'EtcdRegistry' object has no attribute 'root'."""
    url = etcd_url + "?password=secret&username=nobody"
    from svcdns.registry import open_registry

    assert open_registry(url).location == etcd_url + "?password=***&username=nobody"
    code, _, err = svcdns("service", "list", "--registry", etcd_url)
    assert code == 0 and f"No Services in namespace default ({etcd_url})." in err


@pytest.mark.parametrize("backend", ["files", "etcd"])
def test_an_endpoint_or_pod_address_inside_the_service_cidrs_is_refused(svcdns, backend, request, monkeypatch):
    """10.96.1.1 may be another Service's VIP: traffic to it is DNATed again, or goes nowhere. Refused
    (exit 2) naming the CIDR; the cluster DNS address is kept back from automatic allocation."""
    if backend == "etcd":
        monkeypatch.setenv("SVCDNS_REGISTRY", request.getfixturevalue("etcd_url"))
    assert svcdns("service", "add", "web", "--port", "80")[0] == 0
    code, _, err = svcdns("endpoint", "add", "web", "10.96.1.1")
    assert code == 2 and "10.96.1.1" in err and "inside the service CIDR 10.96.0.0/12" in err
    code, _, err = svcdns("service", "add", "db", "--port", "5432", "--endpoint", "10.96.0.10")
    assert code == 2 and "10.96.0.10" in err and "inside the service CIDR 10.96.0.0/12" in err
    code, _, err = svcdns("pod", "add", "web-0", "10.96.3.3", "-l", "app=web")
    assert code == 2 and "podIPs[0]" in err and "10.96.3.3" in err and "inside the service CIDR 10.96.0.0/12" in err
    assert svcdns("endpoint", "add", "web", "10.0.1.5")[0] == 0 and svcdns("pod", "add", "web-0", "10.244.0.5")[0] == 0
    eps = json.loads(svcdns("service", "get", "web", "-o", "json")[1])["endpoints"]
    assert [e["address"] for e in eps] == ["10.0.1.5"]
