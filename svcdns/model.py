"""Service, ServicePort, Endpoint, Probe: the trimmed internal types every other module works on (Probe
is a pod's readiness probe, and a selector-less Service's: both carry one).

They are frozen, normalised on arrival (addresses are ``ipaddress`` objects, protocols upper-case) and
validated in the constructor. Registry data (YAML/JSON files, etcd values) enters and leaves
through :mod:`svcdns.registry.documents`, the one codec between documents and these types.

Every validation failure raises :class:`ValidationError`, which names the field, the value, and what
would be valid.

Checks are not repeated where nothing they check changed, since a full read builds 100k pods and
their endpoints: ``with_endpoints`` / ``with_cluster_ips`` check only the endpoints, resp. the VIPs
(and what they must agree with), ``Endpoint.of_pod`` takes a validated pod's values as they are, and
the label keys and values and port names once found valid are remembered (a bounded set).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import MAX_VALUE, UsageError, shorten

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = ("TCP", "UDP", "SCTP")
CLUSTER_IP = "ClusterIP"
HEADLESS = "Headless"
EXTERNAL_NAME = "ExternalName"
SERVICE_TYPES = (CLUSTER_IP, HEADLESS, EXTERNAL_NAME)
AFFINITY_NONE = "None"
AFFINITY_CLIENT_IP = "ClientIP"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, as Kubernetes
MAX_AFFINITY_TIMEOUT = 86400
DEFAULT_NAMESPACE = "default"
IPV4 = "IPv4"
IPV6 = "IPv6"

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# a port name (IANA_SVC_NAME): 1-15 chars, lower-case alphanumerics and '-', at least one letter, no '--'
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_DNS_NAME_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class ValidationError(UsageError, ValueError):
    """A Service, port or endpoint is not valid: ``field`` is where, ``value`` is what was found
    (shown cut to a sane length), ``reason`` what would be valid. A usage error (exit 2), and a
    ValueError for callers that treat it as one."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.reason = reason
        field = field[:MAX_VALUE]  # a field name can come from the document too (an endpoint's port name)
        super().__init__(f"{field}: {shorten(value)}: {reason}", field=field, value=value, expected=reason)

    def within(self, prefix: str) -> ValidationError:
        """The same error, located inside ``prefix`` (e.g. ``ports[1]``)."""
        return ValidationError(f"{prefix}.{self.field}" if self.field else prefix, self.value, self.reason)


def check_label(field_name: str, value: Any) -> str:
    """An RFC 1123 DNS label: what Service names and namespaces must be."""
    if not isinstance(value, str):
        raise ValidationError(field_name, value, "must be a string")
    if not _LABEL.fullmatch(value):
        raise ValidationError(
            field_name,
            value,
            "must be an RFC 1123 DNS label: 1-63 lower-case letters, digits or '-', "
            "starting and ending with a letter or digit",
        )
    return value


