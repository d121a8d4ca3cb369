"""Shared test set-up: the host-namespace guard, and the lab fixture for integration tests."""

from __future__ import annotations

import os

import pytest

from svcdns import lab

# Every kernel shell refuses to program the namespace named here: the host's own. A test that forgot
# to enter its namespace then fails loudly instead of touching the host.
os.environ[lab.GUARD_ENV] = str(lab.host_netns_inode())


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
