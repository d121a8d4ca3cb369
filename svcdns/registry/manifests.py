"""Kubernetes manifests -> svcdns Services, Pods and explicit endpoints (pure: bytes in, objects out).

``svcdns apply -f`` takes the manifests users already have: multi-document YAML or JSON, ``kind:
List``, ``v1 Service``, ``v1 Pod``, ``discovery.k8s.io/v1 EndpointSlice`` and ``v1 Endpoints`` (the
endpoints of a Service without a selector). Fields svcdns does not use (images, resources, liveness
and startup probes, most of status) are ignored; other kinds are skipped (errors with ``strict``). A Service of type
NodePort or LoadBalancer is served as ClusterIP with a warning (in Kubernetes it is a ClusterIP
Service too; svcdns opens no node port and no load balancer); ``strict`` refuses it.

A pod manifest has no address before it runs: its addresses are the annotation
``svcdns.io/pod-ips: "10.244.1.5,fd00::5"`` or, in a manifest taken from a running cluster,
``status.podIPs`` / ``status.podIP``. ``status.conditions`` Ready=False makes a pod without probes
not ready. Each container's ``readinessProbe`` is kept (the pod is ready when every one passes, as in
Kubernetes: its readiness is then its prober's status, and a manifest's Ready condition is ignored);
the annotation ``svcdns.io/netns: /run/netns/web-0`` names the pod's network namespace, where its
exec probes run.

A file is checked whole: every error of every document is collected (:class:`ManifestInvalid`),
each naming the file, the document number (1-based, as ``---`` separates them), kind/name, the field
path (``spec.ports[1].targetPort``) and the value, so the caller applies all of a file or none of it.
The Service and Pod rules themselves are the codec's (:mod:`.documents`): this module only maps
Kubernetes' shape onto the registry document form and the codec's field names back onto the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import yaml

from ..errors import UsageError, shorten
from ..model import Endpoint, Service, ValidationError
from ..pod import Pod
from .documents import DocumentError, from_document, pod_from_document

MAX_MANIFEST_BYTES = 16 << 20  # a bundle of many objects; each object still meets the codec's limits
POD_IPS_ANNOTATION = "svcdns.io/pod-ips"
NETNS_ANNOTATION = "svcdns.io/netns"
_PROBE_KEPT = ("tcpSocket", "httpGet", "grpc", "exec", "initialDelaySeconds", "periodSeconds", "timeoutSeconds",
               "successThreshold", "failureThreshold")  # fmt: skip
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # an EndpointSlice's Service
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SERVICE, POD, ENDPOINT_SLICE, ENDPOINTS = "service", "pod", "endpointslice.discovery.k8s.io", "endpoints"
# (apiVersion, kind) -> the resource name kubectl prints
_KINDS = {
    ("v1", "Service"): SERVICE,
    ("v1", "Pod"): POD,
    ("discovery.k8s.io/v1", "EndpointSlice"): ENDPOINT_SLICE,
    ("v1", "Endpoints"): ENDPOINTS,
}
_SERVED_AS_CLUSTER_IP = ("NodePort", "LoadBalancer")
# the codec's Service fields whose manifest path is not spec.<field>
_SERVICE_PATHS = {
    "name": "metadata.name",
    "namespace": "metadata.namespace",
    "sessionAffinityTimeoutSeconds": "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an object came from: file, document number, the path inside it (``items[2]`` in a List)."""

    source: str
    document: int
    path: str = ""
    kind: str = ""
    name: str = ""

    def field(self, sub: str) -> str:
        return ".".join(p for p in (self.path, sub) if p)

    def __str__(self) -> str:
        what = f" ({self.kind or '?'}/{self.name or '?'})" if self.kind or self.name else ""
        return f"{self.source or '<stdin>'}: document {self.document}{what}"