def check_port_number(field_name: str, value: Any) -> int:
    """A port number, 1-65535; a string of ASCII digits is taken too (``port: "80"``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
            value = int(value)
        else:
            raise ValidationError(field_name, value, "must be a port number from 1 to 65535")
    if not 1 <= value <= 65535:
        raise ValidationError(field_name, value, "must be a port number from 1 to 65535")
    return value


def parse_ip(field_name: str, value: Any) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    if not isinstance(value, str):
        raise ValidationError(field_name, value, "must be an IPv4 or IPv6 address")
    try:
        # a dotted quad takes the C parser, which accepts what ipaddress does (four decimal octets,
        # no leading zeros) at a tenth of its cost: every pod and endpoint address comes through here
        packed = socket.inet_pton(socket.AF_INET, value)
    except (OSError, ValueError):
        pass
    else:
        first = packed[0]
        if first == 127 or 224 <= first <= 239 or packed == b"\0\0\0\0":
            raise ValidationError(field_name, value, "must be a unicast address (not unspecified, multicast or loopback)")
        return ipaddress.IPv4Address(packed)
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValidationError(field_name, value, "must be an IPv4 or IPv6 address") from None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise ValidationError(field_name, value, "must be a unicast address (not unspecified, multicast or loopback)")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise ValidationError(field_name, value, "IPv4-mapped IPv6 addresses are not allowed; write the IPv4 address")
    return ip


Labels = tuple[tuple[str, str], ...]  # sorted (key, value) pairs: hashable, comparable, cheap to index

# Kubernetes' label syntax: an optional DNS-subdomain prefix and '/', then a name of at most 63
# characters; values at most 63 characters, possibly empty; both [A-Za-z0-9] at the ends, -_. inside.
_LABEL_PART = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# label keys and values found valid, so that the same ones (a Service's selector and each of its
# pods' labels, read again at every change) are not matched again; cleared when full
_VALID_KEYS: set[str] = set()
_VALID_VALUES: set[str] = set()
_VALID_PORT_NAMES: set[str] = set()
_MEMO_MAX = 1 << 16


def _memo(known: set[str], text: str) -> None:
    if len(known) >= _MEMO_MAX:
        known.clear()
    known.add(text)


def check_label_key(field: str, key: object) -> str:
    if type(key) is str and key in _VALID_KEYS:
        return key
    if not isinstance(key, str) or not key:
        raise ValidationError(field, key, "a label key must be a non-empty string")
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _PREFIX.fullmatch(prefix)):
        raise ValidationError(field, key, "the prefix of a label key must be a DNS subdomain (e.g. example.com/)")
    if not name or not _LABEL_PART.fullmatch(name):
        raise ValidationError(field, key, "a label name must be 1-63 characters [A-Za-z0-9-_.], "
                                          "starting and ending with a letter or digit")  # fmt: skip
    if type(key) is str:
        _memo(_VALID_KEYS, key)
    return key


def check_label_value(field: str, value: object) -> str:
    if type(value) is str and value in _VALID_VALUES:
        return value
    if not isinstance(value, str) or not _LABEL_PART.fullmatch(value):
        raise ValidationError(field, value, "a label value must be at most 63 characters [A-Za-z0-9-_.], "
                                            "starting and ending with a letter or digit (or empty)")  # fmt: skip
    if type(value) is str:
        _memo(_VALID_VALUES, value)
    return value


def labels_of(data: Mapping[str, str] | Iterable[tuple[str, str]], field: str = "labels") -> Labels:
    """Validated, sorted (key, value) pairs from a mapping or pairs."""
    pairs = data.items() if isinstance(data, Mapping) else data
    out: dict[str, str] = {}
    for key, value in pairs:
        out[check_label_key(f"{field}.{key}", key)] = check_label_value(f"{field}.{key}", value)
    return tuple(sorted(out.items()))


def parse_selector(text: str, field: str = "selector") -> Labels:
    """``app=web,tier=front`` (``==`` also accepted): the equality-based selectors of ``-l`` and
    ``--selector``. An empty text selects nothing on a Service (it has no selector)."""
    pairs: list[tuple[str, str]] = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        key, sep, value = term.replace("==", "=").partition("=")
        if not sep or "!" in key:
            raise ValidationError(field, text, "expected key=value[,key=value...] (equality only), e.g. app=web")
        if any(k == key.strip() and v != value.strip() for k, v in pairs):
            raise ValidationError(field, text, f"label {key.strip()!r} is given two values; no object has both")
        pairs.append((key.strip(), value.strip()))
    return labels_of(pairs, field)


def matches(selector: Labels, labels: Labels) -> bool:
    """Whether ``labels`` hold every pair of a non-empty ``selector`` (an empty one matches nothing,
    as a Service without a selector selects no pod)."""
    if not selector:
        return False
    # both are sorted pairs with one value per key: a pair is held iff it is one of the labels
    # (three calls per pod in a full read: no dict built for each)
    if len(selector) == 1:
        return selector[0] in labels
    return all(pair in labels for pair in selector)


def family_of(ip: IPAddress) -> str:
    return IPV4 if ip.version == 4 else IPV6


def _check_bool(field_name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field_name, value, "must be true or false")
    return value


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a Service: traffic to ``port`` goes to the endpoints' ``target_port``."""

    port: int
    protocol: str = "TCP"
    target_port: int = 0  # 0: same as port
    name: str = ""
    # a named targetPort: resolved per pod against its container ports (svcdns.endpoints); the
    # number of an endpoint without a resolution is then ``port``
    target_port_name: str = ""

    def __post_init__(self) -> None:
        if self.name:  # a DNS label, as Kubernetes' ServicePort.name (a container port's is shorter)
            check_label("name", self.name)
        object.__setattr__(self, "port", check_port_number("port", self.port))
        protocol = self.protocol.upper() if isinstance(self.protocol, str) else self.protocol
        if protocol not in PROTOCOLS:
            raise ValidationError("protocol", self.protocol, f"must be one of {', '.join(PROTOCOLS)}")
        object.__setattr__(self, "protocol", protocol)
        if self.target_port_name:
            check_port_name("targetPort", self.target_port_name)
        target = (self.target_port if not self.target_port_name else 0) or self.port
        object.__setattr__(self, "target_port", check_port_number("targetPort", target))

    def __str__(self) -> str:
        head = f"{self.name}:" if self.name else ""
        if self.target_port_name:
            target = f":{self.target_port_name}"
        else:
            target = f":{self.target_port}" if self.target_port != self.port else ""
        return f"{head}{self.port}{target}/{self.protocol.lower()}"


