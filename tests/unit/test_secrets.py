"""etcd's password: password_file (file < environment < flag), its errors, and the password kept out
of every message: logs, /healthz, /status, error messages, reprs."""

from __future__ import annotations

import http.client
import logging
import os
import re
import subprocess
import sys

import pytest

from svcdns.cli import config
from svcdns.errors import UsageError
from svcdns.registry import open_registry
from svcdns.registry.etcd.url import parse_url, redact
from svcdns.status import Metrics, State, StatusServer

SECRET = "hunter2-s3cr@t"


def secret_file(path, text=SECRET + "\n", mode=0o600):
    path.write_text(text)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize("url, shown", [
    (f"etcd://root:{SECRET}@10.0.0.1:2379,10.0.0.2/svcdns", "etcd://root:***@10.0.0.1:2379,10.0.0.2/svcdns"),
    (f"etcd://10.0.0.1/p?username=root&password={SECRET}&timeout=2", "etcd://10.0.0.1/p?username=root&password=***&timeout=2"),
    (f"etcd://a:{SECRET}@[fd00::1]:2379/p", "etcd://a:***@[fd00::1]:2379/p"),
    ("etcd://root@10.0.0.1:2379/p", "etcd://root@10.0.0.1:2379/p"),
])  # fmt: skip
def test_redact_hides_the_password_in_both_forms(url, shown):
    assert redact(url) == shown
    options = parse_url(url)
    assert SECRET not in repr(options) and options.username in ("root", "a")


@pytest.mark.parametrize("url", [
    f"etcd://root:{SECRET}@10.0.0.1:x/p",  # a bad port
    f"etcd://root:{SECRET}@10.0.0.1/p?colour=red",  # an unknown option
    f"etcd://root:{SECRET}@10.0.0.1/p?timeout=-1",
    f"etcd://root:{SECRET}@10.0.0.1/p?password=other",  # given twice
    f"etcd://10.0.0.1/p?password={SECRET}&cert=c.pem",  # cert without key
])  # fmt: skip
def test_error_messages_about_a_url_never_show_its_password(url):
    with pytest.raises(UsageError) as err:
        parse_url(url)
    assert SECRET not in str(err.value) and "***" in str(err.value)


def test_password_file_precedence_file_then_environment_then_flag(tmp_path):
    files = {w: secret_file(tmp_path / w, f"from-{w}\n") for w in ("file", "env", "flag")}
    cfg_file = tmp_path / "svcdns.toml"
    cfg_file.write_text(f'registry = "etcd://root@127.0.0.1:2379/svcdns"\npassword_file = "{files["file"]}"\n')
    assert config.load(str(cfg_file), env={}).registry_password == "from-file"
    env = {"SVCDNS_ETCD_PASSWORD_FILE": files["env"]}
    assert config.load(str(cfg_file), env=env).registry_password == "from-env"
    cfg = config.load(str(cfg_file), flags={"password_file": files["flag"]}, env=env)
    assert cfg.registry_password == "from-flag" and "from-flag" not in repr(cfg)
    # one-shot commands read it as the agent does
    assert config.registry_password(cfg.registry, env={"SVCDNS_CONFIG": str(cfg_file)}) == "from-file"
    assert config.registry_password(cfg.registry, env={"SVCDNS_CONFIG": str(cfg_file), **env}) == "from-env"
    assert config.registry_password(str(tmp_path), env={"SVCDNS_CONFIG": str(cfg_file)}) is None


@pytest.mark.parametrize("make, message", [
    (lambda d: str(d / "missing"), "password_file {d}/missing: cannot read it: No such file or directory"),
    (lambda d: secret_file(d / "pw", mode=0o644), "password_file {d}/pw: mode 0644 lets other users read or change it: chmod 600 {d}/pw"),
    (lambda d: secret_file(d / "pw", mode=0o640), "password_file {d}/pw: mode 0640"),
    (lambda d: secret_file(d / "pw", text="\n"), "password_file {d}/pw is empty"),
    (lambda d: str(d), "password_file {d}: cannot read it: Is a directory"),
])  # fmt: skip
def test_a_bad_password_file_is_refused_naming_the_path(tmp_path, make, message):
    path = make(tmp_path)
    flags = {"registry": "etcd://root@127.0.0.1:2379/svcdns", "password_file": path}
    with pytest.raises(UsageError, match=re.escape("command line: " + message.format(d=tmp_path))):
        config.load(None, flags=flags, env={})


