"""Fixtures of the unit tests."""

import pytest

from svcdns.cli import main


@pytest.fixture
def svcdns(tmp_path, capsys, monkeypatch):
    """``svcdns`` run in-process against a registry directory of this test's own:
    ``svcdns("service", "add", ...)`` returns (exit code, stdout, stderr); ``svcdns.root`` is the
    registry, ``svcdns.tmp`` the test's temporary directory."""
    registry = tmp_path / "registry"
    registry.mkdir()
    monkeypatch.setenv("SVCDNS_REGISTRY", str(registry))
    monkeypatch.delenv("SVCDNS_SERVICE_CIDRS", raising=False)

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    run.root, run.tmp = registry, tmp_path
    return run
