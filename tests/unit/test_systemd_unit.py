"""The systemd unit: it verifies, `svcdns install` from a wheel puts it in place, and logs under systemd."""

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from svcdns.cli import build_parser, install
from svcdns.cli.manual import MAN_PAGE, man_page
from svcdns.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "svcdns" / "systemd"
UNIT = SHIPPED / "svcdns.service"
TEMPLATES = {p.name: p.read_text() for p in SHIPPED.iterdir()}


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze (Debian package systemd)")
def test_unit_verifies(tmp_path):
    unit = tmp_path / "svcdns.service"
    unit.write_text(install.unit_text(UNIT.read_text(), shutil.which("true")))
    # verify runs `man` for Documentation=man:svcdns(8): give it the page `svcdns install` writes
    (tmp_path / "man" / "man8").mkdir(parents=True)
    (tmp_path / "man" / "man8" / "svcdns.8").write_text(man_page(build_parser()))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MANPATH": str(tmp_path / "man")})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "svcdns.service" not in proc.stderr  # no warning about our unit


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze (Debian package systemd)")
def test_unit_exposure_is_at_most_2_5(tmp_path):
    plan = install.plan(TEMPLATES, shutil.which("true"), "/var/lib/svcdns/registry", with_resolved=False)
    (unit,) = [f for f in plan.files if f.rel == install.UNIT]
    path = tmp_path / "svcdns.service"
    path.write_text(unit.text)
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    found = re.search(r"Overall exposure level for svcdns.service: ([0-9.]+)", proc.stdout)
    if found is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline: {proc.stderr.strip()[-200:]}")
    assert float(found[1]) <= 2.5, proc.stdout


def test_unit_is_notify_hardened_and_restarts():
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "StateDirectory=svcdns",
                 "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW",
                 "SystemCallFilter=@system-service", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
                 "ProtectProc=invisible", "PrivateMounts=yes", "UMask=0077"):  # fmt: skip
        assert line in text
    assert "Documentation=man:svcdns(8)" in text  # svcdns install writes that page (svcdns.cli.manual)


@pytest.mark.parametrize(
    "entry, interpreter, package, hidden",
    [
        ("/root/src/svcdns/.venv/bin/svcdns", "/usr/bin/python3.11", "/root/src/svcdns/svcdns", "/root"),
        ("/opt/svcdns/bin/svcdns", "/root/.pyenv/versions/3.11.7/bin/python3.11", "/opt/svcdns/lib/svcdns", "/root"),
        ("/opt/svcdns/bin/svcdns", "/usr/bin/python3.11", "/home/ann/svcdns/svcdns", "/home"),
        ("/tmp/ci/.venv/bin/svcdns", "/usr/bin/python3.11", "/tmp/ci/svcdns", "/tmp"),
        ("/var/tmp/v/bin/svcdns", "/usr/bin/python3.11", "/var/tmp/v/svcdns", "/var/tmp"),
    ],
)
def test_install_refuses_what_the_hardening_hides(entry, interpreter, package, hidden):
    with pytest.raises(UsageError, match=f"under {hidden}.*/opt/svcdns/bin/pip install svcdns"):
        install.check_runnable(entry, interpreter, package)


@pytest.mark.parametrize(
    "entry, interpreter, package",
    [
        ("/opt/svcdns/bin/svcdns", "/usr/bin/python3.11", "/opt/svcdns/lib/python3.11/site-packages/svcdns"),
        ("/usr/local/bin/svcdns", "/usr/bin/python3.11", "/usr/local/lib/python3.11/dist-packages/svcdns"),
        ("/srv/checkout/.venv/bin/svcdns", "/usr/bin/python3.11", "/srv/checkout/svcdns"),
        ("/opt/rooted/bin/svcdns", "/usr/bin/python3.11", "/opt/rooted/svcdns"),  # "/root" as a prefix of a name
    ],
)
def test_install_accepts_what_the_service_sees(entry, interpreter, package):
    install.check_runnable(entry, interpreter, package)


def test_plan_writes_the_unit_and_a_private_config_and_resolved_only_on_request():
    plan = install.plan(TEMPLATES, "/opt/svcdns/bin/svcdns", "/var/lib/svcdns/registry", with_resolved=False)
    files = {f.rel: f for f in plan.files}
    assert set(files) == {install.UNIT, install.CONF}
    assert "ExecStart=/opt/svcdns/bin/svcdns agent --config /etc/svcdns/svcdns.toml\n" in files[install.UNIT].text
    assert files[install.CONF].mode == 0o600 and not files[install.CONF].replace
    # a registry moved back home needs no drop-in; an older install's global DNS= took every name
    assert plan.remove == (install.RESOLVED_DROPIN, install.REGISTRY_DROPIN)
    plan = install.plan(TEMPLATES, "/opt/svcdns/bin/svcdns", "/var/lib/svcdns/registry", with_resolved=True)
    assert install.RESOLVED_NETWORK in {f.rel for f in plan.files} and install.RESOLVED_DROPIN in plan.remove


@pytest.mark.parametrize(
    "registry, dropin",
    [
        ("/var/lib/svcdns/registry", None),
        ("/var/lib/svcdns", None),
        ("etcd://10.0.0.1:2379/svcdns", None),
        ("/srv/svcdns", "ReadWritePaths=/srv/svcdns"),
        ("/var/lib/svcdns-other", "ReadWritePaths=/var/lib/svcdns-other"),
        ("/srv/my registry", 'ReadWritePaths="/srv/my registry"'),
    ],
)
def test_a_registry_outside_the_state_directory_gets_a_writable_path(registry, dropin):
    text = install.registry_dropin(registry)
    if dropin is None:
        assert text is None
    else:
        assert f"[Service]\n{dropin}\n" in text


