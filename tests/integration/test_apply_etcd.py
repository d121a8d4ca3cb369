"""`svcdns apply -f` of the tutorial's manifests on the etcd registry, with two agents on two hosts
(two "node" namespaces, as test_etcd_agents.py): from a pod on each host the API's and the
database's names resolve and their VIPs connect, and the API pod reaches the database by name.

The manifests' pods are addressed to the lab's pod addresses (10.244.1.2 ... 10.244.4.2); each host
has its own four pods at those addresses, so each host's VIPs lead to its own pods. The pods name
node-1 (host A's agent): it probes the API pod that has a readinessProbe, and host B takes the
verdict from etcd.
"""

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