def test_password_file_needs_an_etcd_registry_with_a_user_and_no_password_in_the_url(tmp_path):
    pw = secret_file(tmp_path / "pw")
    with pytest.raises(UsageError, match="password_file .* is etcd's password, but the registry .* is not etcd"):
        config.load(None, flags={"registry": str(tmp_path), "password_file": pw}, env={})
    with pytest.raises(UsageError, match="password_file needs a user name: etcd://USER@host"):
        config.load(None, flags={"registry": "etcd://127.0.0.1/p", "password_file": pw}, env={})
    with pytest.raises(UsageError, match="holds a password and password_file gives one too") as err:
        config.load(None, flags={"registry": f"etcd://root:{SECRET}@127.0.0.1/p", "password_file": pw}, env={})
    assert SECRET not in str(err.value)


def test_a_password_in_the_url_works_with_one_warning_that_does_not_show_it(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="svcdns.cli.config"):
        cfg = config.load(None, flags={"registry": f"etcd://root:{SECRET}@127.0.0.1/p"}, env={})
    assert parse_url(cfg.registry).password == SECRET
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "password_file" in warnings[0] and SECRET not in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="svcdns.cli.config"):
        config.load(None, flags={"registry": "etcd://root@127.0.0.1/p", "password_file": secret_file(tmp_path / "p")},
                    env={})  # fmt: skip
    assert not caplog.records


def test_healthz_and_status_show_the_location_redacted():
    registry = open_registry(f"etcd://root:{SECRET}@127.0.0.1:1/svcdns")
    try:
        st = State(registry=registry.location, registry_problem="etcd at 127.0.0.1:1 unreachable")
        server = StatusServer(("127.0.0.1", 0), st, Metrics())
        server.start()
        try:
            assert server.httpd is not None
            for path in ("/healthz", "/status", "/metrics"):
                conn = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=5)
                conn.request("GET", path)
                body = conn.getresponse().read().decode()
                conn.close()
                assert SECRET not in body, path
                if path != "/metrics":
                    assert "etcd://root:***@127.0.0.1:1/svcdns" in body, path
        finally:
            server.stop()
        assert SECRET not in repr(registry)
    finally:
        registry.close()


@pytest.fixture
def auth_etcd(tmp_path_factory):
    import shutil

    from svcdns.testing.etcd import EtcdServer

    if not shutil.which("etcd") and not os.path.exists("/usr/bin/etcd"):
        pytest.skip("needs Debian's etcd-server (tests/run installs it)")
    with EtcdServer(tmp_path_factory.mktemp("etcd-secret"), auth=True) as server:
        yield server


def test_the_cli_authenticates_with_the_password_file_and_a_wrong_one_is_not_shown(auth_etcd, tmp_path):
    url = auth_etcd.url.split("?")[0].replace("etcd://", "etcd://root@")
    env = dict(os.environ, PYTHONPATH=os.getcwd(), SVCDNS_ETCD_PASSWORD_FILE=secret_file(tmp_path / "pw", auth_etcd.PASSWORD))
    env.pop("SVCDNS_CONFIG", None)
    run = [sys.executable, "-m", "svcdns", "service", "add", "web", "--port", "80", "--registry", url]
    ok = subprocess.run(run, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    env["SVCDNS_ETCD_PASSWORD_FILE"] = secret_file(tmp_path / "wrong", SECRET)
    wrong = subprocess.run([sys.executable, "-m", "svcdns", "service", "list", "--registry", url],
                           capture_output=True, text=True, env=env)  # fmt: skip
    assert wrong.returncode == 1 and "authentication as 'root' failed" in wrong.stderr
    assert SECRET not in wrong.stderr and "password_file" in wrong.stderr
