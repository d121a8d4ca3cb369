"""``svcdns service describe NAME``: what ``get`` shows, the pods its selector picks, and what the
running agent serves of it.

The agent's view comes from the agent itself: its ``/status`` on the configured health address (is it
healthy, when it last synced, which registry it follows) and its DNS server (does the Service's name
answer what the registry says). The agent publishes a Service's name only once its rules are in the
kernel, and withdraws it before removing them, so a name that answers the VIPs means the rules are
in place. The registry keeps no history of changes, so there are no events to show.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from dnslib import QTYPE, DNSRecord

from ..addr import format_hostport, parse_hostport
from ..errors import UsageError
from ..labels import matches
from ..model import AFFINITY_CLIENT_IP, CLUSTER_IP, EXTERNAL_NAME, IPV6, Service, family_of
from ..pod import readiness
from . import config as configuration
from .objects import ENDPOINT_HEADER, endpoint_row, registry_of, vips_text
from .output import labels_text, print_rows
from .pods import _describe as probe_text

TIMEOUT = 1.0  # seconds for the agent's HTTP and DNS answers: it is local


def print_service(svc: Service) -> None:
    """The readable view of ``service get`` (``describe`` starts with it)."""
    print(f"Name:              {svc.name}")
    print(f"Namespace:         {svc.namespace}")
    print(f"Labels:            {labels_text(svc.labels)}")
    print(f"Type:              {svc.type}")
    if svc.type == EXTERNAL_NAME:
        print(f"External name:     {svc.external_name}")
    else:
        print(f"VIPs:              {vips_text(svc)}")
    for i, p in enumerate(svc.ports):
        head = "Ports:" if i == 0 else ""
        print(f"{head:<19}{p.name or '<unnamed>'} {p.port}/{p.protocol} -> {p.target_port_name or p.target_port}")
    affinity = svc.session_affinity
    if affinity == AFFINITY_CLIENT_IP:
        affinity += f" ({svc.affinity_timeout}s)"
    print(f"Session affinity:  {affinity}")
    print(f"Selector:          {labels_text(svc.selector)}")
    if svc.readiness_probe is not None:
        print(f"Readiness:         {probe_text(svc.readiness_probe)} (every agent probes each endpoint)")
    if not svc.endpoints:
        print("Endpoints:         <none>")
        return
    print("Endpoints:")
    rows = [ENDPOINT_HEADER, *(endpoint_row(svc, e) for e in svc.endpoints)]
    print_rows([["  " + r[0], *r[1:]] for r in rows])


def cmd_service_describe(args) -> int:
    reg = registry_of(args)
    svc = reg.get(args.namespace, args.name)
    print_service(svc)
    if svc.selector:
        pods = [p for p in reg.list_pods(svc.namespace) if matches(svc.selector, p.labels)]
        statuses = reg.pod_statuses(svc.namespace) if any(p.readiness_probes for p in pods) else {}
        serving = {e.pod for e in svc.endpoints}
        print("Pods:" + ("              <none match the selector>" if not pods else ""))
        if pods:
            rows = [["  NAME", "STATUS", "IP", "ENDPOINT", "REASON"]]
            for p in pods:
                ready, reason = readiness(p, statuses.get(p.key))
                status = "Terminating" if p.terminating else "Ready" if ready else "NotReady"
                why = "yes" if p.name in serving else "no (no address)" if not p.ips else "no (lacks a named port)"
                reason = "-" if ready or p.terminating else reason or ("not ready in its record" if not p.ready and p.readiness_probes else "-")
                rows.append([f"  {p.name}", status, ",".join(map(str, p.ips)) or "<none>", why, reason])
            print_rows(rows)
    try:
        cfg = configuration.load(None, {"health_listen": args.health_listen})
    except UsageError as err:
        print(f"Agent:             <cannot read the configuration: {err}>")
        return 0
    for line in agent_view(svc, cfg, reg.location):
        print(line)
    print("Events:            <none: the registry keeps no history of changes>")
    return 0


def agent_view(svc: Service, cfg: configuration.Config, location: str) -> list[str]:
    """The lines saying what the agent at ``cfg``'s addresses serves of ``svc``."""
    url = f"http://{cfg.health_listen}/status"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            st: dict[str, Any] = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return [f"Agent:             none answers at {cfg.health_listen} ({reason})"]
    health = "healthy" if st.get("healthy") else "NOT healthy"
    lines = [f"Agent:             {cfg.health_listen}: {health}{'' if st.get('ready') else ', first sync pending'}, "
             f"last sync {st.get('lastSync') or 'never'}"]  # fmt: skip
    if st.get("registry") and st["registry"] != location:
        lines.append(f"  Registry:        the agent follows {st['registry']}, not {location}")
    if st.get("registryProblem"):
        lines.append(f"  Registry:        PROBLEM: {st['registryProblem']}")
    if st.get("lastError"):
        lines.append(f"  Last error:      {st['lastError']}")
    if svc.readiness_probe is not None:
        failing = ((st.get("probes") or {}).get("endpoints") or {}).get("failing") or {}
        prefix = f"{svc.ref} "
        down = {k.removeprefix(prefix): v for k, v in failing.items() if k.startswith(prefix)}
        lines.append(f"  Probes:          {len(svc.endpoints) - len(down)} of {len(svc.endpoints)} endpoints pass this host's probes")
        lines.extend(f"  Not ready:       {addr}: {reason}" for addr, reason in sorted(down.items()))
    lines.append(f"  DNS:             {dns_view(svc, cfg)}")
    return lines


def dns_view(svc: Service, cfg: configuration.Config) -> str:
    """What the agent's DNS answers for ``svc``'s name, against what the registry says it should."""
    name = f"{svc.name}.{svc.namespace}.svc.{cfg.cluster_zone}"
    listen = cfg.dns_listen_all()[0]
    host, port = parse_hostport(listen, "dns.listen", default_port=53)
    primary = svc.cluster_ips[0] if svc.cluster_ips else None
    qtype = "CNAME" if svc.type == EXTERNAL_NAME else "AAAA" if primary and family_of(primary) == IPV6 else "A"
    try:
        reply = DNSRecord.parse(DNSRecord.question(name, qtype).send(host, port, timeout=TIMEOUT))
    except (OSError, ValueError) as err:
        return f"{name}: no answer from {format_hostport(host, port)} ({err})"
    got = sorted(str(rr.rdata).rstrip(".") for rr in reply.rr if QTYPE[rr.rtype] == qtype)
    if not got:
        return f"{name}: not published (the agent has not applied it yet, or cannot)"
    if svc.type == CLUSTER_IP:
        want = sorted(str(ip) for ip in svc.cluster_ips if family_of(ip) == family_of(primary)) if primary else []
        if got == want:
            return f"{name} answers {', '.join(got)}: its rules are in the kernel"
        return f"{name} answers {', '.join(got)}, not {', '.join(want) or 'its VIP'}: the agent is behind"
    return f"{name} answers {', '.join(got)}"


__all__ = ["agent_view", "cmd_service_describe", "dns_view", "print_service"]