@pytest.mark.parametrize("registry", ["/home/ann/registry", "/tmp/registry", "relative/registry"])
def test_a_registry_the_service_cannot_reach_is_refused(registry):
    with pytest.raises(UsageError, match="registry"):
        install.registry_dropin(registry)


def _copy_source(dest: Path) -> Path:
    """The checkout's files without build leftovers: setuptools' build/ would carry deleted modules along."""
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")
    shutil.copytree(REPO, dest, ignore=skip)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """svcdns as a wheel, built as a user would (``pip wheel``), not the editable checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_source(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    (built,) = (tmp / "dist").glob("svcdns-*.whl")
    return built


def _venv(prefix: Path, python: str, wheel: Path) -> Path:
    """A fresh venv at ``prefix`` holding the wheel; its dependencies are borrowed from this test's own
    environment by a .pth file (the same Python minor version), so no index is needed."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(prefix)], check=True, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(prefix / "bin/python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (site,) = prefix.glob("lib/python3*/site-packages")
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "borrowed-deps.pth").write_text("\n".join(deps) + "\n")
    return prefix / "bin/svcdns"


def _system_python() -> str:
    """A Python outside the directories the unit hides, of this test's version (the borrowed deps need it)."""
    for python in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(python, os.X_OK):
            out = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                 text=True).stdout.strip()  # fmt: skip
            if out == str(sys.version_info[:2]):
                return python
    pytest.skip(f"needs a system Python {sys.version_info[0]}.{sys.version_info[1]} in /usr/bin or /usr/local/bin")


@pytest.fixture
def opt_prefix():
    """A temporary /opt/svcdns-like prefix: the unit hides /tmp, so a venv under tmp_path would be refused."""
    if not os.access("/opt", os.W_OK):
        pytest.skip("needs a writable /opt (root) for a venv the unit's hardening does not hide")
    prefix = Path(tempfile.mkdtemp(prefix="svcdns-test-", dir="/opt"))
    try:
        yield prefix
    finally:
        shutil.rmtree(prefix)


def test_install_from_a_wheel_in_a_venv_under_opt(wheel, opt_prefix, tmp_path):
    svcdns = _venv(opt_prefix / "venv", _system_python(), wheel)
    root = tmp_path / "root"

    def run(*argv, via=(str(svcdns),)):
        # cwd=/: `python -m` puts the working directory first on sys.path, and a checkout there (CI's
        # clone may lie under /tmp) would shadow the wheel's package
        return subprocess.run([*via, *argv, "--root", str(root)], capture_output=True, text=True, timeout=120,
                              cwd="/", env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})

    out = run("install")
    assert out.returncode == 0, out.stderr
    unit = (root / install.UNIT).read_text()
    assert f"ExecStart={svcdns} agent --config /etc/svcdns/svcdns.toml\n" in unit
    assert (root / install.UNIT).stat().st_mode & 0o777 == 0o644
    conf = root / install.CONF
    assert conf.read_text() == TEMPLATES["svcdns.toml"]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert not (root / install.RESOLVED_NETWORK).exists()  # only on request
    assert not (root / install.REGISTRY_DROPIN).exists()
    assert (root / "var/lib/svcdns/registry").is_dir()
    assert "next: systemctl enable --now svcdns" in out.stdout
    man = (root / MAN_PAGE).read_text()  # what the unit's Documentation=man:svcdns(8) names
    assert man.startswith('.TH SVCDNS "8"') and "svcdns service describe" in man

    # `python -m svcdns install` names the venv's svcdns command, not __main__.py
    conf.write_text(conf.read_text().replace('registry = "/var/lib/svcdns/registry"', 'registry = "/srv/reg"'))
    out = run("install", "--with-resolved", via=(str(svcdns.parent / "python"), "-m", "svcdns"))
    assert out.returncode == 0, out.stderr
    assert f"ExecStart={svcdns} agent" in (root / install.UNIT).read_text()
    assert "Domains=~cluster.local ~96.10.in-addr.arpa" in (root / install.RESOLVED_NETWORK).read_text()
    assert "ReadWritePaths=/srv/reg\n" in (root / install.REGISTRY_DROPIN).read_text()
    assert (root / "srv/reg").is_dir()
    assert 'registry = "/srv/reg"' in conf.read_text()  # the operator's config is kept

    out = run("uninstall")
    assert out.returncode == 0, out.stderr
    assert not (root / install.UNIT).exists() and not (root / install.REGISTRY_DROPIN).exists()
    assert not (root / install.RESOLVED_NETWORK).exists() and conf.exists()
    assert not (root / MAN_PAGE).exists()


def test_install_from_a_venv_the_unit_cannot_see_is_refused(wheel, tmp_path):
    svcdns = _venv(tmp_path / "venv", sys.executable, wheel)  # under /tmp, with this test's Python
    out = subprocess.run([str(svcdns), "install", "--root", str(tmp_path / "root")], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2
    assert "which the unit's ProtectHome=/PrivateTmp= hide from the service" in out.stderr
    assert "python3 -m venv /opt/svcdns" in out.stderr
    assert not (tmp_path / "root").exists()


LOG_SOME = """
import logging
from svcdns import logs
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
    """What a process that logs through svcdns/logs.py writes to its stderr (a file here), given JOURNAL_STREAM."""
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
