"""What the registry commands share: opening the registry the flags name, validating input, and a
Service's and an endpoint's columns (the same in ``list``, ``get -o wide``, ``describe`` and ``--watch``)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import TypeVar

from ..errors import UsageError, shorten
from ..model import EXTERNAL_NAME, HEADLESS, Endpoint, Service, ValidationError, check_label
from ..registry import Registry, open_registry
from .config import registry_location, registry_password
from .output import labels_text

T = TypeVar("T")

SERVICE_HEADER = ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORTS", "ENDPOINTS"]
SERVICE_WIDE = ["SELECTOR", "LABELS"]
ENDPOINT_HEADER = ["ADDRESS", "PORTS", "READY", "SERVING", "TERMINATING", "HOSTNAME", "POD"]


def registry_of(args: argparse.Namespace) -> Registry:
    """The registry the flags, the environment or the config name; ``-n`` checked first (exit 2)."""
    valid(lambda: check_label("namespace", args.namespace))
    if not args.verbose:
        # the CLI shows bad files as ERROR rows of `service list` (and errors of the Service asked
        # for as the command's error); log lines about other files would only be noise here
        logging.getLogger("svcdns.registry").setLevel(logging.CRITICAL)
    cidrs = getattr(args, "service_cidr", None)
    if not cidrs and os.environ.get("SVCDNS_SERVICE_CIDRS"):
        cidrs = [c for c in os.environ["SVCDNS_SERVICE_CIDRS"].split(",") if c.strip()]
    location = registry_location(args.registry)
    return open_registry(location, cidrs, password=registry_password(location))


def valid(build: Callable[[], T]) -> T:
    """Run a model constructor; a ValidationError becomes a UsageError (exit 2) naming field and value."""
    try:
        return build()
    except ValidationError as err:
        raise UsageError(f"invalid {err.field or 'value'} {shorten(err.value)}: {err.reason}") from None


def vips_text(svc: Service) -> str:
    if svc.type == HEADLESS:
        return "None"
    if svc.type == EXTERNAL_NAME:
        return svc.external_name
    return ",".join(map(str, svc.cluster_ips)) or "<pending>"


def endpoints_text(svc: Service) -> str:
    ready = sum(1 for e in svc.endpoints if e.ready)
    return f"{ready}/{len(svc.endpoints)} ready"


def service_row(svc: Service, wide: bool) -> list[str]:
    row = [svc.namespace, svc.name, svc.type, vips_text(svc), ",".join(str(p) for p in svc.ports) or "-",
           endpoints_text(svc)]  # fmt: skip
    return row + ([labels_text(svc.selector), labels_text(svc.labels)] if wide else [])


def endpoint_row(svc: Service, e: Endpoint) -> list[str]:
    ports = ",".join(f"{p.name + ':' if p.name else ''}{e.target_port(p)}/{p.protocol.lower()}" for p in svc.ports)
    flags = [str(f).lower() for f in (e.ready, e.serving, e.terminating)]
    return [str(e.address), ports or "-", *flags, e.hostname or "-", e.pod or "-"]


__all__ = ["ENDPOINT_HEADER", "SERVICE_HEADER", "SERVICE_WIDE", "endpoint_row", "endpoints_text", "registry_of",
           "service_row", "valid", "vips_text"]  # fmt: skip
