"""Probe: a readiness probe, with Kubernetes' fields and defaults: a pod's (:mod:`svcdns.pod`, one per
container) and a selector-less Service's (:mod:`svcdns.probe.endpoints`). Validated on construction,
as Services and pods are; what a Service's probe must agree with is checked by the Service
(:func:`svcdns.model.check_service_probe`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..validate import ValidationError, check_label, check_port_name, check_port_number

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


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # an HTTP field name (RFC 9110)
_FIELD_NAMES = {"initial_delay": "initialDelaySeconds", "period": "periodSeconds", "timeout": "timeoutSeconds",
                "success_threshold": "successThreshold", "failure_threshold": "failureThreshold"}  # fmt: skip
