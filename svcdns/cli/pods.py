"""``svcdns pod ...``: pods with labels, which Services with a selector take their endpoints from.

svcdns pod add web-0 10.244.1.5 [fd00:244::5] -l app=web,tier=front [--hostname web-0 --subdomain web]
               [--node n1] [--port http:8080/tcp] [--not-ready] [--netns /run/netns/web-0]  # creates or replaces
svcdns pod rm web-0 [--grace 30] [--ignore-not-found]   # --grace: terminating, then gone after 30 s
svcdns pod label web-0 tier=back app-                   # set and remove labels
svcdns pod get web-0 [-o wide|name|json|yaml]
svcdns pod list [-l app=web] [-A] [-o wide|name|json|yaml] [-w]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from functools import partial

from ..errors import NotFound, UsageError
from ..labels import check_label_key, check_label_value, labels_of, matches, parse_selector
from ..model import PROTOCOLS
from ..pod import ContainerPort, Pod, PodStatus, Probe, readiness
from ..registry import Snapshot
from ..registry.documents import dump, pod_document
from ..table import Key
from .follow import POD_INTERVAL, follow, watched_pods, watched_statuses
from .objects import registry_of, valid
from .output import done, output_parser, print_names, print_rows, watch_parser


def register(sub, common: argparse.ArgumentParser) -> None:
    pod = sub.add_parser("pod", help="add, label, list and remove pods (Services select them by label)", aliases=["po"])
    pod_sub = pod.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = pod_sub.add_parser("add", parents=[common], help="register a pod (or replace it)")
    add.add_argument("name")
    add.add_argument("ips", nargs="+", metavar="IP", help="its address (one per family)")
    add.add_argument("-l", "--labels", default="", metavar="K=V,...", help="its labels, e.g. app=web,tier=front")
    add.add_argument("--hostname", default="", help="with --subdomain: <hostname>.<subdomain>.<ns>.svc.<zone>")
    add.add_argument("--subdomain", default="", help="the headless Service that names it")
    add.add_argument("--node", default="", help="the node it runs on")
    add.add_argument("--port", action="append", default=[], metavar="SPEC", help="[name:]port[/tcp|udp|sctp]")
    add.add_argument("--not-ready", action="store_true", help="registered but not ready (no traffic)")
    add.add_argument("--netns", default="", metavar="PATH", help="its network namespace (e.g. /run/netns/web-0): exec probes run there")
    add.set_defaults(func=cmd_pod_add)

    rm = pod_sub.add_parser("rm", aliases=["delete"], parents=[common], help="remove a pod, now or after a grace")
    rm.add_argument("name")
    rm.add_argument("--grace", type=float, default=0, metavar="SECONDS",
                    help="terminating for this long (open connections kept, no new ones while others serve)")  # fmt: skip
    rm.add_argument("--ignore-not-found", action="store_true", help="exit 0, saying nothing, if it is not there")
    rm.set_defaults(func=cmd_pod_rm)

    label = pod_sub.add_parser("label", parents=[common], help="set (k=v) and remove (k-) labels")
    label.add_argument("name")
    label.add_argument("changes", nargs="+", metavar="K=V|K-")
    label.set_defaults(func=cmd_pod_label)

    get = pod_sub.add_parser("get", parents=[common, output_parser()], help="show one pod")
    get.add_argument("name")
    get.set_defaults(func=cmd_pod_get)

    lst = pod_sub.add_parser("list", aliases=["ls"], parents=[common, output_parser(), watch_parser()],
                             help="list pods and bad pod files")  # fmt: skip
    lst.add_argument("-l", "--selector", default="", metavar="K=V,...", help="only pods with these labels")
    lst.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    lst.set_defaults(func=cmd_pod_list)


def _container_port(spec: str) -> ContainerPort:
    text, _, proto = spec.partition("/")
    name, _, number = text.rpartition(":")
    if not number.isdigit() or (proto and proto.upper() not in PROTOCOLS):
        raise UsageError(f"--port {spec!r}: expected [name:]port[/tcp|udp|sctp], e.g. http:8080/tcp")
    return valid(lambda: ContainerPort(int(number), name, proto.upper() or "TCP"))


def cmd_pod_add(args) -> int:
    pod = valid(
        lambda: Pod(
            name=args.name,
            namespace=args.namespace,
            labels=parse_selector(args.labels, "labels"),
            ips=tuple(args.ips),
            hostname=args.hostname,
            subdomain=args.subdomain,
            node_name=args.node,
            ports=tuple(_container_port(p) for p in args.port),
            ready=not args.not_ready,
            netns=args.netns,
        )
    )
    reg = registry_of(args)
    try:
        old: Pod | None = reg.get_pod(pod.namespace, pod.name)
    except NotFound:
        old = None
    if old == pod:
        done(f"pod/{pod.name} unchanged")
        return 0
    created = reg.put_pod(pod)
    done(f"pod/{pod.name} {'created' if created else 'configured'}")
    return 0


def cmd_pod_rm(args) -> int:
    reg = registry_of(args)
    try:
        if args.grace > 0:
            deadline = time.time() + args.grace
            # a second rm may shorten the grace, never lengthen it (as Kubernetes)
            reg.update_pod(args.namespace, args.name, lambda p: replace(
                p, deletion_deadline=min(deadline, p.deletion_deadline or deadline)))  # fmt: skip
            print(f"pod/{args.name} terminating; gone in {args.grace:g}s")
            return 0
        reg.delete_pod(args.namespace, args.name)
    except NotFound:
        if args.ignore_not_found:
            return 0
        raise
    done(f"pod/{args.name} deleted")
    return 0


def cmd_pod_label(args) -> int:
    sets: dict[str, str] = {}
    removes: list[str] = []
    for change in args.changes:
        if change.endswith("-") and "=" not in change:
            removes.append(valid(partial(check_label_key, "labels", change[:-1])))
        elif "=" in change:
            key, _, value = change.partition("=")
            sets[valid(partial(check_label_key, "labels", key))] = valid(partial(check_label_value, f"labels.{key}", value))
        else:
            raise UsageError(f"{change!r}: expected key=value (set) or key- (remove)")

    def change_labels(pod: Pod) -> Pod:
        labels = dict(pod.labels)
        for key in removes:
            labels.pop(key, None)
        labels.update(sets)
        return replace(pod, labels=labels_of(labels))

    registry_of(args).update_pod(args.namespace, args.name, change_labels)
    print(f"pod/{args.name} labeled")
    return 0


def _status(pod: Pod, status: PodStatus | None) -> str:
    return "Terminating" if pod.terminating else "Ready" if readiness(pod, status)[0] else "NotReady"


def _status_of(reg, pod: Pod) -> PodStatus | None:
    return reg.pod_statuses(pod.namespace).get(pod.key) if pod.readiness_probes else None


def cmd_pod_get(args) -> int:
    reg = registry_of(args)
    pod = reg.get_pod(args.namespace, args.name)
    if args.output in ("json", "yaml"):
        sys.stdout.write(dump(pod_document(pod), args.output))
        return 0
    if args.output == "name":
        print_names("pod", [pod.name])
        return 0
    if args.output == "wide":
        print_rows([POD_HEADER + POD_WIDE, _pod_row(pod, _status_of(reg, pod), wide=True)])
        return 0
    status = _status_of(reg, pod)
    print(f"Name:       {pod.name}\nNamespace:  {pod.namespace}\nStatus:     {_status(pod, status)}")
    print(f"IPs:        {', '.join(map(str, pod.ips)) or '<none>'}")
    print(f"Labels:     {','.join(f'{k}={v}' for k, v in pod.labels) or '<none>'}")
    for head, value in (("Hostname:", pod.hostname), ("Subdomain:", pod.subdomain), ("Node:", pod.node_name)):
        if value:
            print(f"{head:<12}{value}")
    for i, p in enumerate(pod.ports):
        print(f"{'Ports:' if i == 0 else '':<12}{p.name or '<unnamed>'} {p.container_port}/{p.protocol}")
    for head, value in (("Netns:", pod.netns), ("Reason:", "" if (why := _reason(pod, status)) == "-" else why)):
        if value:
            print(f"{head:<12}{value}")
    for i, probe in enumerate(pod.readiness_probes):
        print(f"{'Readiness:' if i == 0 else '':<12}{_describe(probe)}")
    return 0


def _describe(probe: Probe) -> str:
    """A probe as ``kubectl describe`` shows one."""
    what = {"tcpSocket": f"tcp-socket :{probe.port}", "grpc": f"grpc :{probe.port} {probe.service}".rstrip(),
            "httpGet": f"http-get {probe.scheme.lower()}://:{probe.port}{probe.path}",
            "exec": f"exec {list(probe.command)}"}[probe.kind]  # fmt: skip
    container = f"[{probe.container}] " if probe.container else ""
    return (f"{container}{what} delay={probe.initial_delay}s timeout={probe.timeout}s period={probe.period}s "
            f"#success={probe.success_threshold} #failure={probe.failure_threshold}")  # fmt: skip


def _reason(pod: Pod, status: PodStatus | None) -> str:
    """Why a pod is not ready: its prober's reason (or that it was not probed yet), its record's say."""
    ready, reason = readiness(pod, status)
    if ready or pod.terminating:
        return "-"
    # a probed pod held out by its record says so: its probes may pass
    return reason or ("not ready in its record" if not pod.ready and pod.readiness_probes else "-")


POD_HEADER = ["NAMESPACE", "NAME", "STATUS", "IP", "REASON"]
POD_WIDE = ["NODE", "LABELS"]


def _pod_row(p: Pod, status: PodStatus | None, wide: bool) -> list[str]:
    row = [p.namespace, p.name, _status(p, status), ",".join(map(str, p.ips)) or "<none>", _reason(p, status)]
    return row + ([p.node_name or "-", ",".join(f"{k}={v}" for k, v in p.labels) or "-"] if wide else [])


def cmd_pod_list(args) -> int:
    reg = registry_of(args)
    selector = valid(lambda: parse_selector(args.selector, "-l"))
    wide = args.output == "wide"

    def chosen(pods: list[Pod]) -> list[Pod]:
        return [p for p in pods if (args.all_namespaces or p.namespace == args.namespace)
                and (not selector or matches(selector, p.labels))]  # fmt: skip

    def rows(pods: list[Pod], errors: dict[str, str], statuses: Mapping[Key, PodStatus]) -> dict:
        out: dict = {p.key: _pod_row(p, statuses.get(p.key), wide) for p in chosen(pods)}
        out.update({("ERROR", src): ["ERROR", src, "-", msg, "-"] + (["-", "-"] if wide else []) for src, msg in sorted(errors.items())})
        return out

    if args.watch:
        if args.output not in ("table", "wide"):
            raise UsageError(f"--watch: prints tables; -o {args.output} is not watchable (use -o table or wide)")

        def view(snap: Snapshot) -> dict:
            pods, errors = watched_pods(reg)
            listed = [pods[k] for k in sorted(pods)]
            return rows(listed, errors, watched_statuses(reg, listed))

        return follow(reg, POD_HEADER + (POD_WIDE if wide else []), view, args.output_watch_events, POD_INTERVAL)
    pods = chosen(reg.list_pods(None if args.all_namespaces else args.namespace))
    errors = dict(reg.pod_errors())
    if args.output in ("json", "yaml"):
        doc = {"items": [pod_document(p) for p in pods], "errors": [{"source": s, "error": m} for s, m in sorted(errors.items())]}
        sys.stdout.write(dump(doc, args.output))
        return 0
    if args.output == "name":
        print_names("pod", [p.name for p in pods])
        return 0
    probed = any(p.readiness_probes for p in pods)
    statuses = reg.pod_statuses(None if args.all_namespaces else args.namespace) if probed else {}
    table = rows(pods, errors, statuses)
    if not table:
        print(f"No pods ({reg.location}).", file=sys.stderr)
        return 0
    print_rows([POD_HEADER + (POD_WIDE if wide else []), *table.values()])
    return 0


__all__ = ["register"]
