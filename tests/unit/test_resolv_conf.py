"""`svcdns resolv-conf`: the file the kubelet would write for dnsPolicy ClusterFirst."""

import os
import subprocess
import sys


def svcdns(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=os.getcwd(), SVCDNS_CONFIG=os.devnull, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "svcdns", *args], env=env, capture_output=True, text=True)


def test_a_pod_of_a_namespace_gets_the_cluster_dns_and_its_search_path(tmp_path):
    host = tmp_path / "host-resolv.conf"
    host.write_text("nameserver 192.0.2.53\nsearch corp.example. lab.example\noptions edns0\n")
    out = svcdns("resolv-conf", "-n", "prod", "--host-resolv-conf", str(host))
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "nameserver 10.96.0.10\n"
        "search prod.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\n"
        "options ndots:5\n"
    )


def test_the_cluster_dns_follows_the_service_cidr_and_the_zone_the_config(tmp_path):
    out = svcdns("resolv-conf", "--host-resolv-conf", str(tmp_path / "none"),
                 env_extra={"SVCDNS_SERVICE_CIDRS": "10.100.0.0/16", "SVCDNS_ZONE": "corp.local"})  # fmt: skip
    assert out.stdout.splitlines()[:2] == ["nameserver 10.100.0.10",
                                           "search default.svc.corp.local svc.corp.local corp.local"]  # fmt: skip


def test_write_puts_it_where_ip_netns_exec_reads_it(tmp_path):
    target = tmp_path / "etc/netns/web-0/resolv.conf"
    out = svcdns("resolv-conf", "--write", str(target), "--host-resolv-conf", str(tmp_path / "none"))
    assert out.returncode == 0 and target.read_text().startswith("nameserver 10.96.0.10\n"), out.stderr


def test_bad_namespace_and_address_are_named():
    bad_ns = svcdns("resolv-conf", "-n", "Prod")
    assert bad_ns.returncode == 2 and "namespace: 'Prod'" in bad_ns.stderr
    bad_dns = svcdns("resolv-conf", "--cluster-dns", "ten.96.0.10")
    assert bad_dns.returncode == 2 and "cluster_dns = 'ten.96.0.10'" in bad_dns.stderr
