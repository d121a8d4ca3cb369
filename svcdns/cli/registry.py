"""``svcdns service ...`` and ``svcdns endpoint ...``: the registry from the command line.

svcdns service add web --port http:80:8080/tcp --port dns:53/udp     # prints the VIP
svcdns service add db --headless --port 5432/tcp
svcdns service add ext --external-name example.org
svcdns service add fixed --vip 10.96.0.50 --port 80/tcp
svcdns service add web --selector app=web --port http:80:http -l tier=front   # endpoints from its pods
svcdns service get web [-o wide|name|json|yaml]
svcdns service describe web                  # + endpoints, pods, and what the running agent serves
svcdns service list [-n NS | -A] [-l tier=front] [-o wide|name|json|yaml] [-w]
svcdns service rm web [--ignore-not-found]
svcdns endpoint add web 10.0.1.5 [--hostname web-0] [--ready|--not-ready] [--terminating]   # only what is given
svcdns endpoint rm web 10.0.1.5 [--ignore-not-found]
svcdns endpoint list web [-o wide|name|json|yaml]      # explicit or derived, with target ports and pods

Writes print one line saying what they did, as kubectl does (``service/web created`` on stderr,
since ``service add`` prints the VIP on stdout for scripts; ``service/web deleted``;
``endpoint 10.0.1.5 of service/web configured``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from functools import partial

from ..errors import NotFound, UsageError
from ..labels import matches, parse_selector
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
    parse_port_spec,
)
from ..probe.spec import Probe
from ..registry import Snapshot
from ..registry.documents import endpoint_document, to_document
from ..validate import parse_ip
from . import config as configuration
from .describe import cmd_service_describe, print_service
from .follow import follow
from .objects import (
    ENDPOINT_HEADER,
    SERVICE_HEADER,
    SERVICE_WIDE,
    endpoint_row,
    registry_of,
    service_row,
    valid,
    vips_text,
)
from .output import done, output_parser, print_names, print_rows, watch_parser, write_doc

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
    out = output_parser()
    gone = argparse.ArgumentParser(add_help=False)
    gone.add_argument("--ignore-not-found", action="store_true", help="exit 0, saying nothing, if it is not there")

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
    add.add_argument("-l", "--labels", default="", metavar="K=V,...", help="the Service's own labels (service list -l)")
    add.add_argument("--probe-tcp", metavar="PORT", help="without --selector: every agent probes each endpoint with a "
                     "tcpSocket readinessProbe on PORT (a number or a Service port's name: its targetPort)")  # fmt: skip
    add.add_argument("--probe-period", type=int, default=10, metavar="SECONDS", help="with --probe-tcp (default 10)")
    add.set_defaults(func=cmd_service_add)

    get = svc_sub.add_parser("get", parents=[common, cidr, out], help="show one Service")
    get.add_argument("name")
    get.set_defaults(func=cmd_service_get)

    describe = svc_sub.add_parser("describe", parents=[common, cidr],
                                  help="a Service, its endpoints and pods, and what the running agent serves")  # fmt: skip
    describe.add_argument("name")
    describe.add_argument("--health-listen", metavar="ADDR:PORT",
                          help="the agent's health address (default: the configured health_listen)")  # fmt: skip
    describe.set_defaults(func=cmd_service_describe)

    lst = svc_sub.add_parser("list", aliases=["ls"], parents=[common, cidr, out, watch_parser()],
                             help="list Services and bad files")  # fmt: skip
    lst.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    lst.add_argument("-l", "--selector", default="", metavar="K=V,...", help="only Services with these labels")
    lst.set_defaults(func=cmd_service_list)

    rm = svc_sub.add_parser("rm", aliases=["delete"], parents=[common, gone], help="remove a Service (frees its VIP)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_service_rm)

    ep = sub.add_parser("endpoint", help="add and remove a Service's endpoints", aliases=["ep"])
    ep_sub = ep.add_subparsers(dest="action", metavar="ACTION", required=True)
    ep_add = ep_sub.add_parser("add", parents=[common],
                               help="add an endpoint, or change what is given of an existing one")  # fmt: skip
    ep_add.add_argument("service")
    ep_add.add_argument("address")
    ep_add.add_argument("--hostname", default=None, help="DNS name of this endpoint (<hostname>.<svc>.<ns>.svc.<zone>)")
    ready = ep_add.add_mutually_exclusive_group()
    ready.add_argument("--ready", dest="ready", action="store_true", default=None, help="gets new traffic (the default)")
    ready.add_argument("--not-ready", dest="ready", action="store_false", help="receives no new traffic")
    ep_add.add_argument("--terminating", action=argparse.BooleanOptionalAction, default=None,
                        help="being shut down (serving until it goes; not ready)")  # fmt: skip
    serving = ep_add.add_mutually_exclusive_group()
    serving.add_argument("--serving", dest="serving", action="store_true", default=None, help=argparse.SUPPRESS)
    serving.add_argument("--not-serving", dest="serving", action="store_false",
                         help="with --terminating: no longer serving either")  # fmt: skip
    ep_add.set_defaults(func=cmd_endpoint_add)
    ep_rm = ep_sub.add_parser("rm", aliases=["delete"], parents=[common, gone], help="remove an endpoint")
    ep_rm.add_argument("service")
    ep_rm.add_argument("address")
    ep_rm.set_defaults(func=cmd_endpoint_rm)
    ep_list = ep_sub.add_parser("list", aliases=["ls"], parents=[common, out], help="a Service's endpoints")
    ep_list.add_argument("service")
    ep_list.set_defaults(func=cmd_endpoint_list)


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
    endpoints = tuple(valid(partial(Endpoint, a)) for a in args.endpoint)
    selector = valid(lambda: parse_selector(args.selector, "--selector"))
    labels = valid(lambda: parse_selector(args.labels, "--labels"))
    if selector and endpoints:
        raise UsageError("--endpoint: a Service with --selector gets its endpoints from its pods (svcdns pod add)")
    if args.publish_not_ready_addresses and not selector:
        raise UsageError("--publish-not-ready-addresses: only with --selector")
    if args.probe_tcp and selector:
        raise UsageError("--probe-tcp: a Service with --selector takes no probe: its pods carry their own readinessProbe")
    port = args.probe_tcp or ""
    probe = valid(lambda: Probe("tcpSocket", int(port) if port.isdigit() else port, period=args.probe_period,
                                timeout=min(1, args.probe_period))) if port else None  # fmt: skip
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
            labels=labels,
            readiness_probe=probe,
        )
    )
    created = valid(lambda: registry_of(args).create(svc))
    print(vips_text(created))  # stdout: the VIP, for scripts (VIP=$(svcdns service add ...))
    print(f"service/{svc.name} created", file=sys.stderr)
    return 0


def cmd_service_get(args) -> int:
    svc = registry_of(args).get(args.namespace, args.name)
    if args.output in ("json", "yaml"):
        write_doc(to_document(svc), args.output)
    elif args.output == "name":
        print_names("service", [svc.name])
    elif args.output == "wide":
        print_rows([SERVICE_HEADER + SERVICE_WIDE, service_row(svc, wide=True)])
    else:
        print_service(svc)
    return 0


def cmd_service_list(args) -> int:
    reg = registry_of(args)
    selector = valid(lambda: parse_selector(args.selector, "-l"))
    wide = args.output == "wide"

    kube_dns = cluster_dns_service(args)

    def chosen(snap: Snapshot) -> list[Service]:
        # kube-dns is this node's agent, not a registry record; a registry Service of that name wins
        listed = [*snap.table, *([kube_dns] if kube_dns is not None and kube_dns.key not in snap.table else [])]
        return sorted((s for s in listed if (args.all_namespaces or s.namespace == args.namespace)
                       and (not selector or matches(selector, s.labels))), key=lambda s: s.key)  # fmt: skip

    def row(s: Service) -> list[str]:
        out = service_row(s, wide)
        if s is kube_dns:
            out[5] = "this node's agent"
        return out

    def rows(snap: Snapshot) -> dict:
        out: dict = {s.key: row(s) for s in chosen(snap)}
        out.update({("ERROR", src): ["ERROR", src, "-", "-", "-", msg] + (["-", "-"] if wide else [])
                    for src, msg in sorted(snap.errors.items())})  # fmt: skip
        return out

    header = SERVICE_HEADER + (SERVICE_WIDE if wide else [])
    if args.watch:
        if args.output not in ("table", "wide"):
            raise UsageError(f"--watch: prints tables; -o {args.output} is not watchable (use -o table or wide)")
        return follow(reg, header, rows, args.output_watch_events)
    snap = reg.snapshot()
    services = chosen(snap)
    if args.output in ("json", "yaml"):
        write_doc({"items": [to_document(s) for s in services],
                   "errors": [{"source": src, "error": msg} for src, msg in sorted(snap.errors.items())]}, args.output)  # fmt: skip
        return 0
    if args.output == "name":
        print_names("service", [s.name for s in services])
        return 0
    table = rows(snap)
    if not table:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"No Services in {where}{' with labels ' + args.selector if selector else ''} ({reg.location}).",
              file=sys.stderr)  # fmt: skip
        return 0
    print_rows([header, *table.values()])
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
    try:
        registry_of(args).delete(args.namespace, args.name)
    except NotFound:
        if args.ignore_not_found:
            return 0
        raise
    done(f"service/{args.name} deleted")
    return 0


# ---- endpoint --------------------------------------------------------------------------------------------


def changed_endpoint(old: Endpoint | None, args: argparse.Namespace) -> Endpoint:
    """The endpoint ``endpoint add`` asks for: a new one from the flags and the defaults (ready), or
    ``old`` with only what was given changed."""
    terminating = args.terminating if args.terminating is not None else bool(old and old.terminating)
    if args.ready is not None:
        ready = args.ready
    elif args.terminating:
        ready = False  # a terminating endpoint is not ready (EndpointSlice: ready = serving and not terminating)
    else:
        ready = old.ready if old else not terminating
    if ready and terminating:
        raise UsageError(f"--ready: endpoint {args.address} is terminating; add --no-terminating to make it ready")
    if args.serving is not None:
        serving = args.serving
    elif ready:
        serving = True
    elif old and (args.ready is None or terminating):
        serving = bool(old.serving)  # not-ready -> still serving only while terminating
    else:
        serving = terminating
    if ready and not serving:
        raise UsageError("--not-serving: only with --terminating (a ready endpoint is serving)")
    hostname = args.hostname if args.hostname is not None else (old.hostname if old else "")
    if old is None:
        return valid(lambda: Endpoint(args.address, ready=ready, serving=serving, terminating=terminating,
                                      hostname=hostname))  # fmt: skip
    return valid(lambda: replace(old, ready=ready, serving=serving, terminating=terminating, hostname=hostname))


def cmd_endpoint_add(args) -> int:
    address = valid(lambda: parse_ip("address", args.address))
    outcome: list[str] = []

    def change(svc: Service) -> Service:
        _explicit(svc)
        eps = list(svc.endpoints)
        same = [i for i, e in enumerate(eps) if e.address == address]
        old = eps[same[0]] if same else None
        endpoint = changed_endpoint(old, args)
        outcome[:] = ["unchanged" if endpoint == old else "configured" if old else "added"]
        if same:
            eps[same[0]] = endpoint  # an update keeps its place
        else:
            eps.append(endpoint)
        return valid(lambda: svc.with_endpoints(eps))

    valid(lambda: registry_of(args).update(args.namespace, args.service, change))
    done(f"endpoint {address} of service/{args.service} {outcome[0]}")
    return 0


def cmd_endpoint_rm(args) -> int:
    address = valid(lambda: parse_ip("address", args.address))

    def change(svc: Service) -> Service:
        _explicit(svc)
        if not any(e.address == address for e in svc.endpoints):
            raise NotFound(f"endpoint {address} of service {svc.ref} not found")
        return replace(svc, endpoints=tuple(e for e in svc.endpoints if e.address != address))

    try:
        registry_of(args).update(args.namespace, args.service, change)
    except NotFound:
        if args.ignore_not_found:
            return 0
        raise
    done(f"endpoint {address} of service/{args.service} removed")
    return 0


def _explicit(svc: Service) -> None:
    if svc.selector:
        selector = ",".join(f"{k}={v}" for k, v in svc.selector)
        raise UsageError(f"Service {svc.ref} has a selector ({selector}): its endpoints come from its pods; "
                         "change those (svcdns pod add|label|rm)")  # fmt: skip


def cmd_endpoint_list(args) -> int:
    svc = registry_of(args).get(args.namespace, args.service)
    if args.output in ("json", "yaml"):
        write_doc({"service": svc.ref, "derived": bool(svc.selector),
                   "endpoints": [endpoint_document(e) for e in svc.endpoints]}, args.output)  # fmt: skip
        return 0
    if args.output == "name":  # the addresses, one a line: what `endpoint rm` takes
        for e in svc.endpoints:
            print(e.address)
        return 0
    if not svc.endpoints:
        print(f"Service {svc.ref} has no endpoints.", file=sys.stderr)
        return 0
    print_rows([ENDPOINT_HEADER, *(endpoint_row(svc, e) for e in svc.endpoints)])
    return 0


__all__ = ["changed_endpoint", "register"]
