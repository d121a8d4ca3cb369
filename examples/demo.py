"""The README demo (``bash examples/demo.sh``): the agent on the embedded file registry, checked
with ``dig`` and a TCP client (``curl``), in network namespaces of its own.

It builds a "node" namespace and two "pod" namespaces serving HTTP, registers a Service ``web`` with
the pods as endpoints, starts ``svcdns agent`` in the node namespace, and shows ``dig`` answering the
VIP and ``curl`` to the VIP reaching both pods, then an endpoint leaving. Everything is torn down on
exit; the host's own network namespace is never touched.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from svcdns.testing.lab import Lab, wait_for


def say(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def show(argv: list[str], ns=None, env=None, check: bool = True) -> str:
    shown = ["svcdns", *argv[3:]] if argv[:3] == [sys.executable, "-m", "svcdns"] else argv
    where = f"[{ns.name.rsplit('-', 1)[-1]}] " if ns is not None else ""
    print(f"{where}$ {' '.join(shlex.quote(a) for a in shown)}", flush=True)
    run = ns.run if ns is not None else None
    proc = run(argv, check=False, env=env) if run else subprocess.run(argv, capture_output=True, text=True, env=env)
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: {' '.join(shown)} failed with exit code {proc.returncode}")
    return proc.stdout


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it builds network namespaces)", file=sys.stderr)
        return 2
    svcdns = [sys.executable, "-m", "svcdns"]
    with tempfile.TemporaryDirectory(prefix="svcdns-demo-") as registry, Lab(pods=3, tag="demo") as lab:
        env = dict(os.environ, SVCDNS_REGISTRY=registry)
        p1, p2, client = lab.pod_list
        say("Two pods serve HTTP on port 8080 (each in its own network namespace); a third is a client")
        for pod in (p1, p2):
            lab.serve(pod, 8080, "http")
            print(f"pod{pod.index}: {pod.ipv4}")

        say("The pods are registered once, with labels; a Service selects them (the registry is a directory)")
        show([*svcdns, "pod", "add", "web-0", str(p1.ipv4), "-l", "app=web"], env=env)
        show([*svcdns, "pod", "add", "web-1", str(p2.ipv4), "-l", "app=web"], env=env)
        show([*svcdns, "service", "add", "web", "--selector", "app=web", "--port", "http:80:8080/tcp"], env=env)
        show([*svcdns, "endpoint", "list", "web"], env=env)
        vip = show([*svcdns, "service", "get", "web", "-o", "json"], env=env).split('"clusterIP": "')[1].split('"')[0]

        say("The agent in the node namespace: registry -> nftables rules -> DNS")
        agent = lab.spawn(lab.node, [*svcdns, "agent", "--registry", registry, "--dns-listen", "127.0.0.1:53",
                                     "--health-listen", "127.0.0.1:10256", "--dns-workers", "1"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: lab.node.run(["curl", "-sf", "http://127.0.0.1:10256/readyz"], check=False).returncode == 0,
                 60, what="the agent to be ready")  # fmt: skip
        assert agent.poll() is None
        show([*svcdns, "status"], ns=lab.node)

        say("dig: the Service name answers the VIP")
        answer = show(["dig", "+short", "@127.0.0.1", "web.default.svc.cluster.local"], ns=lab.node)
        if answer.strip() != vip:
            raise SystemExit(f"demo: dig answered {answer.strip()!r}, expected {vip}")
        show(["dig", "+short", "@127.0.0.1", "_http._tcp.web.default.svc.cluster.local", "SRV"], ns=lab.node)

        say("curl: the VIP reaches both pods")
        seen = set()
        for _ in range(8):
            seen.add(show(["curl", "-s", "--max-time", "2", f"http://{vip}/"], ns=lab.node).strip())
        if seen != {f"hello from pod {p1.ipv4}", f"hello from pod {p2.ipv4}"}:
            raise SystemExit(f"demo: curl reached {sorted(seen)}, expected both pods")

        say("A client pod: its resolv.conf names the cluster DNS address (10.96.0.10), so short names work")
        conf = Path("/etc/netns") / client.ns.name / "resolv.conf"  # what `ip netns exec` shows the pod
        try:
            show([*svcdns, "resolv-conf", "-n", "default", "--write", str(conf)], env=env)
            show(["cat", "/etc/resolv.conf"], ns=client.ns)
            show(["getent", "hosts", "web"], ns=client.ns)
            pages = {show(["curl", "-s", "--max-time", "2", "http://web/"], ns=client.ns).strip() for _ in range(6)}
            if not pages <= {f"hello from pod {p1.ipv4}", f"hello from pod {p2.ipv4}"} or "" in pages:
                raise SystemExit(f"demo: curl http://web/ from the client pod got {sorted(pages)}")
        finally:
            shutil.rmtree(conf.parent, ignore_errors=True)

        say("A pod goes away: new connections go to the other one")
        show([*svcdns, "pod", "rm", "web-0"], env=env)

        def moved() -> bool:
            got = {
                lab.node.run(["curl", "-s", "--max-time", "2", f"http://{vip}/"], check=False).stdout for _ in range(6)
            }
            return got == {f"hello from pod {p2.ipv4}\n"}

        wait_for(moved, 10, what="the agent to apply the change")
        for _ in range(4):
            show(["curl", "-s", "--max-time", "2", f"http://{vip}/"], ns=lab.node)

        say("The rules svcdns programmed (nft list table ip svcdns, in the node namespace)")
        show(["nft", "list", "table", "ip", "svcdns"], ns=lab.node)
    print("\ndemo: done; the namespaces, the agent and the temporary registry are gone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
