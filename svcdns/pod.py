"""Pod: a workload with labels and addresses, the other object kind of the registry (Kubernetes' v1 Pod,
trimmed to what Services need). The label grammar it shares with Service selectors is in
:mod:`svcdns.labels`.

A Pod is frozen and validated on construction, like a Service. It is spec, written by users and
``svcdns apply``; its prober's verdict is status, kept apart (:class:`PodStatus`). ``ready`` is what
its writer says (``pod add --not-ready``: false); ``terminating`` says it is being
deleted: it gets no new connections unless nothing else serves, and its open ones are kept until it
goes. ``deletion_deadline`` (Kubernetes' ``deletionTimestamp``, Unix seconds) is when it goes:
``svcdns pod rm --grace 30`` writes it, and from then on every reader treats the record as gone
(:func:`Pod.gone`), whether or not anyone has deleted it yet.

``readiness_probes`` (Kubernetes' ``readinessProbe``, one per container that has one) are run by the
agent of the pod's node (:mod:`svcdns.probe`), which writes the pod's :class:`PodStatus` (``ready``:
every probe passes, ``reason``: why not) when it changes, never the record. A probed pod is ready
when its record's ``ready`` and its status's both hold (:func:`readiness`): no status yet is not ready,
as in Kubernetes (not ready until the first success), and ``ready: false`` in the record keeps it out
whatever its probes say (an operator's hold, like a readiness gate). ``netns`` names the pod's
network namespace: exec probes run there.
"""

from __future__ import annotations

from dataclasses import dataclass

from .labels import Labels, labels_of
from .model import DEFAULT_NAMESPACE, PROTOCOLS, family_of
from .probe.spec import PROBE_KINDS, Probe
from .validate import IPAddress, ValidationError, check_label, check_port_name, parse_ip


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
    readiness_probes: tuple[Probe, ...] = ()  # one per container that has one; ready when all pass
    netns: str = ""  # its network namespace (a path such as /run/netns/web-0): where exec probes run

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
        object.__setattr__(self, "readiness_probes", tuple(self.readiness_probes))
        for i, probe in enumerate(self.readiness_probes):
            if isinstance(probe.port, str) and probe.kind != "grpc" and self.port_named(probe.port, "TCP") is None:
                single = len(self.readiness_probes) == 1 and not probe.container  # as the record spells it
                field = f"readinessProbe.{probe.kind}.port" if single else f"readinessProbes[{i}].{probe.kind}.port"
                raise ValidationError(field, probe.port, f"names no TCP port of pod {self.ref}; its ports: "
                                      f"{', '.join(p.name for p in self.ports if p.name) or 'none named'}")  # fmt: skip
        netns = self.netns
        if not isinstance(netns, str) or (netns and (not netns.startswith("/") or len(netns) > 4096 or any(
                c in netns for c in "\0\n"))):  # fmt: skip
            raise ValidationError("netns", netns, "must be an absolute path to a network namespace, e.g. /run/netns/web-0")

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

    def probe_port(self, probe: Probe) -> int:
        """The port ``probe`` (one of its readiness probes) targets, a name resolved against its ports."""
        port = probe.port
        if isinstance(port, int):
            return port
        named = self.port_named(port, "TCP")
        assert named is not None  # checked on construction
        return named


MAX_REASON = 1024  # characters of a status's reason kept (a probe's output is never stored)


@dataclass(frozen=True, slots=True)
class PodStatus:
    """A probed pod's verdict as its prober last wrote it: every probe passes (``ready``), or why not
    (``reason``: ``connection refused``, ``HTTP 503``; "" before any probe failed). Status, not
    spec: kept apart from the pod's record (:mod:`svcdns.registry`), written only when it changes."""

    ready: bool
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.ready, bool):
            raise ValidationError("ready", self.ready, "must be true or false")
        if not isinstance(self.reason, str):
            raise ValidationError("reason", self.reason, "must be text")
        object.__setattr__(self, "reason", "" if self.ready else self.reason[:MAX_REASON])


NOT_PROBED = "not probed yet"


def readiness(pod: Pod, status: PodStatus | None) -> tuple[bool, str]:
    """Whether ``pod`` is ready, and why not: an unprobed pod as its record says; a probed one when
    its record says ready and its status does (no status yet: not ready, "not probed yet")."""
    if not pod.ready:
        return False, ""
    if not pod.readiness_probes:
        return True, ""
    if status is None:
        return False, NOT_PROBED
    return status.ready, status.reason


__all__ = ["NOT_PROBED", "PROBE_KINDS", "ContainerPort", "Pod", "PodStatus", "Probe", "readiness"]  # Probe: probe.spec's, shared with Services
