"""The systemd unit passes `systemd-analyze verify`, and `svcdns install --root` puts files in place."""

import os
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


LOG_SOME = """
import logging
from svcdns.cli import logs
logs.setup(logging.DEBUG)
log = logging.getLogger("svcdns.agent")
log.debug("tick")
log.info("ready: %d Services", 3)
log.warning("drift repaired in %s", "ip svcdns")
log.error("sync failed: %s", "EPERM")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("internal error")
"""


def _stderr_of(tmp_path, journal_stream: str | None) -> list[str]:
    """What a process that logs through cli/logs.py writes to its stderr (a file here), given JOURNAL_STREAM."""
    path = tmp_path / "stderr"
    path.touch()
    st = path.stat()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream.format(dev=st.st_dev, ino=st.st_ino)
    with open(path, "w") as err:
        subprocess.run([sys.executable, "-c", LOG_SOME], stderr=err, env=env, check=True, timeout=60)
    return path.read_text().splitlines()


def test_logs_carry_their_syslog_priority_when_stderr_is_the_journal(tmp_path):
    lines = _stderr_of(tmp_path, "{dev}:{ino}")
    assert lines[:4] == [
        "<7>DEBUG svcdns.agent: tick",
        "<6>INFO svcdns.agent: ready: 3 Services",
        "<4>WARNING svcdns.agent: drift repaired in ip svcdns",
        "<3>ERROR svcdns.agent: sync failed: EPERM",
    ]
    assert lines[4] == "<3>ERROR svcdns.agent: internal error"
    assert lines[5:] and all(line.startswith("<3>") for line in lines[5:])  # the traceback too
    assert lines[-1] == "<3>ValueError: boom"


@pytest.mark.parametrize("journal_stream", [None, "{dev}:1", "garbage"], ids=["unset", "inherited", "garbled"])
def test_logs_keep_the_plain_format_when_stderr_is_not_the_journal(tmp_path, journal_stream):
    # "inherited": a child of the service whose stderr was redirected still sees JOURNAL_STREAM
    lines = _stderr_of(tmp_path, journal_stream)
    assert lines[:4] == [
        "DEBUG svcdns.agent: tick",
        "INFO svcdns.agent: ready: 3 Services",
        "WARNING svcdns.agent: drift repaired in ip svcdns",
        "ERROR svcdns.agent: sync failed: EPERM",
    ]
    assert not any(line.startswith("<") for line in lines)
