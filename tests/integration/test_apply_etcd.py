"""`svcdns apply -f` of the tutorial's manifests on the etcd registry, with two agents on two hosts
(two "node" namespaces, as test_etcd_agents.py): from a pod on each host the API's and the
database's names resolve and their VIPs connect, and the API pod reaches the database by name.

The manifests' pods are addressed to the lab's pod addresses (10.244.1.2 ... 10.244.4.2); each host
has its own four pods at those addresses, so each host's VIPs lead to its own pods. The pods name
node-1 (host A's agent): it probes the API pod that has a readinessProbe, and host B takes the
verdict from etcd.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svcdns.testing.etcd import EtcdServer
from svcdns.testing.lab import link, wait_for

PY = [sys.executable, "-m"]
TUTORIAL = Path(__file__).parent.parent / "manifests" / "tutorial" / "app.yaml"
DNS = "10.244.1.1"  # the node's address on its first pod's link, in each host
pytestmark = pytest.mark.skipif(not shutil.which("etcd"), reason="needs Debian's etcd-server (tests/run installs it)")


def test_apply_of_the_tutorial_on_etcd_gives_working_vips_and_names_on_both_hosts(make_lab, tmp_path):
    a, b = make_lab(pods=4, tag="ta"), make_lab(pods=4, tag="tb")
    link(a.node, b.node, "10.242.0.1/30", "10.242.0.2/30")
    etcd = EtcdServer(tmp_path / "etcd", host="10.242.0.1", netns=a.node)
    etcd.data_root.mkdir()
    etcd.start()
    try:
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        url = etcd.url.rsplit("/", 1)[0] + "/tutorial"
        for lab in (a, b):
            for pod in lab.pod_list[:3]:  # HTTP: the manifest's httpGet readinessProbe must pass
                lab.serve(pod, 8080, "http")
            lab.serve(lab.pod_list[3], 5432, "tcp")

        def svcdns(lab, *args):
            return lab.node.run([*PY, "svcdns", *args, "--registry", url], env=env).stdout

        out = svcdns(b, "apply", "-f", str(TUTORIAL))  # from host B: the CLI reaches etcd over the link
        assert "service/api created" in out and "service/db created" in out and out.count("pod/") == 4, out
        for lab, node in ((a, "node-1"), (b, "node-2")):
            lab.spawn(lab.node, [*PY, "svcdns", "agent", "--registry", url, "--node-name", node, "--dns-listen",
                                 f"{DNS}:53", "--dns-workers", "1", "--pod-cidr", "10.244.0.0/16"],
                      env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        api_vip = svcdns(a, "service", "get", "api", "-o", "json").split('"clusterIP": "')[1].split('"')[0]
        db_vip = svcdns(a, "service", "get", "db", "-o", "json").split('"clusterIP": "')[1].split('"')[0]
        assert api_vip != db_vip

        def dig(ns, name):
            return ns.run(["dig", "+short", "+time=1", "+tries=2", f"@{DNS}", name], check=False).stdout.strip()

        def ask(ns, vip, port, count):
            return set(ns.run([*PY, "svcdns.testing.podserver", "--client", vip, str(port), "--count", str(count),
                               "--timeout", "2"], check=False, env=env).stdout.split())  # fmt: skip

        def pages(ns, count):
            """The pods that answered ``count`` HTTP requests to the api VIP (the page names its pod)."""
            seen = set()
            for _ in range(count):
                seen.update(ns.run(["curl", "-s", "--max-time", "2", f"http://{api_vip}/"], check=False).stdout.split()[-1:])
            return seen

        api_ips = {str(p.ipv4) for p in a.pod_list[:3]}
        for lab in (a, b):
            client = lab.pod_list[0].ns  # an API pod, as the tutorial's API reaches its database
            wait_for(lambda lab=lab, c=client: dig(c, "api.default.svc.cluster.local") == api_vip, 60,
                     what=f"the api name from a pod of {lab.tag}")  # fmt: skip
            assert dig(client, "db.default.svc.cluster.local") == db_vip
            # the probed API pod joins once host A's prober saw it pass (host B: through etcd)
            wait_for(lambda c=client: pages(c, 20) == api_ips, 30, what=f"the three api pods behind the VIP from {lab.tag}")
            wait_for(lambda c=client, db=str(lab.pod_list[3].ipv4): ask(c, db_vip, 5432, 3) == {db}, 15,
                     what=f"the api pod of {lab.tag} to reach db by its VIP")  # fmt: skip
        out = svcdns(a, "endpoint", "list", "db", "-o", "json")
        assert '"kind": "Pod"' in out and '"name": "db-0"' in out, out  # targetRef: the pod it came from
    finally:
        etcd.stop()


# ---- one transaction per file (svcdns.registry.etcd.batch): these need only etcd on loopback -------------------

FILE = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, labels: {app: web}}
spec: {containers: [{name: web, image: web}]}
status: {podIP: 10.244.1.2, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: 10.96.0.50
  ports: [{port: 5432}]
"""


