"""Shared test set-up: the host-namespace guard, and the lab fixture for integration tests."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from svcdns.dataplane.guard import GUARD_ENV, host_netns_inode
from svcdns.testing import lab
from svcdns.testing.etcd import EtcdServer

# Every kernel shell refuses to program the namespace named here: the host's own. A test that forgot
# to enter its namespace then fails loudly instead of touching the host.
os.environ[GUARD_ENV] = str(host_netns_inode())
# The agents the tests start take their one-per-namespace lock here, not in the host's /run.
os.environ.setdefault("SVCDNS_RUN_DIR", tempfile.mkdtemp(prefix="svcdns-test-run-"))


def _root_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (it builds network namespaces); CI runs it as root"
    if lab.run(["ip", "netns", "list"], check=False).returncode != 0:
        return "needs iproute2's 'ip netns'"
    return None


def pytest_collection_modifyitems(config, items):
    reason = None
    checked = False
    for item in items:
        if "integration" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.integration)
        if "integration" in item.keywords:
            if not checked:
                reason, checked = _root_reason(), True
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _logger_levels_restored():
    """The CLI quiets the ``svcdns`` loggers for its own process (``registry_of``) and the agent sets the
    root level; tests that run them in-process must not leave that to the tests after them, whose
    ``caplog`` would then see nothing."""
    names = [None] + [n for n in logging.root.manager.loggerDict if n.startswith("svcdns")]
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("svcdns")]:
        logging.getLogger(name).setLevel(levels.get(name, logging.NOTSET))
    logging.getLogger().setLevel(levels[None])


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory):
    """One throwaway etcd on loopback ports for the session (tests use their own key prefixes)."""
    if not shutil.which("etcd") and not os.path.exists("/usr/bin/etcd"):
        pytest.skip("needs Debian's etcd-server package (apt-get install etcd-server); tests/run installs it")
    with EtcdServer(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def etcd_url(etcd_server, request):
    """An etcd registry URL with a prefix of this test's own."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]
    return etcd_server.url.rsplit("/", 1)[0] + f"/t-{name}-{os.getpid()}"


@pytest.fixture
def cli(tmp_path):
    """``svcdns`` as a user runs it, against a registry directory of this test's own:
    ``cli("service", "add", ...)`` returns its output; ``cli.registry`` and ``cli.env`` for the rest."""
    registry = tmp_path / "registry"
    registry.mkdir()
    env = dict(os.environ, SVCDNS_REGISTRY=str(registry), PYTHONPATH=os.getcwd())

    def run(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "svcdns", *args], env=env, capture_output=True, text=True, check=True
        )
        return proc.stdout

    run.registry, run.env = registry, env
    return run


@pytest.fixture
def make_lab():
    """``make_lab(pods=2)`` builds a lab that is torn down after the test, even when it fails."""
    labs: list[lab.Lab] = []

    def factory(pods: int = 2, tag: str = "t") -> lab.Lab:
        world = lab.Lab(pods=pods, tag=tag)
        labs.append(world)
        return world.__enter__()

    yield factory
    for world in reversed(labs):
        world.close()
