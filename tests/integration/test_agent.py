"""`svcdns agent` end to end in namespaces: the CLI writes, a pod resolves with dig and connects."""

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from svcdns.testing.lab import wait_for

PY = [sys.executable, "-m"]


@pytest.fixture
def node(make_lab, cli):
    lab = make_lab(pods=3)
    registry, env, svcdns = cli.registry, cli.env, cli
    for pod in lab.pod_list[:2]:
        lab.serve(pod, 8080, "tcp")

    def start_agent(*extra):
        proc = lab.spawn(lab.node, [*PY, "svcdns", "agent", "--registry", str(registry), "--dns-listen", "127.0.0.1:53",
                                    "--dns-listen", "10.244.3.1:53", "--dns-workers", "1",
                                    "--pod-cidr", "10.244.0.0/16", *extra], env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: http("/readyz").startswith("ok"), 60, what="the agent to be ready")
        return proc

    def http(path):
        out = lab.node.run(["curl", "-s", "--max-time", "2", f"http://127.0.0.1:10256{path}"], check=False)
        return out.stdout

    def dig(name, ns=None, server="10.244.3.1"):
        return (
            (ns or lab.pod_list[2].ns)
            .run(["dig", "+short", "+time=1", "+tries=2", f"@{server}", name], check=False)
            .stdout.strip()
        )

    def ask(vip, count=1):
        return lab.pod_list[2].ns.run([*PY, "svcdns.testing.podserver", "--client", vip, "80", "--count", str(count)],
                                      check=False, env=env).stdout.split()  # fmt: skip

    lab.svcdns, lab.start_agent, lab.http, lab.dig, lab.ask, lab.registry, lab.env = (
        svcdns,
        start_agent,
        http,
        dig,
        ask,
        registry,
        env,
    )
    return lab


def test_create_change_delete_seen_by_a_pod_with_dig_and_connect(node, record_property):
    p1, p2, _ = node.pod_list
    node.start_agent()
    t0 = time.monotonic()
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    node.svcdns("endpoint", "add", "web", str(p1.ipv4))
    wait_for(lambda: node.ask(vip) == [str(p1.ipv4)], 10, what="the VIP to work")
    record_property("registry_write_to_working_vip_seconds", round(time.monotonic() - t0, 3))
    assert node.dig("web.default.svc.cluster.local") == vip
    node.svcdns("endpoint", "add", "web", str(p2.ipv4))
    wait_for(lambda: set(node.ask(vip, 20)) == {str(p1.ipv4), str(p2.ipv4)}, 10, what="both endpoints")
    node.svcdns("service", "rm", "web")
    wait_for(lambda: node.dig("web.default.svc.cluster.local") == "", 10, what="the name to go")
    wait_for(lambda: "error" in " ".join(node.ask(vip)), 10, what="the VIP to stop")
    status = json.loads(node.http("/status"))
    assert status["services"] == 0 and status["ready"] and status["healthy"]
    metrics = node.http("/metrics")
    assert "svcdns_sync_duration_seconds_count" in metrics
    # every query is counted by rcode and timed, answers from the workers' cache included
    before = dns_counts(metrics)
    for _ in range(5):
        assert node.dig("nope.default.svc.cluster.local") == ""  # NXDOMAIN, the same query: cached after the first
    after = dns_counts(node.http("/metrics"))
    assert after["NXDOMAIN"] - before.get("NXDOMAIN", 0) == 5
    assert after["timed"] == sum(n for rcode, n in after.items() if rcode != "timed")


def dns_counts(metrics: str) -> dict:
    """DNS responses by rcode, and how many the duration histograms hold, all types ("timed")."""
    counts = {"timed": 0.0}
    for line in metrics.splitlines():
        if line.startswith("svcdns_dns_responses_total{"):
            counts[line.split('"')[1]] = float(line.split()[-1])
        elif line.startswith("svcdns_dns_request_duration_seconds_count"):
            counts["timed"] += float(line.split()[-1])
    return counts


def test_restart_drops_no_connection(node):
    p1, p2, _ = node.pod_list
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    node.svcdns("endpoint", "add", "web", str(p1.ipv4))
    node.svcdns("endpoint", "add", "web", str(p2.ipv4))
    agent = node.start_agent()
    failures, answers, stop = [], [], threading.Event()

    def loop():
        while not stop.is_set():
            got = node.ask(vip, 5)
            answers.extend(got)
            failures.extend(x for x in got if x.startswith("error"))

    t = threading.Thread(target=loop)
    t.start()
    time.sleep(1)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0  # stops cleanly, leaving the rules in place
    time.sleep(1)  # no agent at all: the kernel keeps serving the VIP
    node.start_agent()  # adopts the live table
    time.sleep(1)
    stop.set()
    t.join(30)
    assert len(answers) > 20 and failures == []


def test_a_file_that_goes_bad_keeps_the_service_working(node):
    p1 = node.pod_list[0]
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    node.svcdns("endpoint", "add", "web", str(p1.ipv4))
    node.start_agent()
    (node.registry / "default" / "web.yaml").write_text("name: web\nports: [{port: 99999}]\n")
    wait_for(lambda: "99999" in node.http("/status"), 10, what="the agent to report the bad file")
    assert node.ask(vip) == [str(p1.ipv4)]
    assert node.dig("web.default.svc.cluster.local") == vip


