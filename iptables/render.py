"""Print ``iptables/reference.rules``: the iptables-restore input svcdns's iptables backend writes for a
registry directory whose Services name their VIPs, on a host with none of its rules yet.

    python iptables/render.py iptables/sample-registry > iptables/reference.rules

It lives outside the package because it reads a registry, which the dataplane never does;
tests/unit/test_dataplane_iptables.py checks that reference.rules is current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svcdns.dataplane.iptables.rules import COMMANDS, render  # noqa: E402
from svcdns.errors import UsageError  # noqa: E402
from svcdns.registry.documents import decode  # noqa: E402
from svcdns.registry.files import is_service_file  # noqa: E402
from svcdns.table import ServiceTable  # noqa: E402


def load_sample_registry(root: str | Path) -> ServiceTable:
    """Read a registry directory's Service files as written (no VIP allocation, nothing written):
    every ClusterIP Service must name its VIPs (``clusterIP`` / ``clusterIPs``) so the output is fixed."""
    root = Path(root)
    services = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and is_service_file(p.name)):
        svc = decode(path.read_bytes(), str(path))
        if svc.has_vip and not svc.cluster_ips:
            raise UsageError(f"{path}: a reference Service needs a fixed VIP: add clusterIP: (or clusterIPs:)")
        services.append(svc)
    return ServiceTable.of(services)


def reference_text(root: str | Path) -> str:
    """``iptables/reference.rules``: the restore input for the sample registry, both families."""
    table = load_sample_registry(root)
    head = (
        "# What svcdns's iptables backend writes for iptables/sample-registry on a host with none of its rules\n"
        "# yet (regenerate: python iptables/render.py iptables/sample-registry > iptables/reference.rules;\n"
        "#   tests/unit/test_dataplane_iptables.py checks that it is current).\n"
    )
    out = [head]
    for family, (_, restore) in COMMANDS.items():
        out.append(f"\n# ---- {family}: {restore} -w --noflush, one run per table\n")
        out.append(render(table, family))
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python iptables/render.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("registry", metavar="REGISTRY_DIR")
    args = parser.parse_args(argv)
    sys.stdout.write(reference_text(args.registry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
