"""The agent's settings: /etc/svcdns/svcdns.toml < environment (SVCDNS_*) < command-line flags.

    registry = "/var/lib/svcdns/registry"     # or "etcd://USER@10.0.0.1:2379,10.0.0.2:2379/svcdns"
    password_file = ""                        # etcd's password, in a file only root may read (mode 0600)
    service_cidrs = ["10.96.0.0/12"]          # add an IPv6 CIDR for IPv6 / dual-stack Services
    pod_cidrs = []                            # networks of the pods: their DNS clients may recurse
    cluster_zone = "cluster.local"
    cluster_dns = ""                          # pods' nameserver; "": the 10th address of the first service CIDR
    cluster_dns_interface = "svcdns0"         # a dummy interface the agent puts cluster_dns on; "": not managed
    dataplane = "nftables"                    # or "iptables"
    full_sync_period = 60                     # seconds between drift checks (a full re-sync when drifted)
    health_listen = "127.0.0.1:10256"         # /healthz, /livez, /readyz, /metrics, /status
    metrics_listen = ""                       # "": /metrics on health_listen; else there, and only /metrics
    node_name = ""                            # "": the host name; the agent probes this node's pods
    node_lease_ttl = 15                       # etcd: seconds a dead agent's node keeps its pods ready
    probe_exec = true                         # false: exec readiness probes fail, never run on this node

    [dns]
    listen = ["127.0.0.1:53"]
    upstreams = []                            # empty: the host's /etc/resolv.conf
    allowed_networks = []                     # empty: loopback + service_cidrs + pod_cidrs
    forward = true
    ttl = 5
    workers = 0                               # 0: one per core

A bad value raises UsageError naming the key, the value and what is valid (the agent exits 2).

``password_file`` is read by :func:`load` (at start and at every reload); a file that group or
others may read or write is refused, as ssh refuses such a private key: the secret is exposed
already, and a warning in a journal nobody reads would leave it so. A password in the registry URL
still works, with a warning: URLs are shown (redacted) and may sit on command lines.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..addr import format_hostport, parse_hostport
from ..errors import UsageError
from ..ipam import DEFAULT_SERVICE_CIDRS, Allocator
from ..model import check_label

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/svcdns/svcdns.toml"
DEFAULT_REGISTRY = "/var/lib/svcdns/registry"


@dataclass(frozen=True)
class Config:
    registry: str = DEFAULT_REGISTRY
    password_file: str = ""  # etcd's password; read by load() into registry_password
    service_cidrs: tuple[str, ...] = DEFAULT_SERVICE_CIDRS
    pod_cidrs: tuple[str, ...] = ()
    cluster_zone: str = "cluster.local"
    cluster_dns: str = ""  # "": the 10th address of the first service CIDR (10.96.0.10), as kubeadm
    cluster_dns_interface: str = "svcdns0"  # "": the operator puts cluster_dns on the node and in dns.listen
    dataplane: str = "nftables"
    full_sync_period: float = 60.0
    health_listen: str = "127.0.0.1:10256"
    metrics_listen: str = ""  # "": /metrics is served on health_listen
    node_name: str = ""  # "": the host name, as the kubelet's --hostname-override
    node_lease_ttl: int = 15  # etcd: the node lease's TTL (refreshed every TTL/3)
    probe_exec: bool = True  # False: exec probes (a command the registry's writers chose, run as root) fail
    dns_listen: tuple[str, ...] = ("127.0.0.1:53",)
    dns_upstreams: tuple[str, ...] = ()
    dns_allowed_networks: tuple[str, ...] = ()
    dns_forward: bool = True
    dns_ttl: int = 5
    dns_workers: int = 0
    registry_password: str | None = field(default=None, repr=False)  # from password_file: never shown
    source: str = ""  # the file it came from, for messages
    # config key -> where its value came from (the file, "environment", "command line"), for messages
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def origin(self, key: str) -> str:
        return self.origins.get(key, self.source or "configuration")

    def dns_listen_all(self) -> list[str]:
        """Where DNS listens: ``dns.listen``, and the cluster DNS address when the agent manages it."""
        extra = [format_hostport(self.cluster_dns, 53)] if self.cluster_dns_interface and self.cluster_dns else []
        return list(dict.fromkeys([*self.dns_listen, *extra]))

    def allowed_networks(self) -> list[str]:
        return list(self.dns_allowed_networks) or ["127.0.0.0/8", "::1/128", *self.service_cidrs, *self.pod_cidrs]


_KEYS = {
    "registry": ("registry", str),
    "password_file": ("password_file", str),
    "service_cidrs": ("service_cidrs", list),
    "pod_cidrs": ("pod_cidrs", list),
    "cluster_zone": ("cluster_zone", str),
    "cluster_dns": ("cluster_dns", str),
    "cluster_dns_interface": ("cluster_dns_interface", str),
    "dataplane": ("dataplane", str),
    "full_sync_period": ("full_sync_period", (int, float)),
    "health_listen": ("health_listen", str),
    "metrics_listen": ("metrics_listen", str),
    "node_name": ("node_name", str),
    "node_lease_ttl": ("node_lease_ttl", int),
    "probe_exec": ("probe_exec", bool),
    "dns.listen": ("dns_listen", list),
    "dns.upstreams": ("dns_upstreams", list),
    "dns.allowed_networks": ("dns_allowed_networks", list),
    "dns.forward": ("dns_forward", bool),
    "dns.ttl": ("dns_ttl", int),
    "dns.workers": ("dns_workers", int),
}
_ENV = {
    "SVCDNS_REGISTRY": "registry",
    "SVCDNS_ETCD_PASSWORD_FILE": "password_file",
    "SVCDNS_SERVICE_CIDRS": "service_cidrs",
    "SVCDNS_POD_CIDRS": "pod_cidrs",
    "SVCDNS_ZONE": "cluster_zone",
    "SVCDNS_DATAPLANE": "dataplane",
    "SVCDNS_HEALTH_LISTEN": "health_listen",
    "SVCDNS_METRICS_LISTEN": "metrics_listen",
    "SVCDNS_NODE_NAME": "node_name",
    "SVCDNS_NODE_LEASE_TTL": "node_lease_ttl",
    "SVCDNS_DNS_LISTEN": "dns.listen",
}


def _flatten(doc: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _apply(cfg: Config, values: dict[str, Any], where: str) -> Config:
    changes = {}
    for key, value in values.items():
        if key not in _KEYS:
            raise UsageError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(_KEYS))}")
        attr, kind = _KEYS[key]
        if kind is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"{where}: {key} = {value!r}: expected a list of strings")
            value = tuple(value)
        elif kind is bool and not isinstance(value, bool):
            raise UsageError(f"{where}: {key} = {value!r}: expected true or false")
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageError(f"{where}: {key} = {value!r}: expected a whole number")
        elif kind is str and not isinstance(value, str):
            raise UsageError(f"{where}: {key} = {value!r}: expected a string")
        elif kind == (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{where}: {key} = {value!r}: expected a number of seconds")
        changes[attr] = value
    return replace(cfg, **changes, origins={**cfg.origins, **{key: where for key in values}})


def _env_value(key: str, text: str) -> Any:
    """An environment variable's text as its key's type where that is a whole number (else the text,
    which _apply then names as the bad value)."""
    return int(text) if _KEYS[key][1] is int and text.strip().isdigit() else text


def load(path: str | None = None, flags: dict[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """The configuration: the file (``path``, or /etc/svcdns/svcdns.toml if it exists), then the
    environment, then ``flags`` (config keys -> values; None values are ignored)."""
    cfg = Config()
    env = os.environ if env is None else env
    path = path or env.get("SVCDNS_CONFIG") or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise UsageError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"config file {path}: not valid TOML: {err}") from None
        cfg = replace(_apply(cfg, _flatten(doc), path), source=path)
    cfg = _apply(cfg, {key: _env_value(key, env[name]) for name, key in _ENV.items() if env.get(name)}, "environment")
    cfg = _apply(cfg, {k: v for k, v in (flags or {}).items() if v is not None}, "command line")
    if not cfg.cluster_dns:
        try:
            cfg = replace(cfg, cluster_dns=str(ipaddress.ip_network(cfg.service_cidrs[0]).network_address + 10))
        except (ValueError, IndexError):
            pass  # validate() names the bad service CIDR
    if not cfg.node_name:
        cfg = replace(cfg, node_name=socket.gethostname().split(".")[0].lower())
    if cfg.password_file:
        cfg = replace(cfg, registry_password=read_password_file(cfg.password_file, cfg.origin("password_file")))
    validate(cfg)
    if cfg.registry.startswith("etcd://") and cfg.registry_password is None and _url_password(cfg.registry):
        log.warning("%s: the registry URL holds etcd's password, which anyone who can read the configuration, "
                    "the unit or the command line sees: put it in a file only root may read and name it with "
                    "password_file (the URL keeps the user name: etcd://USER@host:2379/prefix)",
                    cfg.origin("registry"))  # fmt: skip
    # names are case-insensitive; a trailing dot names the same zone
    return replace(cfg, cluster_zone=cfg.cluster_zone.lower().removesuffix("."))


def read_password_file(path: str, where: str = "configuration") -> str:
    """The password in ``path`` (one trailing newline dropped); UsageError naming the path when it
    cannot be read, is empty, or group or others may read or write it."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if stat.S_ISREG(mode) and mode & 0o077:
                raise UsageError(f"{where}: password_file {path}: mode {stat.S_IMODE(mode):04o} lets other users "
                                 f"read or change it: chmod 600 {path}")  # fmt: skip
            data = f.read(4097)
    except OSError as err:
        raise UsageError(f"{where}: password_file {path}: cannot read it: {err.strerror or err}") from None
    if len(data) > 4096:
        raise UsageError(f"{where}: password_file {path}: longer than 4096 bytes: expected the password alone")
    try:
        password = data.decode().removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: password_file {path}: not UTF-8 text") from None
    if not password:
        raise UsageError(f"{where}: password_file {path} is empty")
    return password