def test_registry_directory_gone_keeps_everything_until_it_returns(node):
    p1 = node.pod_list[0]
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    node.svcdns("endpoint", "add", "web", str(p1.ipv4))
    node.start_agent()
    backup = node.registry.parent / "backup"
    shutil.copytree(node.registry, backup)
    shutil.rmtree(node.registry)
    wait_for(lambda: "does not exist" in node.http("/healthz"), 10, what="the agent to report the registry gone")
    assert node.ask(vip) == [str(p1.ipv4)] and node.dig("web.default.svc.cluster.local") == vip
    shutil.copytree(backup, node.registry)
    wait_for(lambda: json.loads(node.http("/status"))["registryProblem"] is None, 10, what="the registry back")
    assert node.ask(vip) == [str(p1.ipv4)]


def test_sighup_reloads_the_configuration(node, tmp_path):
    conf = tmp_path / "svcdns.toml"
    conf.write_text("[dns]\nttl = 5\n")
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    agent = node.spawn(node.node, [*PY, "svcdns", "agent", "--config", str(conf), "--registry", str(node.registry),
                                   "--dns-listen", "127.0.0.1:53", "--dns-workers", "1"],
                       env=node.env, stdout=subprocess.DEVNULL)  # fmt: skip
    wait_for(lambda: node.http("/readyz").startswith("ok"), 60, what="the agent to be ready")

    def ttl():
        out = node.node.run(["dig", "+noall", "+answer", "@127.0.0.1", "web.default.svc.cluster.local"], check=False)
        fields = out.stdout.split()
        return fields[1] if len(fields) >= 5 and fields[4] == vip else None

    assert ttl() == "5"
    conf.write_text("[dns]\nttl = 30\n")
    agent.send_signal(signal.SIGHUP)
    wait_for(lambda: ttl() == "30", 30, what="the new TTL after SIGHUP")
    conf.write_text("[dns]\nttl = 'soon'\n")  # a bad file: refused, the running configuration stays
    agent.send_signal(signal.SIGHUP)
    time.sleep(2)
    assert agent.poll() is None
    wait_for(lambda: ttl() == "30", 30, what="answers with the kept configuration")


def test_the_agent_with_the_iptables_backend_serves_a_vip(node):
    p1, p2, _ = node.pod_list
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    node.svcdns("endpoint", "add", "web", str(p1.ipv4))
    node.start_agent("--dataplane", "iptables")
    wait_for(lambda: node.ask(vip) == [str(p1.ipv4)], 10, what="the VIP to work")
    node.svcdns("endpoint", "add", "web", str(p2.ipv4))  # a partial sync
    wait_for(lambda: set(node.ask(vip, 20)) == {str(p1.ipv4), str(p2.ipv4)}, 10, what="both endpoints")
    assert node.dig("web.default.svc.cluster.local") == vip
    nat = node.node.run(["iptables-save", "-t", "nat"]).stdout
    assert "SVCDNS-SVC-" in nat and "svcdns" not in node.node.run(["nft", "list", "tables"]).stdout


def test_drift_is_repaired_and_only_drift_costs_a_full_sync(node, tmp_path):
    """Someone flushes svcdns's table: the next drift check (here every second) puts it back; while
    nobody touches nftables, the checks rewrite nothing (the full-sync count stays put)."""
    p1 = node.pod_list[0]
    conf = tmp_path / "svcdns.toml"
    conf.write_text("full_sync_period = 1\n")
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    node.svcdns("endpoint", "add", "web", str(p1.ipv4))
    node.start_agent("--config", str(conf))

    def full_syncs():
        for line in node.http("/metrics").splitlines():
            if line.startswith('svcdns_sync_duration_seconds_count{kind="full"}'):
                return float(line.split()[-1])
        return 0.0

    assert node.ask(vip) == [str(p1.ipv4)]
    time.sleep(3.5)  # three drift checks with nothing changed behind the agent's back
    assert full_syncs() == 1
    node.node.run(["nft", "flush", "table", "ip", "svcdns"])
    wait_for(lambda: full_syncs() >= 2, 10, what="a full sync after the flush")
    assert node.ask(vip) == [str(p1.ipv4)]


@pytest.mark.parametrize("dataplane", ["nftables", "iptables"])
def test_a_flushed_ruleset_is_put_back_within_seconds(node, dataplane):
    """Debian's nftables.service runs `flush ruleset` at every start, restart and reload: every
    table goes, svcdns's too (and iptables-nft's, with the SVCDNS- chains). The agent notices within
    a second and puts its rules back, without waiting for the drift period (60 s by default)."""
    p1 = node.pod_list[0]
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    node.svcdns("endpoint", "add", "web", str(p1.ipv4))
    node.start_agent("--dataplane", dataplane)
    assert node.ask(vip) == [str(p1.ipv4)]
    node.node.run(["nft", "flush", "ruleset"])
    wait_for(lambda: node.ask(vip) == [str(p1.ipv4)], 10, what="the VIP to work again")


