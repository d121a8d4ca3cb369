"""Service documents: the one codec between registry data (YAML / JSON text, or its dict) and
:class:`~svcdns.model.Service`.

The same document form, with the field names Kubernetes users know (``clusterIP``, ``targetPort``,
``sessionAffinity`` ...), serves the service files, the etcd values and ``svcdns service get|list
-o json|yaml``. Nothing else turns a dict or bytes into a Service or back.

Whatever the bytes, decoding gives a Service or raises :class:`DocumentError` (a
:class:`~svcdns.model.ValidationError`) naming the source, the field, the value (cut to a sane
length) and what is valid; every parser exception is converted here. Parsing stays within limits:
at most :data:`MAX_DOCUMENT_BYTES`, no YAML aliases (an alias bomb of under 1 kB expands to
gigabytes), libyaml's own nesting limit, JSON nesting within the recursion limit, integers within
Python's int-string limit, ports in ASCII digits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
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
    IPV4,
    IPV6,
    Endpoint,
    Service,
    ServicePort,
    ValidationError,
    check_port_number,
    parse_ip,
)

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
    "endpoints",
)
PORT_FIELDS = ("name", "protocol", "port", "targetPort")
ENDPOINT_FIELDS = ("address", "ready", "serving", "terminating", "hostname", "ports")


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
        raise DocumentError(source, "", None, "is empty; a Service needs at least a name")
    return from_document(doc, source)


def _load_yaml(text: str) -> Any:
    if "*" in text:  # only then can there be an alias; the event scan costs a second parse
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                raise ValueError(f"aliases (*{str(event.anchor)[:40]}) are not allowed in a Service document")
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader


def from_document(doc: Any, source: str = "") -> Service:
    """Validate a parsed document (the dict of the JSON / YAML form) into a Service."""
    try:
        return _service(doc)
    except DocumentError:
        raise
    except ValidationError as err:
        raise DocumentError(source, err.field, err.value, err.reason) from None
    except (TypeError, AttributeError, ValueError, RecursionError) as err:  # a field of the wrong shape deep inside
        raise DocumentError(source, "", None, f"has a field of the wrong type: {_one_line(err)[:MAX_VALUE]}") from None


def _check_keys(data: Mapping[Any, Any], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
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
    return ServicePort(
        port=data["port"],
        protocol=data.get("protocol", "TCP"),
        target_port=check_port_number("targetPort", data["targetPort"]) if "targetPort" in data else 0,
        name=name,
    )


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
    return Endpoint(
        address=parse_ip("address", data["address"]),
        ready=data.get("ready", True),
        serving=data.get("serving"),
        terminating=data.get("terminating", False),
        hostname=data.get("hostname", "") or "",
        ports=tuple(ports.items()),
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
    policy = data.get("ipFamilyPolicy")
    if policy not in (None, "SingleStack", "PreferDualStack", "RequireDualStack"):
        raise ValidationError("ipFamilyPolicy", policy, "must be SingleStack, PreferDualStack or RequireDualStack")
    if policy in ("PreferDualStack", "RequireDualStack") and not families:
        families = [IPV4, IPV6]
    return Service(
        name=data["name"],
        namespace=data.get("namespace") or DEFAULT_NAMESPACE,
        type=kind,
        ports=tuple(ports),
        cluster_ips=tuple(ips),
        ip_families=tuple(families),
        external_name=data.get("externalName", "") or "",
        session_affinity=data.get("sessionAffinity", AFFINITY_NONE) or AFFINITY_NONE,
        affinity_timeout=data.get("sessionAffinityTimeoutSeconds", DEFAULT_AFFINITY_TIMEOUT),
        endpoints=tuple(endpoints),
    )


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
    if svc.type == CLUSTER_IP:
        if svc.cluster_ips and with_vips:
            out["clusterIP"] = str(svc.cluster_ips[0])
            out["clusterIPs"] = [str(ip) for ip in svc.cluster_ips]
        if svc.ip_families:
            out["ipFamilies"] = list(svc.ip_families)
    if svc.type == EXTERNAL_NAME:
        out["externalName"] = svc.external_name
    out["ports"] = [_port_document(p) for p in svc.ports]
    out["sessionAffinity"] = svc.session_affinity
    if svc.session_affinity == AFFINITY_CLIENT_IP:
        out["sessionAffinityTimeoutSeconds"] = svc.affinity_timeout
    out["endpoints"] = [_endpoint_document(e) for e in svc.endpoints]
    return out


def _port_document(port: ServicePort) -> dict[str, Any]:
    out: dict[str, Any] = {"name": port.name} if port.name else {}
    out.update(protocol=port.protocol, port=port.port, targetPort=port.target_port)
    return out


def _endpoint_document(ep: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"address": str(ep.address), "ready": ep.ready, "serving": ep.serving, "terminating": ep.terminating}
    if ep.hostname:
        out["hostname"] = ep.hostname
    if ep.ports:
        out["ports"] = dict(ep.ports)
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


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


__all__ = [
    "MAX_DOCUMENT_BYTES",
    "DocumentError",
    "decode",
    "dump",
    "encode",
    "from_document",
    "to_document",
]
