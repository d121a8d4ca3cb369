"""``svcdns install`` and ``svcdns uninstall``: the systemd unit, the example config, the resolved routing.

The files ship inside the package (``svcdns/systemd/``), so a wheel installed with pip has them. The
unit's ``ExecStart=`` is the ``svcdns`` entry point that runs ``install``: that is the installation the
operator chose. It must be executable and visible to the service: the unit's ``ProtectHome=yes`` and
``PrivateTmp=yes`` hide /root, /home, /run/user, /tmp and /var/tmp from it, so an entry point, an
interpreter, a package or a registry there would not be found at start; ``install`` refuses them.
``plan()`` decides everything from plain values; ``cmd_install`` only looks them up and writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from ..errors import SvcdnsError, UsageError
from . import config
from .manual import MAN_PAGE, man_page

UNIT = "etc/systemd/system/svcdns.service"
REGISTRY_DROPIN = "etc/systemd/system/svcdns.service.d/registry.conf"
CONF = "etc/svcdns/svcdns.toml"
RESOLVED_DROPIN = "etc/systemd/resolved.conf.d/svcdns.conf"  # older installs' global DNS= took every name: removed
RESOLVED_NETWORK = "etc/systemd/network/50-svcdns.network"  # the zone routed to svcdns0 (cli/resolved.py)
STATE_DIR = PurePosixPath("/var/lib/svcdns")  # the unit's StateDirectory=, writable already
HIDDEN = ("/root", "/home", "/run/user", "/tmp", "/var/tmp")  # ProtectHome=yes, PrivateTmp=yes
PLACEHOLDER = "@SVCDNS@"  # ExecStart's command in the shipped unit
PACKAGE_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class File:
    rel: str  # below the install root
    text: str
    mode: int
    replace: bool = True  # False: keep an existing file (the operator's config)


@dataclass(frozen=True, slots=True)
class Plan:
    files: tuple[File, ...]
    remove: tuple[str, ...]  # files an earlier install wrote that this one no longer wants
    dirs: tuple[str, ...]  # directories to create: the registry


def register(sub, common) -> None:
    inst = sub.add_parser(
        "install",
        parents=[common],
        help="install the systemd unit and the config (and the resolved drop-in with --with-resolved)",
    )
    inst.add_argument("--root", default="/", help="install below this directory (default: /)")
    inst.add_argument(
        "--with-resolved",
        action="store_true",
        help="also route the cluster zone and the service CIDRs' reverse zones to svcdns through systemd-resolved "
        "(and systemd-networkd: /etc/systemd/network/50-svcdns.network)",
    )
    inst.set_defaults(func=cmd_install)
    uninst = sub.add_parser("uninstall", parents=[common], help="remove what install put in place and the rules")
    uninst.add_argument("--root", default="/")
    uninst.set_defaults(func=cmd_uninstall)


def hidden_by_unit(path: str) -> str | None:
    """The directory the unit's hardening hides ``path`` under, or None when the service can see it."""
    p = PurePosixPath(path)
    return next((h for h in HIDDEN if p == PurePosixPath(h) or PurePosixPath(h) in p.parents), None)


def check_runnable(entry: str, interpreter: str, package: str) -> None:
    """Refuse an installation the service could not start from. The paths are resolved (symlinks
    followed); ``entry`` is the ``svcdns`` script, ``interpreter`` the Python it runs with, ``package``
    the directory the ``svcdns`` package is imported from."""
    for what, path in (("the svcdns command", entry), ("its Python", interpreter), ("the svcdns package", package)):
        hidden = hidden_by_unit(path)
        if hidden:
            raise UsageError(
                f"{what} is {path}, under {hidden}, which the unit's ProtectHome=/PrivateTmp= hide from the "
                "service: install svcdns where the service can see it, in a venv under /opt made with a "
                "system Python (python3 -m venv /opt/svcdns && /opt/svcdns/bin/pip install svcdns, then "
                "/opt/svcdns/bin/svcdns install) or system-wide (pip install svcdns, then svcdns install); "
                "to try a checkout without installing, run `svcdns agent` in the foreground"
            )


def unit_text(template: str, entry: str) -> str:
    if PLACEHOLDER not in template:
        raise SvcdnsError(f"the shipped unit has no {PLACEHOLDER} in ExecStart=: this copy of svcdns is broken")
    return template.replace(PLACEHOLDER, entry)


def registry_dropin(registry: str) -> str | None:
    """The drop-in that lets the service write a registry directory outside its StateDirectory (VIP
    allocations, the lock) under ``ProtectSystem=strict``; None when none is needed (etcd, or below
    /var/lib/svcdns)."""
    if "://" in registry:
        return None
    path = PurePosixPath(registry)
    if not path.is_absolute():
        raise UsageError.invalid("registry", registry, "an absolute directory (the service does not run in yours)")
    if path == STATE_DIR or STATE_DIR in path.parents:
        return None
    hidden = hidden_by_unit(registry)
    if hidden:
        raise UsageError(
            f"registry {registry} is under {hidden}, which the unit hides from the service: "
            f"choose a directory elsewhere, e.g. below {STATE_DIR}"
        )
    quoted = f'"{path}"' if any(c.isspace() or c == '"' for c in str(path)) else str(path)
    return f"# written by `svcdns install`: the configured registry, writable under ProtectSystem=strict\n[Service]\nReadWritePaths={quoted}\n"


