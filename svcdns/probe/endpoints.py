"""Readiness probes of explicit endpoints (pure: no clock, no I/O).

A selector-less Service may carry a ``readinessProbe`` (an svcdns extension: its endpoints have no
pod to carry one). Such endpoints have no node, so no agent owns them: every agent probes each of
them itself and applies its own verdicts to its own dataplane and DNS only, as Envoy's and HAProxy's
active health checks do (each proxy checks its upstreams). Nothing is written to the registry.

The probe's ``port`` is a number (that port on each endpoint's address), or the name of one of the
Service's TCP ports, whose target port is used (an endpoint's own ``ports`` override included).

:func:`overlay` is how the verdicts reach the dataplane and DNS: a probed endpoint is ready (and
serving) only while its probe passes and its record says so; an endpoint not probed yet is not ready
(as a pod before its first success). The serving-terminating fallback of
:meth:`~svcdns.model.Service.usable_endpoints` then applies to what is left, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

from ..model import Endpoint, Service
from ..pod import Probe
from ..table import ServiceTable
from .state import ProbeState, first

Key = tuple[str, str]  # a Service's (namespace, name)
EndpointKey = tuple[str, str, str]  # (namespace, Service name, endpoint address)


@dataclass(frozen=True, slots=True)
class Target:
    probe: Probe
    host: str
    port: int


def probed(svc: Service) -> bool:
    """Whether the agent probes ``svc``'s endpoints (the documents refuse a probe beside a selector)."""
    return svc.readiness_probe is not None and not svc.selector


def probe_port(svc: Service, ep: Endpoint) -> int:
    probe = svc.readiness_probe
    assert probe is not None
    if isinstance(probe.port, int):
        return probe.port
    port = next(p for p in svc.ports if p.name == probe.port and p.protocol == "TCP")  # checked on construction
    return ep.target_port(port)


def targets_of(services: Iterable[Service]) -> dict[EndpointKey, Target]:
    """Every endpoint of the probed ``services``, with what to probe and where."""
    out: dict[EndpointKey, Target] = {}
    for svc in services:
        probe = svc.readiness_probe
        if probe is None or svc.selector:
            continue
        for ep in svc.endpoints:
            out[(svc.namespace, svc.name, str(ep.address))] = Target(probe, str(ep.address), probe_port(svc, ep))
    return out


def reconcile_targets(
    states: Mapping[EndpointKey, ProbeState], old: Mapping[EndpointKey, Target], new: Mapping[EndpointKey, Target],
    now: float, draw: Callable[[], float],
) -> dict[EndpointKey, ProbeState]:  # fmt: skip
    """The states for ``new``: an endpoint new to the prober starts as :func:`~.state.first` (not
    ready), one whose probe or port changed starts again keeping its verdict, a gone one is forgotten."""
    out: dict[EndpointKey, ProbeState] = {}
    for key, target in new.items():
        state = states.get(key)
        if state is not None and old.get(key) == target:
            out[key] = state
        else:
            out[key] = first(target.probe, now, draw(), ready=state.ready if state is not None else False)
    return out


def overlay(
    source: ServiceTable, passing: Mapping[Key, AbstractSet[str]], keys: Iterable[Key], onto: ServiceTable | None = None,
) -> ServiceTable:  # fmt: skip
    """``onto`` (default ``source``) with each Service of ``keys`` taken from ``source`` and its
    endpoints' readiness set by the probes: ready and serving only when their address is in
    ``passing[key]`` (and the record says so). A Service not probed, or gone, is put back (or left
    out) as ``source`` has it; the Services not in ``keys`` are left as they are, so a verdict change
    rebuilds its Service alone. The result carries ``source``'s revision."""
    base = source if onto is None else onto
    puts: list[Service] = []
    deletes: list[Key] = []
    for key in keys:
        svc = source.services.get(key)
        if svc is None:
            if key in base:
                deletes.append(key)
            continue
        new = apply(svc, passing.get(key, frozenset())) if probed(svc) else svc
        if base.services.get(key) != new:
            puts.append(new)
    if not puts and not deletes and base.revision == source.revision:
        return base
    return base.replace(puts=puts, deletes=deletes, revision=source.revision)


def apply(svc: Service, passing: AbstractSet[str]) -> Service:
    """``svc`` with the endpoints whose probe does not pass (``passing``: the addresses whose does)
    not ready and not serving."""
    endpoints = tuple(
        ep if str(ep.address) in passing or not (ep.ready or ep.serving) else replace(ep, ready=False, serving=False)
        for ep in svc.endpoints
    )
    return svc if endpoints == svc.endpoints else svc.with_endpoints(endpoints)


__all__ = ["EndpointKey", "Target", "apply", "overlay", "probe_port", "probed", "reconcile_targets", "targets_of"]
