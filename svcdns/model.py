"""Service, ServicePort, Endpoint: the trimmed internal types every other module works on.

They are frozen, normalised on arrival (addresses are ``ipaddress`` objects, protocols upper-case) and
validated in the constructor. Registry data (YAML/JSON files, etcd values) enters and leaves
through :mod:`svcdns.registry.documents`, the one codec between documents and these types. The field
grammars they share with pods and probes are in :mod:`svcdns.validate` (names, ports, addresses) and
:mod:`svcdns.labels` (labels and selectors); a readiness probe, which a selector-less Service may
carry, is :class:`svcdns.probe.spec.Probe`.

Every validation failure raises :class:`ValidationError`, which names the field, the value, and what
would be valid.

Checks are not repeated where nothing they check changed, since a full read builds 100k pods and
their endpoints: ``with_endpoints`` / ``with_cluster_ips`` check only the endpoints, resp. the VIPs
(and what they must agree with), ``Endpoint.of_pod`` takes a validated pod's values as they are, and
the label keys and values and port names once found valid are remembered (a bounded set).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .labels import Labels, labels_of
from .probe.spec import Probe
from .validate import (
    IPAddress,
    ValidationError,
    check_bool,
    check_dns_name,
    check_label,
    check_port_name,
    check_port_number,
    parse_ip,
)

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
SINGLE_STACK, PREFER_DUAL_STACK, REQUIRE_DUAL_STACK = "SingleStack", "PreferDualStack", "RequireDualStack"
IP_FAMILY_POLICIES = (SINGLE_STACK, PREFER_DUAL_STACK, REQUIRE_DUAL_STACK)
IPV6 = "IPv6"


def family_of(ip: IPAddress) -> str:
    return IPV4 if ip.version == 4 else IPV6


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
        check_bool("ready", self.ready)
        check_bool("terminating", self.terminating)
        if self.serving is None:
            object.__setattr__(self, "serving", self.ready)
        check_bool("serving", self.serving)
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
    ip_families: tuple[str, ...] = ()  # requested families; () = as the policy and config say (ipam.service_families)
    ip_family_policy: str = ""  # spec.ipFamilyPolicy: "" (not given), or one of IP_FAMILY_POLICIES
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
        check_bool("publishNotReadyAddresses", self.publish_not_ready_addresses)
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
        policy = self.ip_family_policy
        if policy not in ("", *IP_FAMILY_POLICIES):
            raise ValidationError("ipFamilyPolicy", policy, f"must be one of {', '.join(IP_FAMILY_POLICIES)}")
        if policy == SINGLE_STACK and (len(families) > 1 or len(ips) > 1):
            raise ValidationError("ipFamilyPolicy", policy, "takes one family; ipFamilies / clusterIPs list two")
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
            object.__setattr__(self, "external_name", check_dns_name("externalName", self.external_name))
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
        if self.ip_family_policy in (PREFER_DUAL_STACK, REQUIRE_DUAL_STACK) and not self.cluster_ips:
            return  # the other family may be added to those given (ipam.service_families): not final yet
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


# The cluster DNS address as a Service, as Kubernetes names it: the zone answers its names and
# `service list` shows it, for the cluster_dns the agent serves (it is never a registry record: the
# agent itself answers there, no DNAT rule must catch it). A registry Service of that name wins.
CLUSTER_DNS_SERVICE = Service("kube-dns", "kube-system", ports=(ServicePort(53, "UDP", name="dns"),
                              ServicePort(53, "TCP", name="dns-tcp")))  # fmt: skip


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