def _url_password(url: str) -> bool:
    from ..registry.etcd.url import parse_url  # here: the etcd package imports aetcd (~0.3 s), only for etcd

    try:
        return parse_url(url).password_in_url
    except UsageError:
        return False  # validate() said what is wrong


def registry_password(location: str, env: Mapping[str, str] | None = None) -> str | None:
    """etcd's password for one-shot commands, as the agent would read it: the file named by
    $SVCDNS_ETCD_PASSWORD_FILE, else the config file's ``password_file``; None for a registry that
    is not etcd or when neither names one."""
    env = os.environ if env is None else env
    if not location.startswith("etcd://"):
        return None
    if env.get("SVCDNS_ETCD_PASSWORD_FILE"):
        return read_password_file(env["SVCDNS_ETCD_PASSWORD_FILE"], "environment")
    path = env.get("SVCDNS_CONFIG") or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path:
        value = _read_toml(path).get("password_file")
        if isinstance(value, str) and value:
            return read_password_file(value, path)
    return None


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"config file {path}: {err}") from None


def health_address(path: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Where the agent serves /status, as it reads its configuration (``path`` or
    $SVCDNS_CONFIG or /etc/svcdns/svcdns.toml, then $SVCDNS_HEALTH_LISTEN): for ``svcdns status``,
    which must not need what only the agent may read (the password file)."""
    env = os.environ if env is None else env
    value: Any = Config.health_listen
    path = path or env.get("SVCDNS_CONFIG") or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path:
        value = _read_toml(path).get("health_listen", value)
        if not isinstance(value, str):
            raise UsageError.invalid("health_listen", value, "expected ADDR:PORT", path)
    return env.get("SVCDNS_HEALTH_LISTEN") or value


def registry_location(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """Where the registry is, for one-shot commands: the flag, $SVCDNS_REGISTRY, the config file's
    ``registry``, else the default directory."""
    env = os.environ if env is None else env
    if flag:
        return flag
    if env.get("SVCDNS_REGISTRY"):
        return env["SVCDNS_REGISTRY"]
    path = env.get("SVCDNS_CONFIG") or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path:
        value = _read_toml(path).get("registry")
        if isinstance(value, str) and value:
            return value
    return DEFAULT_REGISTRY


def validate(cfg: Config, local_networks: list | None = None) -> None:
    where = cfg.origin
    if cfg.dataplane not in ("nftables", "iptables"):
        raise UsageError(f"{where('dataplane')}: dataplane = {cfg.dataplane!r}: expected nftables or iptables")
    try:
        Allocator(list(cfg.service_cidrs))
    except UsageError as err:
        raise UsageError(f"{where('service_cidrs')}: service_cidrs: {err}") from None
    for key, nets in (("pod_cidrs", cfg.pod_cidrs), ("dns.allowed_networks", cfg.dns_allowed_networks)):
        for n in nets:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise UsageError(f"{where(key)}: {key}: {n!r} is not a network such as 10.244.0.0/16") from None
    if not 0 <= cfg.dns_ttl <= 86400:
        raise UsageError(f"{where('dns.ttl')}: dns.ttl = {cfg.dns_ttl}: expected 0 to 86400 seconds")
    if cfg.dns_workers < 0:
        raise UsageError(f"{where('dns.workers')}: dns.workers = {cfg.dns_workers}: expected 0 (one per core) or more")
    if cfg.full_sync_period < 1:
        raise UsageError(f"{where('full_sync_period')}: full_sync_period = {cfg.full_sync_period}: expected at least 1 second")
    if not 2 <= cfg.node_lease_ttl <= 3600:
        raise UsageError.invalid("node_lease_ttl", str(cfg.node_lease_ttl), "expected 2 to 3600 seconds",
                                 where("node_lease_ttl"))  # fmt: skip
    check_zone(cfg.cluster_zone, where("cluster_zone"))
    try:
        if cfg.node_name:  # load() fills in the host name
            check_label("node_name", cfg.node_name)
    except UsageError:
        raise UsageError.invalid("node_name", cfg.node_name, "expected a DNS label (lower-case letters, digits, "
                                 "'-'), as pods' nodeName", where("node_name")) from None  # fmt: skip
    if cfg.cluster_dns:
        try:
            ipaddress.ip_address(cfg.cluster_dns)
        except ValueError:
            raise UsageError.invalid("cluster_dns", cfg.cluster_dns, "expected an IP address such as 10.96.0.10",
                                     where("cluster_dns")) from None  # fmt: skip
    name = cfg.cluster_dns_interface
    if name and (len(name) > 15 or not name.isascii() or any(c in name for c in "/: \t\n") or name in (".", "..")):
        raise UsageError.invalid("cluster_dns_interface", name, "expected an interface name of at most 15 "
                                 "characters without '/', ':' or spaces, or \"\" to manage none",
                                 where("cluster_dns_interface"))  # fmt: skip
    listeners = [("health_listen", cfg.health_listen), *(("dns.listen", v) for v in cfg.dns_listen)]
    for key, value in [*listeners, *([("metrics_listen", cfg.metrics_listen)] if cfg.metrics_listen else [])]:
        parse_hostport(value, key, where=where(key))
    if cfg.metrics_listen and parse_hostport(cfg.metrics_listen, "metrics_listen") == parse_hostport(
            cfg.health_listen, "health_listen"):  # fmt: skip
        raise UsageError.invalid("metrics_listen", cfg.metrics_listen, "another address than health_listen "
                                 '(or "" to serve /metrics there)', where("metrics_listen"))  # fmt: skip
    if cfg.password_file and not cfg.registry.startswith("etcd://"):
        raise UsageError(f"{where('password_file')}: password_file {cfg.password_file} is etcd's password, "
                         f"but the registry ({where('registry')}) is not etcd: remove password_file")  # fmt: skip
    if cfg.registry.startswith("etcd://"):
        from ..registry.etcd.url import parse_url  # here: the etcd package imports aetcd (~0.3 s), only for etcd

        try:
            parse_url(cfg.registry, cfg.registry_password)
        except UsageError as err:
            raise UsageError(f"{where('registry')}: {err}") from None
    for value in cfg.dns_upstreams:
        parse_hostport(value, "dns.upstreams", default_port=53, where=where("dns.upstreams"))
    for cidr in cfg.service_cidrs:
        net = ipaddress.ip_network(cidr)
        for local in local_networks if local_networks is not None else host_networks():
            if local.version == net.version and local.overlaps(net) and local.prefixlen > 0 \
                    and not (cfg.cluster_dns_interface and local == _host(cfg.cluster_dns)):  # fmt: skip
                # (the cluster DNS address the agent puts on the node lies inside a service CIDR by design)
                raise UsageError(
                    f"{where('service_cidrs')}: service_cidrs: {cidr} overlaps the local network {local}; "
                    "VIPs there would shadow real hosts: choose an unused range"
                )


def _host(address: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(address)
    except ValueError:
        return None


def host_networks() -> list:
    """The networks of this (network namespace's) interfaces, via netifaces; loopback excluded."""
    import netifaces

    nets = []
    for iface in netifaces.interfaces():
        addrs = netifaces.ifaddresses(iface)
        for fam in (netifaces.AF_INET, netifaces.AF_INET6):
            for a in addrs.get(fam, []):
                addr, mask = a.get("addr", "").split("%")[0], a.get("netmask", "")
                try:
                    if fam == netifaces.AF_INET6 and "/" in mask:
                        mask = mask.split("/")[1]
                    net = ipaddress.ip_interface(f"{addr}/{mask}").network
                except ValueError:
                    continue
                if not net.is_loopback and not net.is_link_local:
                    nets.append(net)
    return nets


def check_zone(zone: str, where: str = "configuration") -> None:
    """The cluster zone: a DNS subdomain of RFC 1123 labels, as Kubernetes' ``--cluster-domain``."""
    labels = zone.removesuffix(".").split(".")
    if not zone or len(zone) > 253 or not all(_LABEL.match(label) for label in labels):
        raise UsageError.invalid(
            "cluster_zone", zone, "expected a DNS name of labels (letters, digits, '-') joined by dots, "
            "e.g. cluster.local", where,
        )  # fmt: skip


_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")  # compared case-insensitively

__all__ = ["Config", "check_zone", "host_networks", "load", "validate"]
