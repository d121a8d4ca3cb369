"""The systemd unit passes `systemd-analyze verify`, and `svcdns install --root` puts files in place."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svcdns.cli import main

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "svcdns.service"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze (Debian package systemd)")
def test_unit_verifies(tmp_path):
    svcdns = Path(sys.executable).parent / "svcdns"
    exe = str(svcdns) if svcdns.exists() else shutil.which("true")
    unit = tmp_path / "svcdns.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/svcdns", exe))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "svcdns.service" not in proc.stderr  # no warning about our unit


def test_unit_is_notify_hardened_and_restarts():
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "StateDirectory=svcdns",
                 "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW"):  # fmt: skip
        assert line in text


def test_install_and_uninstall_below_a_root(tmp_path, capsys):
    assert main(["install", "--root", str(tmp_path)]) == 0
    unit = tmp_path / "etc/systemd/system/svcdns.service"
    assert "Type=notify" in unit.read_text()
    assert (tmp_path / "etc/svcdns/svcdns.toml").exists()
    assert "Domains=~cluster.local" in (tmp_path / "etc/systemd/resolved.conf.d/svcdns.conf").read_text()
    assert main(["uninstall", "--root", str(tmp_path)]) == 0
    assert not unit.exists() and (tmp_path / "etc/svcdns/svcdns.toml").exists()  # the config is kept
