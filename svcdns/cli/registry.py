"""``svcdns service ...`` and ``svcdns endpoint ...``: the registry from the command line.

svcdns service add web --port http:80:8080/tcp --port dns:53/udp     # prints the VIP
svcdns service add db --headless --port 5432/tcp
svcdns service add ext --external-name example.org
svcdns service add fixed --vip 10.96.0.50 --port 80/tcp
svcdns service add web --selector app=web --port http:80:http   # endpoints from its pods; a named targetPort
svcdns service get web [-o json|yaml]
svcdns service list [-n NS | -A] [-o json|yaml]
svcdns service rm web
svcdns endpoint add web 10.0.1.5 [--hostname web-0] [--not-ready] [--terminating]
svcdns endpoint rm web 10.0.1.5
svcdns endpoint list web [-o json|yaml]      # explicit or derived, with target ports and pods
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from ..errors import NotFound, UsageError, shorten
from ..model import (
    AFFINITY_CLIENT_IP,
    AFFINITY_NONE,
    CLUSTER_DNS_SERVICE,
    CLUSTER_IP,
    EXTERNAL_NAME,
    HEADLESS,
    IPV4,
    IPV6,
    Endpoint,
    Service,
    ValidationError,
    parse_ip,
    parse_port_spec,
    parse_selector,
)
from ..registry import Registry, open_registry
from ..registry.documents import dump, endpoint_document, to_document
from . import config as configuration
from .config import registry_location, registry_password

T = TypeVar("T")

_FAMILIES = {"ipv4": (IPV4,), "ipv6": (IPV6,), "dual": (IPV4, IPV6), "dual-ipv6": (IPV6, IPV4)}


def register(sub, common: argparse.ArgumentParser) -> None:
    cidr = argparse.ArgumentParser(add_help=False)
    cidr.add_argument(
        "--service-cidr",
        action="append",
        metavar="CIDR",
        help="service CIDR for new VIPs (repeat for dual-stack); default: the ones the registry recorded, "
        "$SVCDNS_SERVICE_CIDRS (comma-separated), or 10.96.0.0/12",
    )
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table", help="output format")

    svc = sub.add_parser("service", help="add, show, list and remove Services", aliases=["svc"])
    svc_sub = svc.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = svc_sub.add_parser("add", parents=[common, cidr], help="add a Service; prints its VIP")
    add.add_argument("name")
    add.add_argument(
        "-p", "--port", action="append", default=[], metavar="SPEC", help="[name:]port[:targetPort][/tcp|udp|sctp]"
    )
    kind = add.add_mutually_exclusive_group()
    kind.add_argument("--headless", action="store_true", help="no VIP: DNS answers the ready endpoints' addresses")
    kind.add_argument("--external-name", metavar="DNSNAME", help="no VIP: DNS answers a CNAME to DNSNAME")
    add.add_argument("--vip", action="append", default=[], metavar="IP", help="request this VIP (one per family)")
    add.add_argument("--ip-family", choices=sorted(_FAMILIES), help="ipv4, ipv6, or dual (both; primary first)")
    add.add_argument("--session-affinity", choices=(AFFINITY_NONE, AFFINITY_CLIENT_IP), default=AFFINITY_NONE)
    add.add_argument("--affinity-timeout", type=int, default=None, metavar="SECONDS")
    add.add_argument("--endpoint", action="append", default=[], metavar="IP", help="a ready endpoint (repeatable)")
    add.add_argument("--selector", default="", metavar="K=V,...", help="take the endpoints from the pods with these labels")
    add.add_argument("--publish-not-ready-addresses", action="store_true", help="with --selector: every pod is ready")
    add.set_defaults(func=cmd_service_add)

    get = svc_sub.add_parser("get", parents=[common, cidr, out], help="show one Service")
    get.add_argument("name")
    get.set_defaults(func=cmd_service_get)

    lst = svc_sub.add_parser("list", aliases=["ls"], parents=[common, cidr, out], help="list Services and bad files")
    lst.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    lst.set_defaults(func=cmd_service_list)

    rm = svc_sub.add_parser("rm", aliases=["delete"], parents=[common], help="remove a Service (frees its VIP)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_service_rm)

    ep = sub.add_parser("endpoint", help="add and remove a Service's endpoints", aliases=["ep"])
    ep_sub = ep.add_subparsers(dest="action", metavar="ACTION", required=True)
    ep_add = ep_sub.add_parser("add", parents=[common], help="add (or update) an endpoint")
    ep_add.add_argument("service")
    ep_add.add_argument("address")
    ep_add.add_argument("--hostname", default="", help="DNS name of this endpoint (<hostname>.<svc>.<ns>.svc.<zone>)")
    ep_add.add_argument("--not-ready", action="store_true", help="receives no new traffic")
    ep_add.add_argument("--terminating", action="store_true", help="being shut down (serving until it goes)")
    ep_add.add_argument("--not-serving", action="store_true", help="with --terminating: no longer serving either")
    ep_add.set_defaults(func=cmd_endpoint_add)
    ep_rm = ep_sub.add_parser("rm", aliases=["delete"], parents=[common], help="remove an endpoint")
    ep_rm.add_argument("service")
    ep_rm.add_argument("address")
    ep_rm.set_defaults(func=cmd_endpoint_rm)
    ep_list = ep_sub.add_parser("list", aliases=["ls"], parents=[common, out], help="a Service's endpoints")
    ep_list.add_argument("service")
    ep_list.set_defaults(func=cmd_endpoint_list)


# ---- helpers ---------------------------------------------------------------------------------------------


def registry_of(args: argparse.Namespace) -> Registry:
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


def _ready_endpoint(address: str) -> Endpoint:
    return Endpoint(parse_ip("address", address))


def _ports_text(svc: Service) -> str:
    return ",".join(str(p) for p in svc.ports) or "-"


def _vips_text(svc: Service) -> str:
    if svc.type == HEADLESS:
        return "None"
    if svc.type == EXTERNAL_NAME:
        return svc.external_name
    return ",".join(map(str, svc.cluster_ips)) or "<pending>"


def _endpoints_text(svc: Service) -> str:
    ready = sum(1 for e in svc.endpoints if e.ready)
    return f"{ready}/{len(svc.endpoints)} ready"


def print_rows(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _dump(doc: Any, fmt: str) -> None:
    sys.stdout.write(dump(doc, fmt))


# ---- service ---------------------------------------------------------------------------------------------


def cmd_service_add(args) -> int:
    ports = tuple(valid(partial(parse_port_spec, s)) for s in args.port)
    kind = HEADLESS if args.headless else EXTERNAL_NAME if args.external_name else CLUSTER_IP
    vips = tuple(valid(partial(parse_ip, "--vip", v)) for v in args.vip)
    if vips and kind != CLUSTER_IP:
        raise UsageError(f"--vip {args.vip[0]}: a {kind} Service has no VIP")
    families = _FAMILIES[args.ip_family] if args.ip_family else ()
    if args.affinity_timeout is not None and args.session_affinity != AFFINITY_CLIENT_IP:
        raise UsageError(f"--affinity-timeout {args.affinity_timeout}: only with --session-affinity ClientIP")
    if kind == CLUSTER_IP and not ports:
        raise UsageError("a ClusterIP Service needs at least one --port, e.g. --port http:80:8080/tcp")
    endpoints = tuple(valid(partial(_ready_endpoint, a)) for a in args.endpoint)
    selector = valid(lambda: parse_selector(args.selector, "--selector"))
    if selector and endpoints:
        raise UsageError("--endpoint: a Service with --selector gets its endpoints from its pods (svcdns pod add)")
    if args.publish_not_ready_addresses and not selector:
        raise UsageError("--publish-not-ready-addresses: only with --selector")
    svc = valid(
        lambda: Service(
            name=args.name,
            namespace=args.namespace,
            type=kind,
            ports=ports,
            cluster_ips=vips,
            ip_families=families if not vips or len(families) > len(vips) else (),
            external_name=args.external_name or "",
            session_affinity=args.session_affinity,
            affinity_timeout=args.affinity_timeout or 10800,
            endpoints=endpoints,
            selector=selector,
            publish_not_ready_addresses=args.publish_not_ready_addresses,
        )
    )
    created = valid(lambda: registry_of(args).create(svc))
    print(_vips_text(created))
    return 0


def cmd_service_get(args) -> int:
    svc = registry_of(args).get(args.namespace, args.name)
    if args.output != "table":
        _dump(to_document(svc), args.output)
        return 0
    print(f"Name:              {svc.name}")
    print(f"Namespace:         {svc.namespace}")
    print(f"Type:              {svc.type}")
    if svc.type == EXTERNAL_NAME:
        print(f"External name:     {svc.external_name}")
    else:
        print(f"VIPs:              {_vips_text(svc)}")
    for i, p in enumerate(svc.ports):
        head = "Ports:" if i == 0 else ""
        print(f"{head:<19}{p.name or '<unnamed>'} {p.port}/{p.protocol} -> {p.target_port}")
    affinity = svc.session_affinity
    if affinity == AFFINITY_CLIENT_IP:
        affinity += f" ({svc.affinity_timeout}s)"
    print(f"Session affinity:  {affinity}")
    if not svc.endpoints:
        print("Endpoints:         <none>")
        return 0
    print("Endpoints:")
    rows = [["  ADDRESS", "READY", "SERVING", "TERMINATING", "HOSTNAME"]]
    for e in svc.endpoints:
        rows.append(
            [
                f"  {e.address}",
                str(e.ready).lower(),
                str(e.serving).lower(),
                str(e.terminating).lower(),
                e.hostname or "-",
            ]
        )
    print_rows(rows)
    return 0


def cmd_service_list(args) -> int:
    reg = registry_of(args)
    snap = reg.snapshot()
    kube_dns = cluster_dns_service(args)
    listed = [*snap.table, *([kube_dns] if kube_dns is not None and kube_dns.key not in snap.table else [])]
    services = sorted(
        (s for s in listed if args.all_namespaces or s.namespace == args.namespace), key=lambda s: s.key
    )
    errors = sorted(snap.errors.items())
    if args.output != "table":
        _dump(
            {
                "items": [to_document(s) for s in services],
                "errors": [{"source": src, "error": msg} for src, msg in errors],
            },
            args.output,
        )
        return 0
    if not services and not errors:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"No Services in {where} ({reg.location}).", file=sys.stderr)
        return 0
    rows = [["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORTS", "ENDPOINTS"]]
    rows += [[s.namespace, s.name, s.type, _vips_text(s), _ports_text(s),
              "this node's agent" if s is kube_dns else _endpoints_text(s)] for s in services]  # fmt: skip
    for source, message in errors:
        rows.append(["ERROR", source, "-", "-", "-", message])
    print_rows(rows)
    return 0


def cluster_dns_service(args) -> Service | None:
    """``kube-dns`` in ``kube-system`` at the cluster DNS address the agent serves (by the same
    configuration: file, environment, ``--service-cidr``); None where there is none."""
    try:
        cfg = configuration.load(None, {"service_cidrs": getattr(args, "service_cidr", None)})
    except UsageError:
        return None  # the agent would not start on it either; the registry's own Services still list
    return CLUSTER_DNS_SERVICE.with_cluster_ips([parse_ip("cluster_dns", cfg.cluster_dns)]) if cfg.cluster_dns else None


def cmd_service_rm(args) -> int:
    registry_of(args).delete(args.namespace, args.name)
    print(f"Service {args.namespace}/{args.name} removed")
    return 0


# ---- endpoint --------------------------------------------------------------------------------------------


def cmd_endpoint_add(args) -> int:
    if args.not_serving and not args.terminating:
        raise UsageError("--not-serving: only with --terminating (a ready endpoint is serving)")
    ready = not (args.not_ready or args.terminating)
    endpoint = valid(
        lambda: Endpoint(
            address=args.address,
            ready=ready,
            serving=False if args.not_serving else (True if args.terminating else ready),
            terminating=args.terminating,
            hostname=args.hostname,
        )
    )

    def change(svc: Service) -> Service:
        _explicit(svc)
        eps = list(svc.endpoints)
        same = [i for i, e in enumerate(eps) if e.address == endpoint.address]
        if same:
            eps[same[0]] = endpoint  # an update keeps its place
        else:
            eps.append(endpoint)
        return valid(lambda: svc.with_endpoints(eps))

    valid(lambda: registry_of(args).update(args.namespace, args.service, change))
    return 0


def cmd_endpoint_rm(args) -> int:
    address = valid(lambda: parse_ip("address", args.address))

    def change(svc: Service) -> Service:
        _explicit(svc)
        if not any(e.address == address for e in svc.endpoints):
            raise NotFound(f"Service {svc.ref} has no endpoint {address}")
        return replace(svc, endpoints=tuple(e for e in svc.endpoints if e.address != address))

    registry_of(args).update(args.namespace, args.service, change)
    return 0


def _explicit(svc: Service) -> None:
    if svc.selector:
        selector = ",".join(f"{k}={v}" for k, v in svc.selector)
        raise UsageError(f"Service {svc.ref} has a selector ({selector}): its endpoints come from its pods; "
                         "change those (svcdns pod add|label|rm)")  # fmt: skip


def cmd_endpoint_list(args) -> int:
    svc = registry_of(args).get(args.namespace, args.service)
    if args.output != "table":
        _dump({"service": svc.ref, "derived": bool(svc.selector),
               "endpoints": [endpoint_document(e) for e in svc.endpoints]}, args.output)  # fmt: skip
        return 0
    if not svc.endpoints:
        print(f"Service {svc.ref} has no endpoints.", file=sys.stderr)
        return 0
    rows = [["ADDRESS", "PORTS", "READY", "SERVING", "TERMINATING", "HOSTNAME", "POD"]]
    for e in svc.endpoints:
        ports = ",".join(f"{p.name + ':' if p.name else ''}{e.target_port(p)}/{p.protocol.lower()}" for p in svc.ports)
        flags = [str(f).lower() for f in (e.ready, e.serving, e.terminating)]
        rows.append([str(e.address), ports or "-", *flags, e.hostname or "-", e.pod or "-"])
    print_rows(rows)
    return 0


__all__ = ["print_rows", "register", "registry_of", "valid"]