@pytest.fixture
def etcd_cli(etcd_url, capsys, monkeypatch):
    """``svcdns`` in-process on this test's etcd prefix: (exit code, stdout, stderr)."""
    from svcdns.cli import main

    monkeypatch.setenv("SVCDNS_REGISTRY", etcd_url)
    monkeypatch.delenv("SVCDNS_SERVICE_CIDRS", raising=False)

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    run.url = etcd_url
    return run


def registry_keys(url):
    """Every key under the test's prefix, as a user of etcdctl would list them (the config aside)."""
    from svcdns.registry import open_registry

    reg = open_registry(url)
    try:
        _, kvs = reg.client.run(reg.client.range(reg.keys.root))
        return sorted(kv.key.decode()[len(reg.keys.prefix):] for kv in kvs if kv.key != reg.keys.config)
    finally:
        reg.close()


def test_a_file_whose_last_document_conflicts_leaves_nothing_of_it_in_etcd(etcd_cli, tmp_path):
    code, _, err = etcd_cli("service", "add", "other", "--port", "1", "--vip", "10.96.0.50")
    assert code == 0, err
    before = registry_keys(etcd_cli.url)
    path = tmp_path / "app.yaml"
    path.write_text(FILE)
    code, out, err = etcd_cli("apply", "-f", str(path))
    assert code != 0 and out == ""
    assert f"{path}:" in err and "10.96.0.50" in err and "default/other" in err and "nothing of it was applied" in err
    assert registry_keys(etcd_cli.url) == before  # no web, no web-0, no VIP key of web


def test_a_concurrent_write_between_read_and_commit_makes_it_retry_and_end_consistent(etcd_cli, tmp_path, monkeypatch):
    from svcdns.registry import open_registry
    from svcdns.registry.etcd.client import EtcdClient

    path = tmp_path / "app.yaml"
    path.write_text(FILE.replace("clusterIP: 10.96.0.50", "clusterIP: 10.96.0.51"))
    code, _, err = etcd_cli("apply", "-f", str(path))
    assert code == 0, err
    changed = tmp_path / "changed.yaml"
    changed.write_text(path.read_text().replace("port: 80,", "port: 81,").replace("port: 5432", "port: 5433"))
    other = open_registry(etcd_cli.url)
    original, commits = EtcdClient.txn, []

    async def txn(self, compares, ops):
        if any(op.key.endswith(b"/services/default/db") for op in ops) and len(ops) > 1:
            commits.append(len(ops))
            if len(commits) == 1:  # another writer changes one of the file's keys after the file read it
                other.update("default", "web", _relabel)
        return await original(self, compares, ops)

    monkeypatch.setattr(EtcdClient, "txn", txn)
    try:
        code, out, err = etcd_cli("apply", "-f", str(changed))
    finally:
        other.close()
    assert code == 0, err
    assert len(commits) == 2  # the first lost its compare on web; the second read web again
    assert out.splitlines() == ["service/web configured", "pod/web-0 unchanged", "service/db configured"]
    code, out, _ = etcd_cli("service", "list", "-o", "json")
    items = {s["name"]: s for s in json.loads(out)["items"] if s["namespace"] == "default"}
    assert items["web"]["ports"][0]["port"] == 81 and items["db"]["ports"][0]["port"] == 5433
    assert items["db"]["clusterIP"] == "10.96.0.51"
    vip_keys = [k for k in registry_keys(etcd_cli.url) if k.startswith("/vips/")]
    assert sorted(vip_keys) == sorted(f"/vips/{items[n]['clusterIP']}" for n in ("web", "db"))


def _relabel(svc):
    from dataclasses import replace

    return replace(svc, labels=(("by", "someone-else"),))