def check_port_name(field_name: str, value: Any) -> str:
    """A port name (IANA_SVC_NAME), as Service ports, container ports and named targetPorts use."""
    if type(value) is str and value in _VALID_PORT_NAMES:
        return value
    if not isinstance(value, str) or not _PORT_NAME.fullmatch(value) or "--" in value or not any(c.isalpha() for c in value):
        raise ValidationError(
            field_name,
            value,
            "a port name must be 1-15 lower-case letters, digits or '-', with at least one letter, "
            "starting and ending with a letter or digit, and no '--'",
        )
    _memo(_VALID_PORT_NAMES, value)
    return value


def parse_port_spec(spec: str) -> ServicePort:
    """Parse the CLI port syntax ``[name:]port[:targetPort][/tcp|udp|sctp]``; a targetPort that is
    not a number is a name, resolved per pod (``http:80:http``).

    >>> str(parse_port_spec("http:80:8080/tcp"))
    'http:80:8080/tcp'
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValidationError("port", spec, "expected [name:]port[:targetPort][/tcp|udp|sctp], e.g. http:80:8080/tcp")
    text = spec.strip()
    protocol = "TCP"
    if "/" in text:
        text, _, proto = text.rpartition("/")
        protocol = proto.upper()
        if protocol not in PROTOCOLS:
            raise ValidationError("port", spec, f"unknown protocol {proto!r}; use tcp, udp or sctp")
    parts = text.split(":")
    name = ""
    if parts and parts[0] and not parts[0].isdigit():
        name = parts.pop(0)
    target_name = parts.pop() if len(parts) == 2 and parts[1] and not parts[1].isdigit() else ""
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
        raise ValidationError("port", spec, "expected [name:]port[:targetPort][/tcp|udp|sctp], e.g. http:80:8080/tcp")
    if len(parts) > 1 and int(parts[1]) == 0:
        raise ValidationError("port", spec, "targetPort: must be a port number from 1 to 65535")
    try:
        return ServicePort(
            name=name,
            port=int(parts[0]),
            target_port=int(parts[1]) if len(parts) > 1 else 0,
            protocol=protocol,
            target_port_name=target_name,
        )
    except ValidationError as err:
        raise ValidationError("port", spec, f"{err.field}: {err.reason}") from None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One backend of a Service. Only ``ready`` endpoints get new traffic; when none is ready, the
    ``serving`` and ``terminating`` ones do (as kube-proxy does)."""

    address: IPAddress
    ready: bool = True
    serving: bool | None = None  # None: same as ready
    terminating: bool = False
    hostname: str = ""
    ports: tuple[tuple[str, int], ...] = ()  # per-endpoint target port override, by Service port name
    pod: str = ""  # the pod it came from (EndpointSlice's targetRef), for a Service with a selector

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", parse_ip("address", self.address))
        if self.pod:
            check_label("pod", self.pod)
        _check_bool("ready", self.ready)
        _check_bool("terminating", self.terminating)
        if self.serving is None:
            object.__setattr__(self, "serving", self.ready)
        _check_bool("serving", self.serving)
        if self.hostname:
            check_label("hostname", self.hostname)
        ports = []
        for name, number in self.ports.items() if isinstance(self.ports, Mapping) else self.ports:
            ports.append((name, check_port_number(f"ports.{name}", number)))
        object.__setattr__(self, "ports", tuple(sorted(ports)))

    @classmethod
    def of_pod(cls, address: IPAddress, ready: bool, serving: bool, terminating: bool, hostname: str,
               ports: tuple[tuple[str, int], ...], pod: str) -> Endpoint:  # fmt: skip
        """An endpoint derived from a Pod, whose address, hostname, name and port numbers were
        validated when the Pod was; the flags are booleans, the ports already sorted: nothing to check again."""
        out = object.__new__(cls)
        for name, value in (("address", address), ("ready", ready), ("serving", serving), ("terminating", terminating),
                            ("hostname", hostname), ("ports", ports), ("pod", pod)):  # fmt: skip
            object.__setattr__(out, name, value)
        return out

    @property
    def family(self) -> str:
        return family_of(self.address)

    def target_port(self, port: ServicePort) -> int:
        """The port this endpoint listens on for a Service port."""
        for name, number in self.ports:
            if name == port.name:
                return number
        return port.target_port

