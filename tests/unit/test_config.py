"""The agent's configuration (file < environment < flags) and how the CLI starts and fails."""

import os
import socket
import subprocess
import sys

import pytest

from svcdns.cli import config as configuration
from svcdns.errors import UsageError


def test_config_precedence_and_errors(tmp_path):
    conf = tmp_path / "svcdns.toml"
    conf.write_text('registry = "/srv/reg"\ncluster_zone = "corp.local"\n[dns]\nlisten = ["127.0.0.1:5353"]\nttl = 9\n')
    cfg = configuration.load(str(conf), env={})
    assert (cfg.registry, cfg.cluster_zone, cfg.dns_listen, cfg.dns_ttl) == (
        "/srv/reg",
        "corp.local",
        ("127.0.0.1:5353",),
        9,
    )
    cfg = configuration.load(str(conf), env={"SVCDNS_ZONE": "env.local"}, flags={"registry": "/flag"})
    assert (cfg.registry, cfg.cluster_zone) == ("/flag", "env.local")
    for text, says in [
        ('dataplane = "ebpf"', "dataplane = 'ebpf'"),
        ('[dns]\nttl = "5"', "dns.ttl = '5'"),
        ('colour = "blue"', "unknown key 'colour'"),
        ('service_cidrs = ["10.96.0.1/12"]', "10.96.0.1/12"),
        ('health_listen = "localhost"', "health_listen = 'localhost'"),
        ("registry = ", "not valid TOML"),
    ]:
        conf.write_text(text + "\n")
        with pytest.raises(UsageError) as err:
            configuration.load(str(conf), env={})
        assert says in str(err.value) and str(conf) in str(err.value)


def test_a_service_cidr_overlapping_a_local_network_is_refused():
    import ipaddress

    cfg = configuration.Config(service_cidrs=("10.96.0.0/12",))
    with pytest.raises(UsageError, match="overlaps the local network 10.96.5.0/24"):
        configuration.validate(cfg, local_networks=[ipaddress.ip_network("10.96.5.0/24")])
    configuration.validate(cfg, local_networks=[ipaddress.ip_network("192.168.1.0/24")])


@pytest.mark.parametrize("zone", ["a..b", "Cluster Local", "-x.local", "x" * 64 + ".local", ""])
def test_a_bad_zone_is_refused_naming_it(zone):
    """Defect 4 of the layout issue: --zone was never checked (a traceback, or served as given)."""
    with pytest.raises(UsageError, match="cluster_zone") as err:
        configuration.load(None, env={"SVCDNS_CONFIG": os.devnull}, flags={"cluster_zone": zone})
    assert repr(zone)[:40].rstrip("'") in str(err.value)


def test_the_zone_is_case_insensitive():
    cfg = configuration.load(None, env={"SVCDNS_CONFIG": os.devnull}, flags={"cluster_zone": "Corp.Local."})
    assert cfg.cluster_zone == "corp.local"


def agent(*args, timeout=30):
    """``svcdns agent ...`` as a user runs it; returns (exit code, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.getcwd(), SVCDNS_CONFIG=os.devnull)
    proc = subprocess.run([sys.executable, "-m", "svcdns", "agent", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["--zone", "a..b"], "cluster_zone = 'a..b'"),
        (["--zone", "Cluster Local"], "command line: cluster_zone = 'Cluster Local'"),
        (["--dns-listen", "127.0.0.1:fifty-three"], "dns.listen = '127.0.0.1:fifty-three'"),
        (["--health-listen", "127.0.0.1:99999"], "health_listen = '127.0.0.1:99999'"),
    ],
)
def test_bad_usage_exits_2_with_the_field_and_no_traceback(tmp_path, args, says):
    code, err = agent("--registry", str(tmp_path), *args)
    assert code == 2 and says in err and "Traceback" not in err, err


def test_a_health_port_in_use_is_named_without_a_traceback(tmp_path):
    """Defect 3 of the layout issue: the status server bound inside build(), outside any handler."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = agent("--registry", str(tmp_path), "--health-listen", f"127.0.0.1:{port}",
                          "--dns-listen", "127.0.0.1:1")  # fmt: skip
    assert code == 1, err
    assert f"health_listen 127.0.0.1:{port}: cannot listen" in err and "Traceback" not in err, err


def test_the_cluster_dns_address_on_the_node_is_no_overlap_but_other_local_addresses_are():
    """Issue 14: binding 10.96.0.10 on the node made the next start refuse the service CIDR."""
    import ipaddress

    cfg = configuration.load(None, env={"SVCDNS_CONFIG": os.devnull})
    assert cfg.cluster_dns == "10.96.0.10" and cfg.dns_listen_all() == ["127.0.0.1:53", "10.96.0.10:53"]
    configuration.validate(cfg, local_networks=[ipaddress.ip_network("10.96.0.10/32")])
    with pytest.raises(UsageError, match="overlaps the local network 10.96.0.11/32"):
        configuration.validate(cfg, local_networks=[ipaddress.ip_network("10.96.0.11/32")])
    unmanaged = configuration.load(None, env={"SVCDNS_CONFIG": os.devnull}, flags={"cluster_dns_interface": ""})
    assert unmanaged.dns_listen_all() == ["127.0.0.1:53"]
    with pytest.raises(UsageError, match="overlaps"):
        configuration.validate(unmanaged, local_networks=[ipaddress.ip_network("10.96.0.10/32")])
