"""Readiness probe documents: a pod record's ``readinessProbe`` (one probe, Kubernetes' form) or
``readinessProbes`` (a list, one per container, each naming its ``container``) <-> :class:`Probe`.

The fields are Kubernetes': ``tcpSocket {port}``, ``httpGet {path, port, scheme, httpHeaders}``,
``grpc {port, service}``, ``exec {command}``, and the timing (``initialDelaySeconds`` ...). Errors
name the field as the document spells it (``readinessProbes[1].exec.command``); the codec
(:mod:`.documents`) adds the source, which names the pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..model import ValidationError
from ..pod import PROBE_KINDS, Probe

PROBE_FIELDS = ("container", *PROBE_KINDS, "initialDelaySeconds", "periodSeconds", "timeoutSeconds",
                "successThreshold", "failureThreshold")  # fmt: skip
PROBE_TIMING = {"initialDelaySeconds": "initial_delay", "periodSeconds": "period", "timeoutSeconds": "timeout",
                "successThreshold": "success_threshold", "failureThreshold": "failure_threshold"}  # fmt: skip
ACTION_FIELDS = {"tcpSocket": ("port",), "httpGet": ("path", "port", "scheme", "httpHeaders"),
                 "grpc": ("port", "service"), "exec": ("command",)}  # fmt: skip
_EXAMPLE = "e.g. {tcpSocket: {port: 8080}}"


def probes_from(data: Mapping[str, Any]) -> tuple[Probe, ...]:
    """The probes of a pod document: its ``readinessProbe`` or its ``readinessProbes`` (not both)."""
    single, several = data.get("readinessProbe"), data.get("readinessProbes")
    if single is not None and several is not None:
        raise ValidationError("readinessProbes", several, "a pod has readinessProbe or readinessProbes, not both")
    if single is not None:
        return (probe_from(single),)
    if several is None:
        return ()
    if not isinstance(several, list):
        raise ValidationError("readinessProbes", several, f"must be a list of probes, {_EXAMPLE}")
    probes = tuple(_located(f"readinessProbes[{i}]", p) for i, p in enumerate(several))
    names = [p.container for p in probes]
    if len(probes) > 1 and (not all(names) or len(set(names)) != len(names)):
        raise ValidationError("readinessProbes", names, "with several probes, each names its container, once")
    return probes


def _located(where: str, data: Any) -> Probe:
    try:
        return probe_from(data)
    except ValidationError as err:  # the probe's own fields are readinessProbe.<x>: here, <where>.<x>
        tail = err.field.removeprefix("readinessProbe")
        raise ValidationError(where + (tail if tail.startswith(".") or not tail else f".{tail}"), err.value, err.reason) from None


def probe_from(data: Any) -> Probe:
    """One probe document (fields as :data:`PROBE_FIELDS`) as a :class:`Probe`."""
    if not isinstance(data, Mapping):
        raise ValidationError("readinessProbe", data, f"must be a mapping, {_EXAMPLE}")
    _check_keys("readinessProbe", data, PROBE_FIELDS)
    kinds = [k for k in PROBE_KINDS if k in data]
    if len(kinds) != 1:
        raise ValidationError("readinessProbe", sorted(data), f"must have exactly one of {', '.join(PROBE_KINDS)}")
    kind = kinds[0]
    action = data[kind]
    if not isinstance(action, Mapping):
        what = "a command" if kind == "exec" else "a port"
        raise ValidationError(f"readinessProbe.{kind}", action, f"must be a mapping with {what}")
    _check_keys(f"readinessProbe.{kind}", action, ACTION_FIELDS[kind])
    if kind != "exec" and "port" not in action:
        raise ValidationError(f"readinessProbe.{kind}.port", None, "is required")
    if kind == "exec" and "command" not in action:
        raise ValidationError("readinessProbe.exec.command", None, "is required")
    headers = action.get("httpHeaders") or []
    if not isinstance(headers, list) or not all(isinstance(h, Mapping) and set(h) == {"name", "value"} for h in headers):
        raise ValidationError("readinessProbe.httpGet.httpHeaders", headers, "must be a list of {name, value}")
    command = action.get("command", ())
    timing = {PROBE_TIMING[k]: v for k, v in data.items() if k in PROBE_TIMING}
    return Probe(kind=kind, port=action.get("port", 0), path=action.get("path", "/"), scheme=action.get("scheme", "HTTP"),
                 http_headers=tuple((h["name"], h["value"]) for h in headers),
                 command=tuple(command) if isinstance(command, list) else command,
                 service=action.get("service", "") if action.get("service") is not None else "",
                 container=data.get("container", "") or "", **timing)  # fmt: skip


def probe_document(probe: Probe) -> dict[str, Any]:
    action: dict[str, Any]
    if probe.kind == "exec":
        action = {"command": list(probe.command)}
    else:
        action = {"port": probe.port}
    if probe.kind == "httpGet":
        action.update(path=probe.path, scheme=probe.scheme)
        if probe.http_headers:
            action["httpHeaders"] = [{"name": n, "value": v} for n, v in probe.http_headers]
    if probe.kind == "grpc" and probe.service:
        action["service"] = probe.service
    out: dict[str, Any] = {"container": probe.container} if probe.container else {}
    return {**out, probe.kind: action, **{k: getattr(probe, attr) for k, attr in PROBE_TIMING.items()}}


def probes_document(probes: tuple[Probe, ...]) -> dict[str, Any]:
    """The fields of a pod document holding ``probes``: one probe without a container name is
    ``readinessProbe``, as in Kubernetes; several are ``readinessProbes``."""
    if not probes:
        return {}
    if len(probes) == 1 and not probes[0].container:
        return {"readinessProbe": probe_document(probes[0])}
    return {"readinessProbes": [probe_document(p) for p in probes]}


def _check_keys(where: str, data: Mapping[Any, Any], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            raise ValidationError(f"{where}.{str(key)[:100]}", data[key], f"unknown field; known fields: {', '.join(allowed)}")


__all__ = ["PROBE_FIELDS", "PROBE_TIMING", "probe_document", "probe_from", "probes_document", "probes_from"]
