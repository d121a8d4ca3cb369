"""The agent against an etcd with authentication, its password in password_file: it works, and the
password is nowhere to be seen: not on its command line (ps), in its log, in /healthz, /status or
/metrics; /metrics is served on its own listener; a reload reads the file again."""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from svcdns.testing.etcd import EtcdServer
from svcdns.testing.lab import wait_for

PY = [sys.executable, "-m"]
pytestmark = pytest.mark.skipif(not shutil.which("etcd") and not os.path.exists("/usr/bin/etcd"),
                                reason="needs Debian's etcd-server (tests/run installs it)")  # fmt: skip


def test_an_agent_with_a_password_file_shows_the_password_nowhere(make_lab, tmp_path):
    lab = make_lab(pods=0, tag="sec")
    etcd = EtcdServer(tmp_path / "etcd", netns=lab.node, auth=True)
    with etcd:
        password = etcd.PASSWORD
        url = etcd.url.split("?")[0].replace("etcd://", "etcd://root@").replace("/svcdns-test", "/secrets")  # (not the password)
        pw = tmp_path / "etcd-password"
        pw.write_text(password + "\n")
        pw.chmod(0o600)
        conf = tmp_path / "svcdns.toml"
        conf.write_text(f'registry = "{url}"\npassword_file = "{pw}"\nhealth_listen = "127.0.0.1:10256"\n'
                        'metrics_listen = "127.0.0.1:10249"\n[dns]\nlisten = ["127.0.0.1:53"]\nworkers = 1\n')  # fmt: skip
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        env.pop("SVCDNS_CONFIG", None)
        log = tmp_path / "agent.log"
        agent = lab.spawn(lab.node, [*PY, "svcdns", "agent", "--config", str(conf)], env=env,
                          stdout=subprocess.DEVNULL, stderr=log.open("w"))  # fmt: skip

        def http(port, path):
            return lab.node.run(["curl", "-s", "--max-time", "2", f"http://127.0.0.1:{port}{path}"], check=False).stdout

        wait_for(lambda: http(10256, "/readyz").startswith("ok"), 60, what="the agent to be ready")
        cli_env = dict(env, SVCDNS_ETCD_PASSWORD_FILE=str(pw))
        vip = lab.node.run([*PY, "svcdns", "service", "add", "web", "--port", "80", "--registry", url],
                           env=cli_env).stdout.strip()  # fmt: skip
        dig = ["dig", "+short", "+time=1", "+tries=2", "@127.0.0.1", "web.default.svc.cluster.local"]
        wait_for(lambda: lab.node.run(dig, check=False).stdout.strip() == vip, 10, what="the name to answer")

        seen = {
            "ps": open(f"/proc/{agent.pid}/cmdline").read().replace("\0", " "),
            "/healthz": http(10256, "/healthz"),
            "/status": http(10256, "/status"),
            "/metrics": http(10249, "/metrics"),
        }
        assert "svcdns agent --config" in seen["ps"]
        assert url in seen["/status"] and url in seen["/healthz"]  # (no password in it to redact)
        assert "svcdns_sync_last_timestamp_seconds" in seen["/metrics"]
        assert 'svcdns_dns_requests_total{proto="udp",type="A"}' in seen["/metrics"]
        assert http(10249, "/status").startswith("not found") and http(10256, "/metrics").startswith("not found")

        pw.chmod(0o644)  # a reload reads the file again: refused, and the running configuration stays
        os.kill(agent.pid, signal.SIGHUP)
        wait_for(lambda: "reload refused" in log.read_text(), 10, what="the reload to be refused")
        assert "mode 0644" in log.read_text() and agent.poll() is None
        assert http(10256, "/livez").startswith("ok")
        pw.write_text("not-the-password-either\n")  # a new password: a new watch, named but not shown
        pw.chmod(0o600)
        os.kill(agent.pid, signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in log.read_text(), 10, what="the reload")
        assert "registry_password changed" in log.read_text()
        wait_for(lambda: "authentication as 'root' failed" in http(10256, "/healthz"), 20, what="etcd to refuse it")
        seen["/healthz refused"] = http(10256, "/healthz")
        lab.stop(agent)  # the log is complete once the agent stopped
        seen["log"] = log.read_text()
        assert "agent: registry etcd://root@127.0.0.1" in seen["log"]
        for where, text in seen.items():
            assert password not in text and "not-the-password-either" not in text, where
