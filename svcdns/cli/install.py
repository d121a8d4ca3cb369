"""``svcdns install`` and ``svcdns uninstall``: the systemd unit, the example config, the resolved drop-in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..errors import SvcdnsError

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def register(sub, common) -> None:
    inst = sub.add_parser("install", parents=[common], help="install the systemd unit, config and resolved drop-in")
    inst.add_argument("--root", default="/", help="install below this directory (default: /)")
    inst.set_defaults(func=cmd_install)
    uninst = sub.add_parser("uninstall", parents=[common], help="remove what install put in place and the rules")
    uninst.add_argument("--root", default="/")
    uninst.set_defaults(func=cmd_uninstall)


UNIT = "etc/systemd/system/svcdns.service"
CONF = "etc/svcdns/svcdns.toml"
DROPIN = "etc/systemd/resolved.conf.d/svcdns.conf"


def _sources() -> Path:
    for base in (PACKAGE_DIR / "systemd", PACKAGE_DIR.parent / "systemd"):
        if (base / "svcdns.service").exists():
            return base
    raise SvcdnsError("the systemd unit files are not installed with this copy of svcdns")


def cmd_install(args) -> int:
    root, src = Path(args.root), _sources()
    svcdns_bin = shutil.which("svcdns") or "/usr/local/bin/svcdns"
    unit = (src / "svcdns.service").read_text().replace("/usr/local/bin/svcdns", svcdns_bin)
    for rel, text in ((UNIT, unit), (DROPIN, (src / "resolved-svcdns.conf").read_text())):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        print(f"installed {root / rel}")
    if not (root / CONF).exists():
        (root / CONF).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "svcdns.toml", root / CONF)
        print(f"installed {root / CONF}")
    (root / "var/lib/svcdns/registry").mkdir(parents=True, exist_ok=True)
    if args.root == "/" and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    print("next: systemctl enable --now svcdns")
    return 0


def cmd_uninstall(args) -> int:
    root = Path(args.root)
    if args.root == "/" and shutil.which("systemctl"):
        subprocess.run(["systemctl", "disable", "--now", "svcdns"], check=False, capture_output=True)
    for rel in (UNIT, DROPIN):
        if (root / rel).exists():
            (root / rel).unlink()
            print(f"removed {root / rel}")
    if args.root == "/":
        from ..dataplane import open_dataplane

        for kind in ("nftables", "iptables"):  # whichever backend the agent ran with
            open_dataplane(kind).cleanup()
        print("removed svcdns's rules")
        if shutil.which("systemctl"):
            subprocess.run(["systemctl", "daemon-reload"], check=False)
    print(f"kept {root / CONF} and the registry (/var/lib/svcdns): remove them by hand if you want them gone")
    return 0


__all__ = ["register"]
