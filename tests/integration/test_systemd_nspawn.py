"""The systemd unit in a real systemd: a minimal Debian booted with systemd-nspawn.

The root file system is debootstrapped once into /var/cache/svcdns-test/bookworm (minutes; kept for
later runs) and booted with ``--volatile=overlay`` (the image stays untouched) and
``--private-network``. The container has no network for pip, so this checkout and its Python are
bind-mounted read-only at the same paths; a drop-in relaxes ProtectHome (read-only) and PrivateTmp,
because that Python lives under /root and a CI checkout under /tmp (an installed svcdns lives in
/usr/local and needs no such drop-in).
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from svcdns.testing.lab import wait_for

ROOT = Path("/var/cache/svcdns-test/bookworm")
REPO = Path(__file__).resolve().parents[2]
PACKAGES = "systemd,systemd-sysv,dbus,iproute2,nftables,dnsutils,python3,ca-certificates"

pytestmark = pytest.mark.skipif(
    not (shutil.which("systemd-nspawn") and shutil.which("debootstrap")),
    reason="needs systemd-nspawn and debootstrap (Debian packages systemd-container, debootstrap)",
)


def rootfs() -> Path:
    if (ROOT / "usr/lib/systemd/systemd").exists():
        return ROOT
    tmp = ROOT.with_name(ROOT.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(tmp),
                           "http://deb.debian.org/debian"], capture_output=True, text=True, timeout=1500)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"debootstrap failed (no Debian mirror?): {proc.stderr.strip()[-300:]}")
    tmp.rename(ROOT)
    return ROOT


@pytest.fixture
def container(tmp_path):
    root = rootfs()
    pyhome = Path(sys.base_prefix)
    log = open(tmp_path / "nspawn.log", "w")
    boot = subprocess.Popen(
        ["systemd-nspawn", "-q", "--keep-unit", "--register=no", "-D", str(root), "--volatile=overlay",
         "--private-network", f"--bind-ro={pyhome}", f"--bind-ro={REPO}", "--boot"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip

    def leader() -> int | None:
        """The container's init: nspawn's child that runs systemd."""
        for kid in subprocess.run(["pgrep", "-P", str(boot.pid)], capture_output=True, text=True).stdout.split():
            try:
                if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                    return int(kid)
            except OSError:
                continue
        return None

    def run(*argv, check=True, timeout=60):
        env = {"PATH": f"{REPO}/.venv/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        return subprocess.run(["nsenter", "-t", str(pid), "-a", "--", *argv], capture_output=True, text=True,
                               env=env, check=check, timeout=timeout)  # fmt: skip

    try:
        pid = wait_for(leader, 30, 0.2, "the container's init")
        wait_for(lambda: run("systemctl", "is-system-running", check=False).stdout.strip() in ("running", "degraded"),
                 120, 0.5, "the container to boot")  # fmt: skip
        yield run
    finally:
        if boot.poll() is None:
            os.killpg(boot.pid, signal.SIGTERM)  # nspawn powers the container off
            try:
                boot.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(boot.pid, signal.SIGKILL)
                boot.wait(10)
        log.close()


def test_install_start_notify_dig_stop_and_restart_on_failure(container):
    run = container
    out = run("svcdns", "install").stdout
    assert "svcdns.service" in out
    dropin = "/etc/systemd/system/svcdns.service.d"
    run("mkdir", "-p", dropin)
    # the checkout and its Python are bind-mounted at their host paths, which may be under /root or /tmp
    run("sh", "-c", f"printf '[Service]\\nProtectHome=read-only\\nPrivateTmp=no\\n' > {dropin}/test.conf")
    run("systemctl", "daemon-reload")
    run("svcdns", "service", "add", "web", "--vip", "10.96.0.10", "--port", "80/tcp")
    started = run("systemctl", "start", "svcdns", check=False, timeout=120)  # Type=notify: waits for READY=1
    journal = run("journalctl", "-u", "svcdns", "--no-pager", "-n", "40", check=False).stdout
    assert started.returncode == 0, f"{started.stderr}\n{journal}"
    assert run("systemctl", "is-active", "svcdns").stdout.strip() == "active"
    assert "Services" in run("systemctl", "show", "-p", "StatusText", "svcdns").stdout
    wait_for(lambda: run("dig", "+short", "@127.0.0.1", "web.default.svc.cluster.local", check=False).stdout.strip()
             == "10.96.0.10", 30, 0.5, "dig to answer inside the container")  # fmt: skip
    first = run("systemctl", "show", "-p", "MainPID", "--value", "svcdns").stdout.strip()
    run("systemctl", "kill", "-s", "KILL", "svcdns")
    wait_for(lambda: run("systemctl", "show", "-p", "MainPID", "--value", "svcdns").stdout.strip() not in ("0", first)
             and run("systemctl", "is-active", "svcdns", check=False).stdout.strip() == "active",
             60, 0.5, "Restart=on-failure to bring it back")  # fmt: skip
    run("systemctl", "stop", "svcdns", timeout=60)
    assert run("systemctl", "is-active", "svcdns", check=False).stdout.strip() == "inactive"
    # SIGTERM left the rules in place; cleanup removes them
    assert "svcdns" in run("nft", "list", "tables").stdout
    run("svcdns", "cleanup")
    assert "svcdns" not in run("nft", "list", "tables").stdout
