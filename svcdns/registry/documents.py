"""Service and Pod documents: the one codec between registry data (YAML / JSON text, or its dict)
and :class:`~svcdns.model.Service` / :class:`~svcdns.pod.Pod`.

The same document form, with the field names Kubernetes users know (``clusterIP``, ``targetPort``,
``sessionAffinity``, ``selector``, ``podIPs`` ...), serves the service and pod files, the etcd
values and ``svcdns service|pod get|list -o json|yaml``. Nothing else turns a dict or bytes into a
Service or a Pod, or back. A Service with a ``selector`` takes no ``endpoints`` (they are derived
from its pods); its document is written without them.

Whatever the bytes, decoding gives a Service or raises :class:`DocumentError` (a
:class:`~svcdns.model.ValidationError`) naming the source, the field, the value (cut to a sane
length) and what is valid; every parser exception is converted here. Parsing stays within limits:
at most :data:`MAX_DOCUMENT_BYTES`, no YAML aliases (an alias bomb of under 1 kB expands to
gigabytes), libyaml's own nesting limit, JSON nesting within the recursion limit, integers within
Python's int-string limit, ports in ASCII digits.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import yaml

from ..errors import MAX_VALUE, shorten
from ..model import (
    AFFINITY_CLIENT_IP,
    AFFINITY_NONE,
    CLUSTER_IP,
    DEFAULT_AFFINITY_TIMEOUT,
    DEFAULT_NAMESPACE,
    EXTERNAL_NAME,
    HEADLESS,
    Endpoint,
    Service,
    ServicePort,
    ValidationError,
    check_port_name,
    check_port_number,
    labels_of,
    parse_ip,
)
from ..pod import ContainerPort, Pod
from .probes import probe_document, probe_from, probes_document, probes_from

MAX_DOCUMENT_BYTES = 1 << 20  # 1 MiB: a Service with thousands of endpoints fits; a runaway file does not
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
FORMATS = ("yaml", "json", "json-compact")

SERVICE_FIELDS = (
    "name",
    "namespace",
    "type",
    "clusterIP",
    "clusterIPs",
    "ipFamilies",
    "ipFamilyPolicy",
    "externalName",
    "ports",
    "sessionAffinity",
    "sessionAffinityTimeoutSeconds",
    "selector",
    "publishNotReadyAddresses",
    "endpoints",
    "labels",
    "readinessProbe",  # selector-less Services only: every agent probes the endpoints (svcdns.probe.endpoints)
)
PORT_FIELDS = ("name", "protocol", "port", "targetPort")
ENDPOINT_FIELDS = ("address", "ready", "serving", "terminating", "hostname", "ports", "targetRef")
POD_FIELDS = (
    "kind",
    "name",
    "namespace",
    "labels",
    "podIP",
    "podIPs",
    "hostname",
    "subdomain",
    "nodeName",
    "ports",
    "ready",
    "terminating",
    "deletionTimestamp",
    "readinessProbe",
    "readinessProbes",
    "netns",
    "reason",  # written into records by svcdns before pod statuses: accepted, ignored
)
CONTAINER_PORT_FIELDS = ("containerPort", "name", "protocol")


class DocumentError(ValidationError):
    """A registry document is not a valid Service: ``source`` (a file, an etcd key) says which."""

    def __init__(self, source: str, field: str, value: Any, reason: str) -> None:
        super().__init__(field, value, reason)
        self.source = source
        where = f"{source}: " if source else ""
        what = f"field {shorten(self.field)}: value {shorten(value)}: " if field else (f"{shorten(value)}: " if value is not None else "")
        self.args = (f"{where}{what}{reason}",)


# ---- bytes -> Service ------------------------------------------------------------------------------------


def decode(data: bytes, source: str = "", fmt: str | None = None) -> Service:
    """Parse ``data`` as ``fmt`` ("json" or "yaml"; None: JSON for a ``.json`` source, else YAML)
    and validate it into a Service."""
    return from_document(parse(data, source, fmt, "a Service needs at least a name"), source)


def decode_pod(data: bytes, source: str = "", fmt: str | None = None) -> Pod:
    """As :func:`decode`, for a Pod."""
    return pod_from_document(parse(data, source, fmt, "a Pod needs at least a name"), source)


def parse(data: bytes, source: str, fmt: str | None, empty: str) -> Any:
    """The parsed document in ``data``, within the limits; DocumentError naming ``source``, else."""
    fmt = fmt or ("json" if source.endswith(".json") else "yaml")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(source, "", None, f"is {len(data)} bytes, over the {MAX_DOCUMENT_BYTES}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DocumentError(source, "", None, f"is not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        doc = json.loads(text) if fmt == "json" else _load_yaml(text)
    except (yaml.YAMLError, ValueError, RecursionError, MemoryError) as err:
        message = _one_line(err).replace('"<unicode string>"', repr(source) if source else "the document")
        raise DocumentError(source, "", None, f"does not parse as {fmt.upper()}: {message[:MAX_VALUE]}") from None
    if doc is None:
        raise DocumentError(source, "", None, f"is empty; {empty}")
    return doc


def _load_yaml(text: str) -> Any:
    if "*" in text:  # only then can there be an alias; the event scan costs a second parse
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                raise ValueError(f"aliases (*{str(event.anchor)[:40]}) are not allowed in a registry document")
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader


def from_document(doc: Any, source: str = "") -> Service:
    """Validate a parsed document (the dict of the JSON / YAML form) into a Service."""
    return _validated(_service, doc, source)


def pod_from_document(doc: Any, source: str = "") -> Pod:
    """Validate a parsed document into a Pod."""
    return _validated(_pod, doc, source)


def _validated(build: Callable[[Any], Any], doc: Any, source: str) -> Any:
    try:
        return build(doc)
    except DocumentError:
        raise
    except ValidationError as err:
        raise DocumentError(source, err.field, err.value, err.reason) from None
    except (TypeError, AttributeError, ValueError, RecursionError) as err:  # a field of the wrong shape deep inside
        raise DocumentError(source, "", None, f"has a field of the wrong type: {_one_line(err)[:MAX_VALUE]}") from None


_KNOWN: dict[tuple[str, ...], frozenset[str]] = {}  # each field list as a set, made once


def _check_keys(data: Mapping[Any, Any], allowed: tuple[str, ...]) -> None:
    known = _KNOWN.get(allowed) or _KNOWN.setdefault(allowed, frozenset(allowed))
    for key in data:
        if type(key) is not str or key not in known:
            raise ValidationError(str(key)[:MAX_VALUE], data[key], f"unknown field; known fields: {', '.join(allowed)}")


def _port(data: Any) -> ServicePort:
    if not isinstance(data, Mapping):
        raise ValidationError("", data, "a port must be a mapping with port, protocol, targetPort and name")
    _check_keys(data, PORT_FIELDS)
    if "port" not in data:
        raise ValidationError("port", None, "is required")
    name = data.get("name", "") or ""
    if not isinstance(name, str):
        raise ValidationError("name", name, "must be a string")
    target = data.get("targetPort")
    named = isinstance(target, str) and not (target.isascii() and target.isdigit())
    if named:
        try:
            check_port_name("targetPort", target)
        except ValidationError:
            raise ValidationError(
                "targetPort", target, "must be a port number from 1 to 65535 or a port name of the pods (e.g. http)"
            ) from None
    return ServicePort(
        port=data["port"],
        protocol=data.get("protocol", "TCP"),
        target_port=check_port_number("targetPort", target) if target is not None and not named else 0,
        name=_shared(name),
        target_port_name=str(target) if named else "",
    )


def _shared(text: Any) -> Any:
    """One string for the values many Services repeat (a namespace, a port name): each parsed
    document holds a copy of its own, 50 bytes each, 10 MiB at 100k Services."""
    return sys.intern(text) if type(text) is str else text


def _endpoint(data: Any) -> Endpoint:
    if isinstance(data, str):
        return Endpoint(address=parse_ip("address", data))
    if not isinstance(data, Mapping):
        raise ValidationError("", data, "an endpoint must be an address or a mapping with address, ready, ...")
    _check_keys(data, ENDPOINT_FIELDS)
    if "address" not in data:
        raise ValidationError("address", None, "is required")
    ports = data.get("ports", {}) or {}
    if not isinstance(ports, Mapping):
        raise ValidationError("ports", ports, "must be a mapping of Service port name to target port")
    ref = data.get("targetRef") or {}
    if not isinstance(ref, Mapping) or ref.get("kind", "Pod") != "Pod":
        raise ValidationError("targetRef", ref, "must be {kind: Pod, name: NAME}")
    return Endpoint(
        address=parse_ip("address", data["address"]),
        ready=data.get("ready", True),
        serving=data.get("serving"),
        terminating=data.get("terminating", False),
        hostname=data.get("hostname", "") or "",
        ports=tuple(ports.items()),
        pod=ref.get("name", "") or "",
    )


def _service(data: Any) -> Service:
    if not isinstance(data, Mapping):
        raise ValidationError("", type(data).__name__, "a Service document must be a mapping of fields")
    _check_keys(data, SERVICE_FIELDS)
    if "name" not in data:
        raise ValidationError("name", None, "is required")
    ports = [_within(f"ports[{i}]", _port, p) for i, p in enumerate(_list(data, "ports", "must be a list"))]
    endpoints = [_within(f"endpoints[{i}]", _endpoint, e) for i, e in enumerate(_list(data, "endpoints", "must be a list"))]
    ips: list[Any] = []
    if data.get("clusterIPs"):
        ips = _list(data, "clusterIPs", "must be a list of addresses")
        if data.get("clusterIP") not in (None, "", ips[0]):
            raise ValidationError("clusterIP", data["clusterIP"], f"must equal clusterIPs[0] ({shorten(ips[0])})")
    elif data.get("clusterIP") not in (None, ""):
        ips = [data["clusterIP"]]
    kind = data.get("type", CLUSTER_IP)
    if kind == CLUSTER_IP and ips == ["None"]:  # Kubernetes spelling of headless
        kind, ips = HEADLESS, []
    families = _list(data, "ipFamilies", "must be a list of IPv4 / IPv6")
    # kept as given: the registry resolves the families against its service CIDRs (ipam.service_families)
    policy = data.get("ipFamilyPolicy") or ""
    selector = data.get("selector") or {}
    if not isinstance(selector, Mapping):
        raise ValidationError("selector", selector, "must be a mapping of label to value, e.g. {app: web}")
    if selector and endpoints:
        raise ValidationError(
            "endpoints",
            f"{len(endpoints)} endpoints",
            "a Service with a selector gets its endpoints from the pods it selects; remove the endpoints or the selector",
        )
    return Service(
        name=data["name"],
        namespace=_shared(data.get("namespace") or DEFAULT_NAMESPACE),
        type=kind,
        ports=tuple(ports),
        cluster_ips=tuple(ips),
        ip_families=tuple(families),
        ip_family_policy=policy,
        external_name=data.get("externalName", "") or "",
        session_affinity=data.get("sessionAffinity", AFFINITY_NONE) or AFFINITY_NONE,
        affinity_timeout=data.get("sessionAffinityTimeoutSeconds", DEFAULT_AFFINITY_TIMEOUT),
        endpoints=tuple(endpoints),
        selector=labels_of(selector, "selector"),
        publish_not_ready_addresses=data.get("publishNotReadyAddresses", False),
        labels=labels_of(_labels(data), "labels"),
        readiness_probe=probe_from(data["readinessProbe"]) if data.get("readinessProbe") is not None else None,
    )


def _labels(data: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = data.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ValidationError("labels", labels, "must be a mapping of label to value, e.g. {app: web}")
    return labels


def _container_port(data: Any) -> ContainerPort:
    if not isinstance(data, Mapping):
        raise ValidationError("", data, "a port must be a mapping with containerPort, name and protocol")
    _check_keys(data, CONTAINER_PORT_FIELDS)
    if "containerPort" not in data:
        raise ValidationError("containerPort", None, "is required")
    return ContainerPort(
        container_port=check_port_number("containerPort", data["containerPort"]),
        name=data.get("name", "") or "",
        protocol=data.get("protocol", "TCP"),
    )


def _pod(data: Any) -> Pod:
    if not isinstance(data, Mapping):
        raise ValidationError("", type(data).__name__, "a Pod document must be a mapping of fields")
    _check_keys(data, POD_FIELDS)
    if data.get("kind", "Pod") != "Pod":
        raise ValidationError("kind", data["kind"], "must be Pod (or left out)")
    if "name" not in data:
        raise ValidationError("name", None, "is required")
    labels = data.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ValidationError("labels", labels, "must be a mapping of label to value, e.g. {app: web}")
    # podIPs as Kubernetes' status writes them ({ip: ...}) or as plain addresses
    ips = [ip.get("ip") if isinstance(ip, Mapping) else ip for ip in _list(data, "podIPs", "must be a list of addresses")]
    if data.get("podIP") not in (None, ""):
        if ips and ips[0] != data["podIP"]:
            raise ValidationError("podIP", data["podIP"], f"must equal podIPs[0] ({shorten(ips[0])})")
        ips = ips or [data["podIP"]]
    ports = [_within(f"ports[{i}]", _container_port, p) for i, p in enumerate(_list(data, "ports", "must be a list"))]
    probes = probes_from(data)
    return Pod(
        name=data["name"],
        namespace=data.get("namespace") or DEFAULT_NAMESPACE,
        labels=labels_of(labels),
        ips=tuple(parse_ip(f"podIPs[{i}]", ip) for i, ip in enumerate(ips)),
        hostname=data.get("hostname", "") or "",
        subdomain=data.get("subdomain", "") or "",
        node_name=data.get("nodeName", "") or "",
        ports=tuple(ports),
        ready=data.get("ready", True),  # a probed pod is also not ready until its status says so
        terminating=data.get("terminating", False),
        deletion_deadline=_timestamp("deletionTimestamp", data.get("deletionTimestamp")),
        readiness_probes=probes,
        netns=data.get("netns", "") or "",
    )


def _timestamp(field: str, value: Any) -> float:
    """RFC 3339 (``2024-05-01T12:00:00Z``, as Kubernetes writes it) or Unix seconds; 0 for none."""
    if value in (None, ""):
        return 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as one
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, str):
        try:
            return _timestamp(field, datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            pass
    raise ValidationError(field, value, "must be an RFC 3339 time, e.g. 2024-05-01T12:00:00Z")


def _list(data: Mapping[str, Any], field: str, reason: str) -> list[Any]:
    value = data.get(field) or []
    if not isinstance(value, list):
        raise ValidationError(field, value, reason)
    return value


def _within(prefix: str, build: Any, data: Any) -> Any:
    try:
        return build(data)
    except ValidationError as err:
        raise err.within(prefix) from None


# ---- Service -> dict -> text --------------------------------------------------------------------------------


def to_document(svc: Service, *, with_vips: bool = True) -> dict[str, Any]:
    """The document form of ``svc``; ``with_vips`` False leaves out its VIPs (a service file records
    only requested VIPs; allocated ones live in the allocation store)."""
    out: dict[str, Any] = {"name": svc.name, "namespace": svc.namespace, "type": svc.type}
    if svc.labels:
        out["labels"] = dict(svc.labels)
    if svc.type == CLUSTER_IP:
        if svc.cluster_ips and with_vips:
            out["clusterIP"] = str(svc.cluster_ips[0])
            out["clusterIPs"] = [str(ip) for ip in svc.cluster_ips]
    if svc.type != EXTERNAL_NAME:
        if svc.ip_families:
            out["ipFamilies"] = list(svc.ip_families)
        if svc.ip_family_policy:
            out["ipFamilyPolicy"] = svc.ip_family_policy
    if svc.type == EXTERNAL_NAME:
        out["externalName"] = svc.external_name
    out["ports"] = [_port_document(p) for p in svc.ports]
    out["sessionAffinity"] = svc.session_affinity
    if svc.session_affinity == AFFINITY_CLIENT_IP:
        out["sessionAffinityTimeoutSeconds"] = svc.affinity_timeout
    if svc.selector:
        out["selector"] = dict(svc.selector)
        if svc.publish_not_ready_addresses:
            out["publishNotReadyAddresses"] = True
    else:
        out["endpoints"] = [endpoint_document(e) for e in svc.endpoints]
        if svc.readiness_probe is not None:
            out["readinessProbe"] = probe_document(svc.readiness_probe)
    return out


def _port_document(port: ServicePort) -> dict[str, Any]:
    out: dict[str, Any] = {"name": port.name} if port.name else {}
    out.update(protocol=port.protocol, port=port.port, targetPort=port.target_port_name or port.target_port)
    return out


def pod_document(pod: Pod) -> dict[str, Any]:
    """The document form of ``pod``."""
    out: dict[str, Any] = {"name": pod.name, "namespace": pod.namespace}
    if pod.labels:
        out["labels"] = dict(pod.labels)
    out["podIPs"] = [str(ip) for ip in pod.ips]
    for key, value in (("hostname", pod.hostname), ("subdomain", pod.subdomain), ("nodeName", pod.node_name)):
        if value:
            out[key] = value
    if pod.ports:
        out["ports"] = [
            {"containerPort": p.container_port, **({"name": p.name} if p.name else {}), "protocol": p.protocol}
            for p in pod.ports
        ]
    out["ready"] = pod.ready
    out["terminating"] = pod.terminating
    if pod.deletion_deadline:
        when = datetime.fromtimestamp(pod.deletion_deadline, UTC)
        out["deletionTimestamp"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out.update(probes_document(pod.readiness_probes))
    if pod.netns:
        out["netns"] = pod.netns
    return out


def endpoint_document(ep: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"address": str(ep.address), "ready": ep.ready, "serving": ep.serving, "terminating": ep.terminating}
    if ep.hostname:
        out["hostname"] = ep.hostname
    if ep.ports:
        out["ports"] = dict(ep.ports)
    if ep.pod:
        out["targetRef"] = {"kind": "Pod", "name": ep.pod}
    return out


def dump(doc: Any, fmt: str = "yaml") -> str:
    """Documents (a Service's, or a list of them) as text: ``yaml``, ``json`` (indented, for people)
    or ``json-compact`` (for etcd values)."""
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "json-compact":
        return json.dumps(doc, separators=(",", ":"))
    if fmt != "yaml":
        raise ValueError(f"document format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def encode(svc: Service, fmt: str = "yaml", *, with_vips: bool = True) -> str:
    return dump(to_document(svc, with_vips=with_vips), fmt)


def encode_pod(pod: Pod, fmt: str = "yaml") -> str:
    return dump(pod_document(pod), fmt)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


__all__ = [
    "MAX_DOCUMENT_BYTES",
    "DocumentError",
    "decode",
    "decode_pod",
    "dump",
    "encode",
    "encode_pod",
    "endpoint_document",
    "from_document",
    "pod_document",
    "pod_from_document",
    "to_document",
]