def plan(templates: dict[str, str], entry: str, registry: str, with_resolved: bool,
         cfg: config.Config | None = None) -> Plan:  # fmt: skip
    """What ``install`` writes. ``templates``: the shipped files by name; ``registry``: the configured
    one; ``cfg`` the configuration the resolved routing comes from (default: the defaults)."""
    files = [
        File(UNIT, unit_text(templates["svcdns.service"], entry), 0o644),
        # the config may hold an etcd password (and names the TLS key): readable by root alone
        File(CONF, templates["svcdns.toml"], 0o600, replace=False),
    ]
    remove = [RESOLVED_DROPIN]
    dropin = registry_dropin(registry)
    if dropin:
        files.append(File(REGISTRY_DROPIN, dropin, 0o644))
    else:
        remove.append(REGISTRY_DROPIN)
    if with_resolved:
        from .resolved import network_file

        c = cfg or config.load(os.devnull, env={})  # the defaults
        text = network_file(templates["svcdns-resolved.network"], interface=c.cluster_dns_interface,
                            cluster_dns=c.cluster_dns, zone=c.cluster_zone, cidrs=c.service_cidrs)  # fmt: skip
        files.append(File(RESOLVED_NETWORK, text, 0o644))
    dirs = () if "://" in registry else (registry.lstrip("/"),)
    return Plan(tuple(files), tuple(remove), dirs)


def entry_point() -> str:
    """The ``svcdns`` script running now (resolved), or the one beside this Python (``python -m svcdns``)."""
    argv0 = Path(sys.argv[0])
    candidate = argv0 if argv0.name == "svcdns" else Path(sys.executable).parent / "svcdns"
    resolved = candidate.resolve()
    if not (resolved.is_file() and os.access(resolved, os.X_OK)):
        raise SvcdnsError(
            f"{candidate} is not an executable svcdns command, so the unit could not start it: run install "
            "through the svcdns command of the installation the service should use (e.g. /opt/svcdns/bin/svcdns install)"
        )
    return str(resolved)


def _templates() -> dict[str, str]:
    base = resources.files("svcdns") / "systemd"
    names = ("svcdns.service", "svcdns.toml", "svcdns-resolved.network")
    try:
        return {name: (base / name).read_text() for name in names}
    except OSError as err:
        raise SvcdnsError(f"the systemd files are missing from this copy of svcdns ({err}): reinstall it")


def _write(path: Path, text: str, mode: int) -> None:
    """Atomically, with ``mode`` from the start (a config is never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)  # O_CREAT's mode is narrowed by the umask, and a stale tmp kept its own
    os.replace(tmp, path)


def cmd_install(args) -> int:
    root = Path(args.root)
    entry = entry_point()
    check_runnable(entry, str(Path(sys.executable).resolve()), str(PACKAGE_DIR))
    templates = _templates()
    conf = root / CONF
    cfg = config.load(str(conf) if conf.exists() else os.devnull, env={})  # no config yet: the defaults
    steps = plan(templates, entry, cfg.registry, args.with_resolved, cfg)
    for file in steps.files:
        target = root / file.rel
        if target.exists() and not file.replace:
            if target.stat().st_mode & 0o077:
                print(f"kept {target}; it is readable by others: chmod 600 it if it holds a password")
            else:
                print(f"kept {target}")
            continue
        _write(target, file.text, file.mode)
        print(f"installed {target}")
    for rel in steps.remove:
        if (root / rel).exists():
            (root / rel).unlink()
            print(f"removed {root / rel}")
    for rel in steps.dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    _write(root / MAN_PAGE, man_page(args.root_parser), 0o644)  # the unit's Documentation=man:svcdns(8)
    print(f"installed {root / MAN_PAGE}")
    if args.root == "/" and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    print("next: systemctl enable --now svcdns")
    if args.with_resolved:
        print("then: systemctl enable --now systemd-networkd (it hands the routing to systemd-resolved); "
              "networkctl reload")
    return 0


def cmd_uninstall(args) -> int:
    root = Path(args.root)
    if args.root == "/" and shutil.which("systemctl"):
        subprocess.run(["systemctl", "disable", "--now", "svcdns"], check=False, capture_output=True)
    for rel in (UNIT, REGISTRY_DROPIN, RESOLVED_DROPIN, RESOLVED_NETWORK, MAN_PAGE):
        if (root / rel).exists():
            (root / rel).unlink()
            print(f"removed {root / rel}")
    dropins = root / REGISTRY_DROPIN
    if dropins.parent.is_dir() and not any(dropins.parent.iterdir()):
        dropins.parent.rmdir()
    if args.root == "/":
        from ..dataplane import open_dataplane
        from ..dataplane.address import remove_address
        from . import config as configuration

        for kind in ("nftables", "iptables"):  # whichever backend the agent ran with
            open_dataplane(kind).cleanup()
        cfg = configuration.load(None, {})
        if cfg.cluster_dns_interface:
            remove_address(cfg.cluster_dns, cfg.cluster_dns_interface)
        print("removed svcdns's rules and the cluster DNS address")
        if shutil.which("systemctl"):
            subprocess.run(["systemctl", "daemon-reload"], check=False)
    print(f"kept {root / CONF} and the registry (/var/lib/svcdns): remove them by hand if you want them gone")
    return 0


__all__ = ["register"]