@dataclass(frozen=True, slots=True)
class Service:
    """A Service: a stable name (and, unless headless or ExternalName, stable VIPs) in front of endpoints.

    ``cluster_ips`` holds the VIPs (one per family, the primary first). In a registry file they are
    the *requested* VIPs (usually none); the registry fills in the allocated ones.
    """

    name: str
    namespace: str = DEFAULT_NAMESPACE
    type: str = CLUSTER_IP
    ports: tuple[ServicePort, ...] = ()
    cluster_ips: tuple[IPAddress, ...] = ()
    ip_families: tuple[str, ...] = ()  # requested families; () = the primary service CIDR's family
    external_name: str = ""
    session_affinity: str = AFFINITY_NONE
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    endpoints: tuple[Endpoint, ...] = field(default=())
    # spec.selector: with one, the registry derives the endpoints from the pods it selects
    # (svcdns.endpoints); the documents refuse explicit endpoints beside it
    selector: Labels = ()
    publish_not_ready_addresses: bool = False
    labels: Labels = ()  # metadata.labels: what `service list -l` selects on
    # selector-less only: every agent probes each explicit endpoint itself (svcdns.probe.endpoints)
    readiness_probe: Probe | None = None

    def __post_init__(self) -> None:
        check_label("name", self.name)
        check_label("namespace", self.namespace)
        object.__setattr__(self, "selector", labels_of(self.selector, "selector"))
        object.__setattr__(self, "labels", labels_of(self.labels, "labels"))
        _check_bool("publishNotReadyAddresses", self.publish_not_ready_addresses)
        if self.type not in SERVICE_TYPES:
            raise ValidationError("type", self.type, f"must be one of {', '.join(SERVICE_TYPES)}")
        ports = tuple(self.ports)
        object.__setattr__(self, "ports", ports)
        seen_names: set[str] = set()
        seen_ports: set[tuple[int, str]] = set()
        for i, p in enumerate(ports):
            if len(ports) > 1 and not p.name:
                raise ValidationError(f"ports[{i}].name", "", "every port must be named when a Service has several")
            if p.name in seen_names:
                raise ValidationError(f"ports[{i}].name", p.name, "duplicate port name")
            if (p.port, p.protocol) in seen_ports:
                raise ValidationError(f"ports[{i}].port", p.port, f"duplicate port {p.port}/{p.protocol.lower()}")
            seen_names.add(p.name)
            seen_ports.add((p.port, p.protocol))
        self._check_vips()
        if self.type == CLUSTER_IP and not ports:
            raise ValidationError("ports", [], "a ClusterIP Service needs at least one port")
        if self.session_affinity not in (AFFINITY_NONE, AFFINITY_CLIENT_IP):
            raise ValidationError("sessionAffinity", self.session_affinity, "must be None or ClientIP")
        timeout = self.affinity_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_AFFINITY_TIMEOUT:
            raise ValidationError(
                "sessionAffinityTimeoutSeconds",
                timeout,
                f"must be a whole number of seconds from 1 to {MAX_AFFINITY_TIMEOUT}",
            )
        self._check_endpoints()
        if self.readiness_probe is not None:
            check_service_probe(self)

    def _check_vips(self) -> None:
        """The VIPs and families, against each other and the type (normalised in place)."""
        ips = tuple(parse_ip(f"clusterIPs[{i}]", ip) for i, ip in enumerate(self.cluster_ips))
        object.__setattr__(self, "cluster_ips", ips)
        families = tuple(self.ip_families)
        for i, fam in enumerate(families):
            if fam not in (IPV4, IPV6):
                raise ValidationError(f"ipFamilies[{i}]", fam, "must be IPv4 or IPv6")
        if len(set(families)) != len(families):
            raise ValidationError("ipFamilies", list(families), "each family at most once")
        if len({family_of(ip) for ip in ips}) != len(ips):
            raise ValidationError("clusterIPs", [str(ip) for ip in ips], "at most one address per family")
        if ips and families and tuple(family_of(ip) for ip in ips) != families[: len(ips)]:
            raise ValidationError(
                "clusterIPs", [str(ip) for ip in ips], f"families do not match ipFamilies {list(families)}"
            )
        if ips and not families:
            object.__setattr__(self, "ip_families", tuple(family_of(ip) for ip in ips))
        if self.type == EXTERNAL_NAME:
            if not self.external_name:
                raise ValidationError("externalName", self.external_name, "is required for type ExternalName")
            object.__setattr__(self, "external_name", _check_dns_name("externalName", self.external_name))
            if ips:
                raise ValidationError("clusterIP", str(ips[0]), "an ExternalName Service has no VIP")
        elif self.external_name:
            raise ValidationError("externalName", self.external_name, "is only valid with type ExternalName")
        if self.type == HEADLESS and ips:
            raise ValidationError("clusterIP", str(ips[0]), "a Headless Service has no VIP")

    def _check_endpoints(self) -> None:
        """The endpoints against each other and the ports and families (the tuple normalised in place)."""
        endpoints = tuple(self.endpoints)
        object.__setattr__(self, "endpoints", endpoints)
        seen_addr: set[IPAddress] = set()
        names = {p.name for p in self.ports}
        for i, ep in enumerate(endpoints):
            if ep.address in seen_addr:
                raise ValidationError(f"endpoints[{i}].address", str(ep.address), "duplicate endpoint address")
            seen_addr.add(ep.address)
            for pname, _ in ep.ports:
                if pname not in names:
                    raise ValidationError(f"endpoints[{i}].ports", pname, "names no port of this Service")
        self.check_endpoint_families()

    def _evolve(self, **changes: Any) -> Service:
        """A copy with ``changes``, none of its other fields checked again (they were on construction):
        the caller checks what the changes can break."""
        out = object.__new__(Service)
        for name in _SERVICE_FIELDS:
            object.__setattr__(out, name, changes[name] if name in changes else getattr(self, name))
        return out

    # ---- derived views ---------------------------------------------------------------------------------

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        """``namespace/name``, as logs and errors show a Service."""
        return f"{self.namespace}/{self.name}"

    @property
    def has_vip(self) -> bool:
        return self.type == CLUSTER_IP

    @property
    def affinity_seconds(self) -> int:
        """How long ClientIP affinity keeps a client on its endpoint; 0 without affinity."""
        return self.affinity_timeout if self.session_affinity == AFFINITY_CLIENT_IP else 0

    def vip(self, family: str) -> IPAddress | None:
        for ip in self.cluster_ips:
            if family_of(ip) == family:
                return ip
        return None

    def usable_endpoints(self, family: str | None = None) -> tuple[Endpoint, ...]:
        """The endpoints that take new connections: the ready ones, or, when none is ready, the ones that
        are serving and terminating (kube-proxy's rule, so a rolling update never drops traffic)."""
        eps = [e for e in self.endpoints if family is None or e.family == family]
        ready = tuple(e for e in eps if e.ready)
        if ready:
            return ready
        return tuple(e for e in eps if e.serving and e.terminating)

    def targets(self, port: ServicePort, family: str) -> tuple[tuple[str, int], ...]:
        """Where new connections to ``port`` go in ``family``: (address, target port) of each usable
        endpoint, sorted. Every dataplane and the conntrack cleaner take it from here."""
        return tuple(sorted({(str(ep.address), ep.target_port(port)) for ep in self.usable_endpoints(family)}))

    def ready_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.ready)

    def check_endpoint_families(self) -> None:
        """Refuse endpoints whose family the Service does not have (known once its families are)."""
        families = self.ip_families
        if not families or self.type == EXTERNAL_NAME:
            return
        for i, ep in enumerate(self.endpoints):
            if ep.family not in families:
                raise ValidationError(
                    f"endpoints[{i}].address",
                    str(ep.address),
                    f"is {ep.family} but the Service has only {' and '.join(families)}",
                )

    def with_cluster_ips(self, ips: Iterable[IPAddress]) -> Service:
        ips = tuple(parse_ip(f"clusterIPs[{i}]", ip) for i, ip in enumerate(ips))
        out = self._evolve(cluster_ips=ips, ip_families=tuple(family_of(ip) for ip in ips))
        out._check_vips()
        out.check_endpoint_families()
        return out

    def with_endpoints(self, endpoints: Iterable[Endpoint]) -> Service:
        out = self._evolve(endpoints=tuple(endpoints))
        out._check_endpoints()
        return out