class ManifestError(UsageError):
    """One document is not valid: where (:class:`Origin`), the field path, the value, what is valid."""

    def __init__(self, origin: Origin, path: str, value: Any, reason: str) -> None:
        where = origin.field(path)
        text = f"{origin}: {where}: {shorten(value)}: {reason}" if where else f"{origin}: {reason}"
        super().__init__(text, field=where, value=value, expected=reason)
        self.origin = origin


class ManifestInvalid(UsageError):
    """A file with at least one invalid document: ``errors`` holds each (nothing of the file applies)."""

    def __init__(self, source: str, errors: list[ManifestError]) -> None:
        lines = [str(e) for e in errors]
        super().__init__("\n".join(lines + [f"{source or '<stdin>'}: {len(errors)} error(s); nothing of it was applied"]))
        self.source, self.errors = source, tuple(errors)


@dataclass(frozen=True, slots=True)
class ServiceObject:
    origin: Origin
    service: Service
    # the file gives this Service's endpoints (EndpointSlices / Endpoints beside it): apply sets them;
    # otherwise a Service without a selector keeps the endpoints it has in the registry
    with_endpoints: bool = False
    resource: str = SERVICE

    @property
    def key(self) -> tuple[str, str]:
        return self.service.key


@dataclass(frozen=True, slots=True)
class PodObject:
    origin: Origin
    pod: Pod
    resource: str = POD

    @property
    def key(self) -> tuple[str, str]:
        return self.pod.key


@dataclass(frozen=True, slots=True)
class EndpointsObject:
    """An EndpointSlice or Endpoints: the explicit endpoints of the Service ``service``. When that
    Service is in the same file they are already in its ServiceObject (``merged``)."""

    origin: Origin
    resource: str
    namespace: str
    name: str
    service: str
    endpoints: tuple[Endpoint, ...]
    merged: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


Object = ServiceObject | PodObject | EndpointsObject


@dataclass(frozen=True, slots=True)
class Skipped:
    origin: Origin
    resource: str  # kubectl's name: deployment.apps, configmap, ingress.networking.k8s.io

    def __str__(self) -> str:
        where = f"{self.origin.source or '<stdin>'}: document {self.origin.document}"
        return f"{self.resource}/{self.origin.name or '?'} skipped ({where}): svcdns does not take {self.origin.kind or 'it'}"


