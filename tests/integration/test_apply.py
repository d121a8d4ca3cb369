"""`svcdns apply -f` of the tutorial's manifests in namespaces: the API's three pods and the database
pod (addressed to lab pods by the svcdns.io/pod-ips annotation) get working VIPs and names, and the
API reaches the database by its Service name."""

import subprocess
import sys
from pathlib import Path

from svcdns.testing.lab import wait_for

PY = [sys.executable, "-m"]
TUTORIAL = Path(__file__).parent.parent / "manifests" / "tutorial" / "app.yaml"
DNS = "10.244.4.1"


def test_apply_of_the_tutorial_gives_working_vips_and_names(make_lab, cli):
    lab = make_lab(pods=4)
    api_pods, db_pod = lab.pod_list[:3], lab.pod_list[3]
    assert [str(p.ipv4) for p in lab.pod_list] == ["10.244.1.2", "10.244.2.2", "10.244.3.2", "10.244.4.2"]  # the annotations
    for pod in api_pods:  # HTTP: the manifest's readinessProbe (httpGet /healthz on port http) must pass
        lab.serve(pod, 8080, "http")
    lab.serve(db_pod, 5432, "tcp")
    out = cli("apply", "-f", str(TUTORIAL))
    assert "service/api created" in out and "service/db created" in out and out.count("pod/") == 4
    lab.spawn(lab.node, [*PY, "svcdns", "agent", "--registry", str(cli.registry), "--dns-listen", f"{DNS}:53",
                         "--dns-workers", "1", "--pod-cidr", "10.244.0.0/16"], env=cli.env, stdout=subprocess.DEVNULL)  # fmt: skip

    def dig(ns, name):
        return ns.run(["dig", "+short", "+time=1", "+tries=2", f"@{DNS}", name], check=False).stdout.strip()

    def pages(ns, vip, count):
        """The pods that answered ``count`` HTTP requests to ``vip``:80 (the page names its pod)."""
        seen = set()
        for _ in range(count):
            out = ns.run(["curl", "-s", "--max-time", "2", f"http://{vip}/"], check=False).stdout.split()
            seen.update(out[-1:])
        return seen

    def ask(ns, vip, port, count):
        return set(ns.run([*PY, "svcdns.testing.podserver", "--client", vip, str(port), "--count", str(count)],
                          check=False, env=cli.env).stdout.split())  # fmt: skip

    api_vip = cli("service", "get", "api", "-o", "json").split('"clusterIP": "')[1].split('"')[0]
    wait_for(lambda: dig(lab.node, "api.default.svc.cluster.local") == api_vip, 60, what="the api name from the node")
    # the three pods become ready only once their probes pass (Kubernetes: not ready until the first success)
    wait_for(lambda: pages(lab.node, api_vip, 30) == {str(p.ipv4) for p in api_pods}, 30,
             what="all three api pods behind the VIP, their readiness probes passed")  # fmt: skip

    # an API pod finds the database by its Service's name and reaches it at that VIP
    api = api_pods[0].ns
    db_vip = dig(api, "db.default.svc.cluster.local")
    assert db_vip and db_vip != api_vip
    wait_for(lambda: ask(api, db_vip, 5432, 3) == {str(db_pod.ipv4)}, 15, what="the api pod to reach db by its VIP")

    # applying again changes nothing; deleting the file takes the names away
    assert set(line.split()[1] for line in cli("apply", "-f", str(TUTORIAL)).splitlines()) == {"unchanged"}
    cli("delete", "-f", str(TUTORIAL))
    wait_for(lambda: dig(lab.node, "api.default.svc.cluster.local") == "", 15, what="the api name to go")
