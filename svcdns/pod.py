"""Pod: a workload with labels and addresses, the other object kind of the registry (Kubernetes' v1 Pod,
trimmed to what Services need). The label grammar it shares with Service selectors is in
:mod:`svcdns.model`.

A Pod is frozen and validated on construction, like a Service. ``ready`` is its Ready condition
(true unless its writer or a readiness probe says otherwise); ``terminating`` says it is being
deleted: it gets no new connections unless nothing else serves, and its open ones are kept until it
goes. ``deletion_deadline`` (Kubernetes' ``deletionTimestamp``, Unix seconds) is when it goes:
``svcdns pod rm --grace 30`` writes it, and from then on every reader treats the record as gone
(:func:`Pod.gone`), whether or not anyone has deleted it yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import (
    DEFAULT_NAMESPACE,
    PROTOCOLS,
    IPAddress,
    Labels,
    ValidationError,
    check_label,
    check_port_name,
    family_of,
    labels_of,
    parse_ip,
)


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A port a pod's container listens on; a Service's named ``targetPort`` resolves against ``name``."""

    container_port: int
    name: str = ""
    protocol: str = "TCP"

    def __post_init__(self) -> None:
        port = self.container_port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValidationError("containerPort", port, "must be a port number from 1 to 65535")
        if self.name:
            check_port_name("name", self.name)
        protocol = self.protocol.upper() if isinstance(self.protocol, str) else self.protocol
        if protocol not in PROTOCOLS:
            raise ValidationError("protocol", self.protocol, f"must be one of {', '.join(PROTOCOLS)}")
        object.__setattr__(self, "protocol", protocol)


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    namespace: str = DEFAULT_NAMESPACE
    labels: Labels = ()
    ips: tuple[IPAddress, ...] = ()  # podIPs: at most one per family
    hostname: str = ""
    subdomain: str = ""
    node_name: str = ""
    ports: tuple[ContainerPort, ...] = ()
    ready: bool = True
    terminating: bool = False
    deletion_deadline: float = 0.0  # Unix time it goes at; 0: not being deleted

    def __post_init__(self) -> None:
        check_label("name", self.name)
        check_label("namespace", self.namespace)
        object.__setattr__(self, "labels", labels_of(self.labels))
        ips = tuple(parse_ip(f"podIPs[{i}]", ip) for i, ip in enumerate(self.ips))
        if len({family_of(ip) for ip in ips}) != len(ips):
            raise ValidationError("podIPs", [str(ip) for ip in ips], "holds at most one address per family")
        object.__setattr__(self, "ips", ips)
        for field in ("hostname", "subdomain"):
            if getattr(self, field):
                check_label(field, getattr(self, field))
        if self.node_name:
            check_label("nodeName", self.node_name)
        for flag in ("ready", "terminating"):
            if not isinstance(getattr(self, flag), bool):
                raise ValidationError(flag, getattr(self, flag), "must be true or false")
        deadline = self.deletion_deadline
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 <= deadline < 1e11:
            raise ValidationError("deletionTimestamp", deadline, "must be a time (Unix seconds, or RFC 3339)")
        if deadline:
            object.__setattr__(self, "terminating", True)
        seen_ports: set[tuple[str, str]] = set()
        for i, p in enumerate(self.ports):
            if p.name and (p.name, p.protocol) in seen_ports:
                raise ValidationError(f"ports[{i}].name", p.name, "duplicate container port name")
            seen_ports.add((p.name, p.protocol))

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def gone(self, now: float) -> bool:
        """Whether its deletion deadline has passed: every reader then treats the pod as deleted."""
        return bool(self.deletion_deadline) and now >= self.deletion_deadline

    def port_named(self, name: str, protocol: str) -> int | None:
        """The container port a named ``targetPort`` means on this pod (Kubernetes resolves it per pod)."""
        for p in self.ports:
            if p.name == name and p.protocol == protocol:
                return p.container_port
        return None


__all__ = ["ContainerPort", "Pod"]