def test_a_second_agent_in_the_namespace_is_refused_and_changes_nothing(node, tmp_path):
    """Issue 12: a second agent (a debug run on an empty registry) shared :53 through SO_REUSEPORT
    and rewrote the table; now it exits 1 naming the first, before it binds or programs anything."""
    p1 = node.pod_list[0]
    first = node.start_agent()
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    node.svcdns("endpoint", "add", "web", str(p1.ipv4))
    wait_for(lambda: node.ask(vip) == [str(p1.ipv4)], 10, what="the VIP to work")
    empty = tmp_path / "empty"
    empty.mkdir()
    second = node.node.run([*PY, "svcdns", "agent", "--registry", str(empty), "--health-listen", "127.0.0.1:10257",
                            "--dns-workers", "1"], check=False, env=node.env, timeout=30)  # fmt: skip
    assert second.returncode == 1, second.stderr
    assert f"another svcdns agent (PID {first.pid}) already runs in this network namespace" in second.stderr
    answers = {node.dig("web.default.svc.cluster.local", server="127.0.0.1", ns=node.node) for _ in range(10)}
    assert answers == {vip}, f"answers from a second zone: {answers}"
    assert node.ask(vip, 5) == [str(p1.ipv4)] * 5


def test_reloads_keep_dns_answering_and_the_revision(node, tmp_path):
    """Issue 12 section 5: SIGHUP rebuilt the agent (1 timeout and 15 SERVFAIL over 0.2 s, the
    revision back to 1). Now a query loop across 5 reloads (a TTL change restarts DNS, make before
    break; no change keeps it) sees no failure, and the revision goes on."""
    conf = tmp_path / "svcdns.toml"
    conf.write_text("[dns]\nttl = 5\n")
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    agent = node.spawn(node.node, [*PY, "svcdns", "agent", "--config", str(conf), "--registry", str(node.registry),
                                   "--dns-listen", "127.0.0.1:53", "--dns-workers", "1"],
                       env=node.env, stdout=subprocess.DEVNULL)  # fmt: skip
    wait_for(lambda: node.http("/readyz").startswith("ok"), 60, what="the agent to be ready")
    revision = json.loads(node.http("/status"))["revision"]
    answers, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            out = node.node.run(["dig", "+short", "+time=1", "+tries=1", "@127.0.0.1", "web.default.svc.cluster.local"],
                                check=False)  # fmt: skip
            answers.append(out.stdout.strip())

    t = threading.Thread(target=loop)
    t.start()
    try:
        for i, ttl in enumerate((30, 30, 7, 7, 12)):
            conf.write_text(f"[dns]\nttl = {ttl}\n")
            seen = len(answers)
            agent.send_signal(signal.SIGHUP)
            wait_for(lambda seen=seen: len(answers) > seen + 20, 30, what=f"queries after reload {i + 1}")
    finally:
        stop.set()
        t.join(10)
    failed = [a for a in answers if a != vip]
    assert not failed, f"{len(failed)} of {len(answers)} queries failed across 5 reloads: {failed[:5]}"
    status = json.loads(node.http("/status"))
    assert status["revision"] >= revision > 0 and status["ready"], status
    assert agent.poll() is None


def test_a_pod_resolves_services_through_the_cluster_dns_address_and_its_resolv_conf(node):
    """Issue 14: from a pod with the default configuration, @127.0.0.1 and @10.96.0.10 failed and
    its resolv.conf sent Service names to the host's resolvers. Now the agent puts 10.96.0.10 on a
    dummy interface of the node and answers there; `svcdns resolv-conf --write` gives the pod the
    file `ip netns exec` reads, and glibc resolves the short name."""
    p1, _, client = node.pod_list
    node.start_agent()
    vip = node.svcdns("service", "add", "web", "--port", "http:80:8080/tcp").strip()
    node.svcdns("endpoint", "add", "web", str(p1.ipv4))
    wait_for(lambda: node.dig("web.default.svc.cluster.local", server="10.96.0.10") == vip, 10,
             what="the cluster DNS address to answer from a pod")  # fmt: skip
    conf = Path("/etc/netns") / client.ns.name / "resolv.conf"
    try:
        node.svcdns("resolv-conf", "-n", "default", "--write", str(conf))
        assert conf.read_text().startswith("nameserver 10.96.0.10\nsearch default.svc.cluster.local ")
        for name in ("web", "web.default", "web.default.svc.cluster.local"):
            out = client.ns.run(["getent", "hosts", name], check=False)
            assert out.stdout.split()[:1] == [vip], f"getent hosts {name}: {out.stdout!r} {out.stderr!r}"
        assert node.ask(vip) == [str(p1.ipv4)]
    finally:
        shutil.rmtree(conf.parent, ignore_errors=True)
    held = [line.split()[1] for line in node.node.run(["ip", "-o", "addr", "show"]).stdout.splitlines()
            if " 10.96.0.10/32 " in line]  # fmt: skip
    assert held in (["svcdns0"], ["lo"]), held  # lo where the kernel has no dummy driver (this CI's)