_SERVICE_FIELDS = tuple(f.name for f in fields(Service))


def _check_dns_name(field_name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError(field_name, value, "must be a DNS name such as example.org")
    name = value.rstrip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_DNS_NAME_LABEL.fullmatch(label) for label in labels):
        raise ValidationError(field_name, value, "must be a DNS name such as example.org (labels of 1-63 characters)")
    return name


# The cluster DNS address as a Service, as Kubernetes names it: the zone answers its names and
# `service list` shows it, for the cluster_dns the agent serves (it is never a registry record: the
# agent itself answers there, no DNAT rule must catch it). A registry Service of that name wins.
CLUSTER_DNS_SERVICE = Service("kube-dns", "kube-system", ports=(ServicePort(53, "UDP", name="dns"),
                              ServicePort(53, "TCP", name="dns-tcp")))  # fmt: skip


# ---- readiness probes: a Pod's (svcdns.pod) and a selector-less Service's (svcdns.probe.endpoints) ----

PROBE_KINDS = ("tcpSocket", "httpGet", "grpc", "exec")
SCHEMES = ("HTTP", "HTTPS")
MAX_COMMAND = 64  # exec arguments; each at most 4096 characters


@dataclass(frozen=True, slots=True)
class Probe:
    """A readiness probe, with Kubernetes' fields and defaults. ``kind`` is ``tcpSocket`` (a connection
    is accepted), ``httpGet`` (200 <= status < 400), ``grpc`` (the standard health service answers
    SERVING for ``service``) or ``exec`` (``command`` exits 0). ``port`` is a number or, for
    tcpSocket and httpGet, one of the pod's port names (grpc takes a number, as in Kubernetes); exec
    has none. ``container`` names the container whose probe it is (a manifest's
    ``spec.containers[].name``), to say which one fails. Seconds are whole numbers, as in Kubernetes;
    the timeout may not exceed the period."""

    kind: str
    port: int | str = 0
    path: str = "/"
    scheme: str = "HTTP"
    http_headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()  # exec
    service: str = ""  # grpc: the health service's name ("": the server as a whole)
    initial_delay: int = 0  # initialDelaySeconds
    period: int = 10  # periodSeconds
    timeout: int = 1  # timeoutSeconds
    success_threshold: int = 1
    failure_threshold: int = 3
    container: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise ValidationError("readinessProbe", self.kind, f"must have one of {', '.join(PROBE_KINDS)}")
        where = f"readinessProbe.{self.kind}"
        port = self.port
        if self.kind == "exec":
            self._check_command(where)
        elif port in (0, "", None):
            raise ValidationError(f"{where}.port", None, "is required")
        elif isinstance(port, str) and not (port.isascii() and port.isdigit()):
            if self.kind == "grpc":
                raise ValidationError(f"{where}.port", port, "must be a port number from 1 to 65535 (gRPC probes take no port name)")
            check_port_name(f"{where}.port", port)
        else:
            object.__setattr__(self, "port", check_port_number(f"{where}.port", port))
        if not isinstance(self.path, str) or not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise ValidationError(f"{where}.path", self.path, "must be a path starting with '/', without spaces")
        scheme = self.scheme.upper() if isinstance(self.scheme, str) else self.scheme
        if scheme not in SCHEMES:
            raise ValidationError(f"{where}.scheme", self.scheme, "must be HTTP or HTTPS")
        object.__setattr__(self, "scheme", scheme)
        for i, (name, value) in enumerate(self.http_headers):
            if not isinstance(name, str) or not _TOKEN.fullmatch(name) or not isinstance(value, str) or any(
                c in value for c in "\r\n\0"
            ):
                raise ValidationError(f"{where}.httpHeaders[{i}]", {"name": name, "value": value},
                                      "must be {name: a header name, value: text on one line}")  # fmt: skip
        if not isinstance(self.service, str) or len(self.service) > 255 or any(c in self.service for c in "\r\n\0"):
            raise ValidationError(f"{where}.service", self.service, "must be a service name on one line (at most 255 characters)")
        if self.container:
            check_label("container", self.container)
        for attr, low in (("initial_delay", 0), ("period", 1), ("timeout", 1), ("success_threshold", 1),
                          ("failure_threshold", 1)):  # fmt: skip
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 86400:
                raise ValidationError(f"readinessProbe.{_FIELD_NAMES[attr]}", value, f"must be a whole number from {low} to 86400")
        if self.timeout > self.period:
            raise ValidationError("readinessProbe.timeoutSeconds", self.timeout,
                                  f"must not exceed periodSeconds ({self.period})")  # fmt: skip

    def _check_command(self, where: str) -> None:
        command = self.command
        if isinstance(command, str) or not isinstance(command, (tuple, list)) or not command:
            raise ValidationError(f"{where}.command", list(command) if isinstance(command, tuple) else command, "must be a non-empty list of arguments, e.g. [cat, /tmp/ready]")
        if len(command) > MAX_COMMAND or not all(isinstance(a, str) and len(a) <= 4096 and "\0" not in a for a in command):
            raise ValidationError(f"{where}.command", list(command),
                                  f"must be at most {MAX_COMMAND} text arguments without NUL")  # fmt: skip
        if not command[0]:
            raise ValidationError(f"{where}.command[0]", "", "must name the program to run")
        object.__setattr__(self, "command", tuple(command))