@dataclass(frozen=True)
class Manifest:
    source: str
    objects: tuple[Object, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reference:
    """What ``delete -f`` needs of a document: which object it names."""

    origin: Origin
    resource: str
    namespace: str
    name: str
    service: str = ""  # for an EndpointSlice / Endpoints: its Service


# ---- bytes -> documents ------------------------------------------------------------------------------------


def load_documents(data: bytes, source: str) -> list[tuple[Origin, Any]]:
    """The documents of a file, each with its Origin; a ``kind: List`` gives its items. Empty
    documents are counted (the numbers match the ``---`` sections) but not returned."""
    blank = Origin(source, 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestInvalid(source, [ManifestError(blank, "", None, f"is {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestInvalid(source, [ManifestError(blank, "", None, f"is not UTF-8 text ({err.reason} at byte {err.start})")]) from None
    try:
        if source.endswith(".json") or text.lstrip().startswith(("{", "[")):
            docs = [json.loads(text)]
        else:
            docs = list(_load_yaml(text))
    except (yaml.YAMLError, ValueError, RecursionError, MemoryError) as err:
        message = " ".join(str(err).split()).replace('"<unicode string>"', source or "<stdin>")
        raise ManifestInvalid(source, [ManifestError(blank, "", None, f"does not parse: {message[:300]}")]) from None
    out: list[tuple[Origin, Any]] = []
    for number, doc in enumerate(docs, 1):
        if doc is None:
            continue
        origin = Origin(source, number)
        if isinstance(doc, list):  # a JSON array of objects
            out += [(replace(origin, path=f"[{i}]"), item) for i, item in enumerate(doc)]
        elif isinstance(doc, Mapping) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
            items = doc.get("items") or []
            if not isinstance(items, list):
                out.append((origin, {"kind": "List", "items": items}))  # refused as a bad document below
                continue
            out += [(replace(origin, path=f"items[{i}]"), item) for i, item in enumerate(items)]
        else:
            out.append((origin, doc))
    return out


def _load_yaml(text: str) -> Iterator[Any]:
    if "*" in text:  # an alias bomb of under 1 kB expands to gigabytes: refuse aliases, as the codec does
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                raise ValueError(f"aliases (*{str(event.anchor)[:40]}) are not allowed")
    return yaml.load_all(text, Loader=_Loader)  # noqa: S506 - a safe loader


# ---- documents -> objects ----------------------------------------------------------------------------------


def parse_manifest(data: bytes, source: str = "", namespace: str = "default", *, strict: bool = False) -> Manifest:
    """Every object of a manifest file, validated; :class:`ManifestInvalid` with every error if any
    document is not valid. ``namespace`` is for objects whose metadata names none."""
    errors: list[ManifestError] = []
    objects: list[Object] = []
    skipped: list[Skipped] = []
    warnings: list[str] = []
    for origin, doc in load_documents(data, source):
        try:
            head = _head(origin, doc, namespace)
            if head.resource is None:
                if strict:
                    raise ManifestError(head.origin, "kind", head.origin.kind, "svcdns takes Service, Pod, EndpointSlice and Endpoints (--strict)")
                skipped.append(Skipped(head.origin, _resource_name(doc)))
                continue
            if head.resource == SERVICE:
                svc, warning = _service(head, doc, strict)
                objects.append(ServiceObject(head.origin, svc))
                warnings += [warning] if warning else []
            elif head.resource == POD:
                pod = _pod(head, doc)
                objects.append(PodObject(head.origin, pod))
                if not pod.ips:
                    warnings.append(f"pod/{pod.name} ({head.origin}) has no address (annotation {POD_IPS_ANNOTATION} "
                                    "or status.podIPs): no Service selects it until it has one")  # fmt: skip
            else:
                objects.append(_endpoints(head, doc))
        except ManifestError as err:
            errors.append(err)
    objects = _merge_endpoints(objects, errors)
    _check_unique(objects, errors)
    if errors:
        raise ManifestInvalid(source, errors)
    return Manifest(source, tuple(objects), tuple(skipped), tuple(warnings))


def references(data: bytes, source: str = "", namespace: str = "default") -> tuple[list[Reference], list[Skipped]]:
    """What a file names, for ``delete -f``: kind, namespace and name only (the rest may be anything)."""
    refs: list[Reference] = []
    skipped: list[Skipped] = []
    errors: list[ManifestError] = []
    for origin, doc in load_documents(data, source):
        try:
            head = _head(origin, doc, namespace)
        except ManifestError as err:
            errors.append(err)
            continue
        if head.resource is None:
            skipped.append(Skipped(head.origin, _resource_name(doc)))
            continue
        service = _service_of_endpoints(head, doc) if head.resource in (ENDPOINT_SLICE, ENDPOINTS) else ""
        refs.append(Reference(head.origin, head.resource, head.namespace, head.name, service))
    if errors:
        raise ManifestInvalid(source, errors)
    return refs, skipped


@dataclass(frozen=True, slots=True)
class _Head:
    origin: Origin  # with kind and name
    resource: str | None  # None: a kind svcdns does not take
    namespace: str
    name: str


def _head(origin: Origin, doc: Any, namespace: str) -> _Head:
    if not isinstance(doc, Mapping):
        raise ManifestError(origin, "", type(doc).__name__, "a document must be a mapping with apiVersion, kind and metadata")
    kind, api = doc.get("kind"), doc.get("apiVersion")
    meta = doc.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    origin = replace(origin, kind=str(kind or ""), name=str(name or "") if not isinstance(name, (Mapping, list)) else "")
    if not isinstance(kind, str) or not kind:
        raise ManifestError(origin, "kind", kind, "is required (Service, Pod, EndpointSlice, Endpoints ...)")
    if not isinstance(api, str) or not api:
        raise ManifestError(origin, "apiVersion", api, "is required (v1 for a Service or Pod)")
    resource = _KINDS.get((api, kind))
    if resource is None and any(k == kind for _, k in _KINDS):
        valid = next(a for a, k in _KINDS if k == kind)
        raise ManifestError(origin, "apiVersion", api, f"svcdns takes {kind} as {valid}")
    if resource is None:
        return _Head(origin, None, "", origin.name)
    if not isinstance(meta, Mapping):
        raise ManifestError(origin, "metadata", meta, "must be a mapping with name and namespace")
    if not isinstance(name, str) or not name:
        raise ManifestError(origin, "metadata.name", name, "is required")
    ns = meta.get("namespace") or namespace
    if not isinstance(ns, str):
        raise ManifestError(origin, "metadata.namespace", ns, "must be a string")
    return _Head(origin, resource, ns, name)


def _resource_name(doc: Mapping[str, Any]) -> str:
    """kubectl's name of a kind: ``deployment.apps`` for apps/v1 Deployment, ``configmap`` for v1."""
    group = str(doc.get("apiVersion", "")).rpartition("/")[0]
    kind = str(doc.get("kind", "")).lower()
    return f"{kind}.{group}" if group else kind


def _mapping(origin: Origin, doc: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            return {}
    if not isinstance(value, Mapping):
        raise ManifestError(origin, path, value, "must be a mapping")
    return value


def _list_of(origin: Origin, data: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise ManifestError(origin, path, value, "must be a list")
    return value


def _codec_error(origin: Origin, err: ValidationError, path_of: Any) -> ManifestError:
    return ManifestError(origin, path_of(err.field) if err.field else "", err.value, err.reason)


def _service(head: _Head, doc: Mapping[str, Any], strict: bool) -> tuple[Service, str]:
    origin = head.origin
    spec = _mapping(origin, doc, "spec")
    kind = spec.get("type") or "ClusterIP"
    warning = ""
    if kind in _SERVED_AS_CLUSTER_IP:
        if strict:
            raise ManifestError(origin, "spec.type", kind, "svcdns serves ClusterIP, headless and ExternalName Services (--strict)")
        warning = (f"service/{head.name} ({origin}): type {kind} served as ClusterIP: "
                   "its VIP and name work, no node port or load balancer is opened")  # fmt: skip
        kind = "ClusterIP"
        if spec.get("clusterIP") == "None":
            raise ManifestError(origin, "spec.clusterIP", "None", f"a {spec['type']} Service cannot be headless")
    affinity = _mapping(origin, spec, "sessionAffinityConfig.clientIP")
    ports = [
        {k: p[k] for k in ("name", "protocol", "port", "targetPort") if k in p} if isinstance(p, Mapping) else p
        for p in _list_of(origin, spec, "ports", "spec.ports")
    ]
    document: dict[str, Any] = {
        "name": head.name,
        "namespace": head.namespace,
        "type": kind,
        "ports": ports,
        "selector": spec.get("selector") or {},
        "labels": _mapping(origin, doc, "metadata").get("labels") or {},
    }
    for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "externalName", "sessionAffinity",
                "publishNotReadyAddresses"):  # fmt: skip
        if spec.get(key) is not None:
            document[key] = spec[key]
    if "timeoutSeconds" in affinity:
        document["sessionAffinityTimeoutSeconds"] = affinity["timeoutSeconds"]
    try:
        return from_document(document), warning
    except DocumentError as err:
        raise _codec_error(origin, err, _service_path) from None


def _service_path(field: str) -> str:
    return f"metadata.{field}" if field.startswith("labels") else _SERVICE_PATHS.get(field) or f"spec.{field}"


def _pod(head: _Head, doc: Mapping[str, Any]) -> Pod:
    origin = head.origin
    meta = _mapping(origin, doc, "metadata")
    spec = _mapping(origin, doc, "spec")
    status = _mapping(origin, doc, "status")
    ports: list[Any] = []
    port_paths: list[str] = []  # the codec's ports[k] -> spec.containers[c].ports[j]
    probes: list[Any] = []
    probe_paths: list[str] = []  # the codec's readinessProbes[k] -> spec.containers[c].readinessProbe
    for c, container in enumerate(_list_of(origin, spec, "containers", "spec.containers")):
        if not isinstance(container, Mapping):
            raise ManifestError(origin, f"spec.containers[{c}]", container, "must be a mapping")
        if container.get("readinessProbe") is not None:
            probe = container["readinessProbe"]
            if isinstance(probe, Mapping):
                # terminationGracePeriodSeconds and the like are the kubelet's business, not the verdict's
                probe = {k: probe[k] for k in _PROBE_KEPT if k in probe}
                if isinstance(container.get("name"), str):
                    probe["container"] = container["name"]
            probes.append(probe)
            probe_paths.append(f"spec.containers[{c}].readinessProbe")
        for j, port in enumerate(_list_of(origin, container, "ports", f"spec.containers[{c}].ports")):
            keep = ("containerPort", "name", "protocol")
            ports.append({k: port[k] for k in keep if k in port} if isinstance(port, Mapping) else port)
            port_paths.append(f"spec.containers[{c}].ports[{j}]")
    annotation = (meta.get("annotations") or {}).get(POD_IPS_ANNOTATION) if isinstance(meta.get("annotations"), Mapping) else None
    ips_path = "status.podIPs"
    if annotation is not None:
        if not isinstance(annotation, str):
            raise ManifestError(origin, f"metadata.annotations.{POD_IPS_ANNOTATION}", annotation, "must be a string")
        ips: list[Any] = [ip.strip() for ip in annotation.split(",") if ip.strip()]
        ips_path = f"metadata.annotations.{POD_IPS_ANNOTATION}"
    else:
        ips = [ip.get("ip") if isinstance(ip, Mapping) else ip for ip in _list_of(origin, status, "podIPs", "status.podIPs")]
        if not ips and status.get("podIP"):
            ips, ips_path = [status["podIP"]], "status.podIP"
    netns = (meta.get("annotations") or {}).get(NETNS_ANNOTATION) if isinstance(meta.get("annotations"), Mapping) else None
    ready = True
    for cond in _list_of(origin, status, "conditions", "status.conditions"):
        # a probed pod's Ready condition is its prober's status (a dumped pod's is stale): not spec
        if isinstance(cond, Mapping) and cond.get("type") == "Ready" and not probes:
            ready = cond.get("status") in ("True", True)
    document = {
        "name": head.name,
        "namespace": head.namespace,
        "labels": meta.get("labels") or {},
        "podIPs": ips,
        "ports": ports,
        "ready": ready,
        **{k: spec[k] for k in ("hostname", "subdomain", "nodeName") if spec.get(k) is not None},
        **({"readinessProbes": probes} if probes else {}),
        **({"netns": netns} if netns is not None else {}),
    }

    def path_of(f: str) -> str:
        if f.startswith("ports["):
            index, _, rest = f[len("ports[") :].partition("]")
            return port_paths[int(index)] + rest
        if f.startswith("podIPs"):
            return ips_path + (f[len("podIPs") :] if ips_path == "status.podIPs" else "")
        if f.startswith("labels"):
            return f"metadata.{f}"
        if f.startswith("readinessProbes["):
            index, _, rest = f[len("readinessProbes[") :].partition("]")
            path = probe_paths[int(index)]
            return path.removesuffix(".readinessProbe") + ".name" if rest == ".container" else path + rest
        if f == "readinessProbes":
            return "spec.containers[].name"
        if f == "netns":
            return f"metadata.annotations.{NETNS_ANNOTATION}"
        return _SERVICE_PATHS.get(f) or f"spec.{f}"

    try:
        return pod_from_document(document)
    except DocumentError as err:
        raise _codec_error(origin, err, path_of) from None


def _service_of_endpoints(head: _Head, doc: Mapping[str, Any]) -> str:
    if head.resource == ENDPOINTS:
        return head.name  # v1 Endpoints are named as their Service
    labels = _mapping(head.origin, doc, "metadata.labels")
    service = labels.get(SERVICE_NAME_LABEL)
    if not isinstance(service, str) or not service:
        raise ManifestError(head.origin, f"metadata.labels.{SERVICE_NAME_LABEL}", service, "names the EndpointSlice's Service; it is required")
    return service


def _endpoints(head: _Head, doc: Mapping[str, Any]) -> EndpointsObject:
    """An EndpointSlice's or an Endpoints' endpoints; each port's number is the target port of the
    Service port of the same name."""
    origin = head.origin
    service = _service_of_endpoints(head, doc)
    found: list[tuple[str, dict[str, Any]]] = []  # (path, the codec's endpoint document)
    if head.resource == ENDPOINT_SLICE:
        ports = _ports(origin, doc, "ports")
        for i, ep in enumerate(_list_of(origin, doc, "endpoints", "endpoints")):
            path = f"endpoints[{i}]"
            if not isinstance(ep, Mapping):
                raise ManifestError(origin, path, ep, "must be a mapping with addresses and conditions")
            addresses = _list_of(origin, ep, "addresses", f"{path}.addresses")
            if not addresses:
                raise ManifestError(origin, f"{path}.addresses", addresses, "needs one address")
            cond = _mapping(origin, ep, "conditions")
            ready = cond.get("ready", True) is not False  # as Kubernetes: unknown (absent) is ready
            entry: dict[str, Any] = {"address": addresses[0], "ready": ready,
                                     "serving": cond.get("serving", ready), "terminating": cond.get("terminating", False)}  # fmt: skip
            found.append((path, _with_ref(entry, ep, ports)))
    else:
        for s, subset in enumerate(_list_of(origin, doc, "subsets", "subsets")):
            if not isinstance(subset, Mapping):
                raise ManifestError(origin, f"subsets[{s}]", subset, "must be a mapping with addresses and ports")
            ports = _ports(origin, subset, f"subsets[{s}].ports", "ports")
            for key, ready in (("addresses", True), ("notReadyAddresses", False)):
                for i, addr in enumerate(_list_of(origin, subset, key, f"subsets[{s}].{key}")):
                    path = f"subsets[{s}].{key}[{i}]"
                    if not isinstance(addr, Mapping):
                        raise ManifestError(origin, path, addr, "must be a mapping with ip")
                    found.append((path, _with_ref({"address": addr.get("ip"), "ready": ready}, addr, ports)))
    endpoints: list[Endpoint] = []
    for path, entry in found:
        try:
            # the codec checks an endpoint inside a Service: one with the ports the endpoint names
            names = entry.get("ports") or {}
            stand_in = [{"name": n, "port": i + 1} for i, n in enumerate(names)]
            document = from_document({"name": "x", "type": "Headless", "ports": stand_in, "endpoints": [entry]})
        except DocumentError as err:
            field_name = err.field.removeprefix("endpoints[0]").lstrip(".")
            field_name = {"address": "addresses[0]" if head.resource == ENDPOINT_SLICE else "ip"}.get(field_name, field_name)
            raise ManifestError(origin, f"{path}.{field_name}" if field_name else path, err.value, err.reason) from None
        endpoints.append(document.endpoints[0])
    return EndpointsObject(origin, head.resource or "", head.namespace, head.name, service, tuple(endpoints))


def _ports(origin: Origin, data: Mapping[str, Any], path: str, key: str = "ports") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, port in enumerate(_list_of(origin, data, key, path)):
        if not isinstance(port, Mapping) or "port" not in port:
            raise ManifestError(origin, f"{path}[{i}]", port, "must be a mapping with port, name and protocol")
        out[str(port.get("name") or "")] = port["port"]
    return out


def _with_ref(entry: dict[str, Any], ep: Mapping[str, Any], ports: dict[str, Any]) -> dict[str, Any]:
    if ep.get("hostname"):
        entry["hostname"] = ep["hostname"]
    ref = ep.get("targetRef")
    if isinstance(ref, Mapping) and ref.get("kind") == "Pod" and ref.get("name"):
        entry["targetRef"] = {"kind": "Pod", "name": ref["name"]}
    if ports:
        entry["ports"] = ports
    return entry


def _merge_endpoints(objects: list[Object], errors: list[ManifestError]) -> list[Object]:
    """Give each Service of the file the endpoints of the EndpointSlices / Endpoints naming it."""
    services = {o.key: o for o in objects if isinstance(o, ServiceObject)}
    gathered: dict[tuple[str, str], list[EndpointsObject]] = {}
    for o in objects:
        if isinstance(o, EndpointsObject):
            gathered.setdefault((o.namespace, o.service), []).append(o)
    out: list[Object] = []
    for o in objects:
        if isinstance(o, ServiceObject) and o.key in gathered:
            try:
                out.append(_with_endpoints(o, gathered[o.key]))
            except ManifestError as err:
                errors.append(err)
        elif isinstance(o, EndpointsObject) and (o.namespace, o.service) in services:
            out.append(replace(o, merged=True))
        else:
            out.append(o)
    return out


def _with_endpoints(obj: ServiceObject, sources: list[EndpointsObject]) -> ServiceObject:
    svc = obj.service
    first = sources[0]
    if svc.selector:
        raise ManifestError(first.origin, "", first.service, f"Service {svc.name} has a selector: its endpoints come from "
                            "its pods; remove this document or the selector")  # fmt: skip
    names = {p.name for p in svc.ports}
    endpoints: list[Endpoint] = []
    for src in sources:
        for i, ep in enumerate(src.endpoints):
            for name, _ in ep.ports:
                if name not in names:
                    raise ManifestError(src.origin, "ports", name or '""', f"names no port of Service {svc.name} "
                                        f"(its ports: {', '.join(sorted(names)) or 'none'})")  # fmt: skip
            if any(e.address == ep.address for e in endpoints):
                raise ManifestError(src.origin, f"endpoints[{i}]", str(ep.address), f"is an endpoint of Service {svc.name} twice")
            endpoints.append(ep)
    try:
        return replace(obj, service=svc.with_endpoints(endpoints), with_endpoints=True)
    except ValidationError as err:
        raise ManifestError(first.origin, "", err.value, f"{err.field}: {err.reason}") from None


def _check_unique(objects: list[Object], errors: list[ManifestError]) -> None:
    seen: dict[tuple[str, str, str], Origin] = {}
    for o in objects:
        key = (o.resource, *o.key)
        if key in seen:
            errors.append(ManifestError(o.origin, "metadata.name", o.key[1], f"is also {seen[key]}"))
        seen.setdefault(key, o.origin)


__all__ = [
    "ENDPOINTS",
    "ENDPOINT_SLICE",
    "POD",
    "POD_IPS_ANNOTATION",
    "SERVICE",
    "EndpointsObject",
    "Manifest",
    "ManifestError",
    "ManifestInvalid",
    "NETNS_ANNOTATION",
    "Object",
    "Origin",
    "PodObject",
    "Reference",
    "ServiceObject",
    "Skipped",
    "load_documents",
    "parse_manifest",
    "references",
]