def check_service_probe(svc: Service) -> None:
    """Refuse a Service's ``readinessProbe`` that cannot apply: one beside a selector (its pods carry
    their own), on an ExternalName (no endpoints), an exec probe (an explicit endpoint has no network
    namespace to run it in), one naming a container, or a named port the Service lacks."""
    probe = svc.readiness_probe
    if not isinstance(probe, Probe):
        raise ValidationError("readinessProbe", probe, "must be a probe, e.g. {tcpSocket: {port: 8080}}")
    if svc.selector:
        raise ValidationError("readinessProbe", probe.kind, "a Service with a selector takes no readinessProbe: "
                              "its pods carry their own (put it on the pods)")  # fmt: skip
    if svc.type == EXTERNAL_NAME:
        raise ValidationError("readinessProbe", probe.kind, "an ExternalName Service has no endpoints to probe")
    if probe.kind == "exec":
        raise ValidationError("readinessProbe.exec", list(probe.command), "a Service's endpoints have no network "
                              "namespace to run a command in; use tcpSocket, httpGet or grpc")  # fmt: skip
    if probe.container:
        raise ValidationError("readinessProbe.container", probe.container, "a Service's probe names no container")
    if isinstance(probe.port, str) and not any(p.name == probe.port and p.protocol == "TCP" for p in svc.ports):
        names = ", ".join(p.name for p in svc.ports if p.name and p.protocol == "TCP") or "none named"
        raise ValidationError(f"readinessProbe.{probe.kind}.port", probe.port,
                              f"names no TCP port of Service {svc.ref}; its ports: {names}")  # fmt: skip


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # an HTTP field name (RFC 9110)
_FIELD_NAMES = {"initial_delay": "initialDelaySeconds", "period": "periodSeconds", "timeout": "timeoutSeconds",
                "success_threshold": "successThreshold", "failure_threshold": "failureThreshold"}  # fmt: skip
