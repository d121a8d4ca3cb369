"""``svcdns apply -f`` and ``svcdns delete -f``: Kubernetes manifests into and out of the registry.

svcdns apply -f app.yaml [-f manifests/] [-f -] [--strict]    # creates or updates; one line per object
svcdns delete -f app.yaml [--ignore-not-found]

``apply`` is declarative, as kubectl's: an object is created, configured or unchanged (nothing is
written then); a Service keeps its VIP. It is atomic per file: every document is checked first
(:mod:`svcdns.registry.manifests`), and nothing of a file with an invalid document is written. On
etcd the file is then one transaction (:mod:`svcdns.registry.etcd.batch`): all of it or none, even
if the command dies. On the file registry each write is atomic on its own, and a write refused
part-way (a VIP taken) undoes that file's earlier writes. Services are written first (their VIPs are what the registry may refuse), then the
endpoints of Services without a selector, then pods. A file's EndpointSlices / Endpoints set all of
their Service's endpoints. A directory means its ``*.yaml``, ``*.yml`` and ``*.json`` files, in
name order (not its subdirectories); ``-`` reads standard input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import NotFound, SvcdnsError, UsageError
from ..model import Service, ValidationError
from ..pod import Pod
from ..registry import Registry
from ..registry.manifests import (
    ENDPOINT_SLICE,
    ENDPOINTS,
    POD,
    SERVICE,
    EndpointsObject,
    Manifest,
    ManifestInvalid,
    Object,
    PodObject,
    ServiceObject,
    parse_manifest,
    references,
)
from .objects import registry_of, valid

log = logging.getLogger(__name__)
SUFFIXES = (".yaml", ".yml", ".json")
Undo = Callable[[], object]
Key = tuple[str, str]


class _Unchanged(Exception):  # noqa: N818 - a signal out of a registry update, never an error
    """Raised inside a registry update to leave the object as it is, without writing."""


def register(sub, common: argparse.ArgumentParser) -> None:
    apply = sub.add_parser("apply", parents=[common], help="create or update Services and pods from Kubernetes manifests")
    apply.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-",
                       help="a manifest file, a directory of them, or - for standard input (repeatable)")  # fmt: skip
    apply.add_argument("--strict", action="store_true",
                       help="other kinds (Deployment, ConfigMap ...) and NodePort/LoadBalancer are errors, not skipped")  # fmt: skip
    apply.set_defaults(func=cmd_apply)

    delete = sub.add_parser("delete", parents=[common], help="remove the Services and pods that manifests name")
    delete.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-")
    delete.add_argument("--ignore-not-found", action="store_true", help="an object already gone is no error")
    delete.set_defaults(func=cmd_delete)


def read_sources(paths: list[str]) -> list[tuple[str, bytes]]:
    """(name, bytes) of every manifest file ``-f`` names, in order."""
    out: list[tuple[str, bytes]] = []
    for name in paths:
        if name == "-":
            out.append(("<stdin>", sys.stdin.buffer.read()))
            continue
        path = Path(name)
        try:
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
                if not files:
                    raise UsageError(f"-f {name}: the directory holds no *.yaml, *.yml or *.json file")
                out += [(str(p), p.read_bytes()) for p in files]
            else:
                out.append((name, path.read_bytes()))
        except FileNotFoundError:
            raise UsageError(f"-f {name}: no such file or directory") from None
        except OSError as err:
            raise SvcdnsError(f"-f {name}: cannot read it: {err.strerror or err}") from None
    return out


# ---- apply ---------------------------------------------------------------------------------------------------


def cmd_apply(args) -> int:
    sources = read_sources(args.filename)
    reg = registry_of(args)
    code = 0
    for source, data in sources:
        try:
            manifest = parse_manifest(data, source, args.namespace, strict=args.strict)
        except ManifestInvalid as err:
            print(f"svcdns: error: {err}", file=sys.stderr)
            code = max(code, err.exit_code)
            continue
        for skipped in manifest.skipped:
            print(skipped, file=sys.stderr)
        for warning in manifest.warnings:
            print(f"svcdns: warning: {warning}", file=sys.stderr)
        try:
            lines = apply_manifest(reg, manifest)
        except SvcdnsError as err:
            print(f"svcdns: error: {source}: {err}; nothing of it was applied", file=sys.stderr)
            code = max(code, err.exit_code)
            continue
        for line in lines:
            print(line)
    return code


def apply_manifest(reg: Registry, manifest: Manifest) -> list[str]:
    """Write a checked manifest: one ``resource/name outcome`` line per object, in document order.
    On etcd the whole file is one transaction (:meth:`EtcdRegistry.apply_atomically`); elsewhere a
    write that fails undoes the ones before it and raises."""
    try:
        atomic = getattr(reg, "apply_atomically", None)
        if atomic is not None:
            plans: list[Plan] = []

            def plan(services: Mapping[Key, Service | None], pods: Mapping[Key, Pod | None]):
                plans[:] = [plan_manifest(manifest, services, pods)]
                return plans[0].services, plans[0].pods

            atomic(manifest.source, *reads(manifest), plan)
            return _lines(manifest, plans[0].outcomes)
        return _lines(manifest, _apply_one_by_one(reg, manifest))
    except ValidationError as err:
        raise UsageError(f"invalid {err.field or 'value'}: {err}") from None


# ---- planning (pure): what a file changes, on what the registry holds --------------------------------------


@dataclass
class Plan:
    """What applying one file writes, decided on the objects it names as the registry holds them."""

    outcomes: dict[int, str] = field(default_factory=dict)  # id(object) -> created / configured / unchanged
    services: dict[Key, Service] = field(default_factory=dict)  # to write
    pods: dict[Key, Pod] = field(default_factory=dict)


def _alone(manifest: Manifest) -> dict[Key, list[EndpointsObject]]:
    """The file's EndpointSlices / Endpoints of Services the file does not hold, per Service."""
    alone: dict[Key, list[EndpointsObject]] = {}
    for o in manifest.objects:
        if isinstance(o, EndpointsObject) and not o.merged:
            alone.setdefault((o.namespace, o.service), []).append(o)
    return alone


def reads(manifest: Manifest) -> tuple[list[Key], list[Key]]:
    """The Service keys and the pod keys a file's plan reads (and its transaction compares)."""
    services = [o.key for o in manifest.objects if isinstance(o, ServiceObject)]
    services += [k for k in _alone(manifest) if k not in services]
    return services, [o.key for o in manifest.objects if isinstance(o, PodObject)]


def plan_manifest(manifest: Manifest, services: Mapping[Key, Service | None], pods: Mapping[Key, Pod | None]) -> Plan:
    """The writes of a file, given the current Service and pod of each key :func:`reads` names
    (None: absent); raises what makes the file fail (nothing of it written then)."""
    out = Plan()
    for key, objs in _alone(manifest).items():
        _endpoints_change(objs, services.get(key))  # before anything: their Service exists, without a selector
    for o in manifest.objects:
        if isinstance(o, ServiceObject):
            out.outcomes[id(o)], svc = _service_change(o, services.get(o.key))
            if svc is not None:
                out.services[o.key] = svc
        elif isinstance(o, PodObject):
            out.outcomes[id(o)], pod = _pod_change(o, pods.get(o.key))
            if pod is not None:
                out.pods[o.key] = pod
    for key, objs in _alone(manifest).items():
        result, svc = _endpoints_change(objs, services.get(key))
        out.outcomes.update((id(o), result) for o in objs)
        if svc is not None:
            out.services[key] = svc
    return out


def _service_change(obj: ServiceObject, old: Service | None) -> tuple[str, Service | None]:
    desired = obj.service
    if old is None:
        return "created", desired
    new = desired
    if not desired.selector and not obj.with_endpoints and not old.selector:
        # a Service without a selector keeps the endpoints it has unless the file gives them
        new = valid(lambda: replace(desired, endpoints=old.endpoints))
    return ("unchanged", None) if _same(old, new) else ("configured", new)


def _endpoints_change(objs: list[EndpointsObject], old: Service | None) -> tuple[str, Service | None]:
    first = objs[0]
    if old is None:
        raise NotFound(f"{first.origin}: Service {first.namespace}/{first.service} not found")
    if old.selector:
        raise UsageError(f"{first.origin}: Service {old.ref} has a selector: its endpoints come from its pods")
    endpoints = tuple(ep for o in objs for ep in o.endpoints)
    if old.endpoints == endpoints:
        return "unchanged", None
    try:
        return "configured", old.with_endpoints(endpoints)
    except ValidationError as err:
        raise UsageError(f"{first.origin}: the endpoints do not fit Service {old.ref}: {err}") from None


def _pod_change(obj: PodObject, old: Pod | None) -> tuple[str, Pod | None]:
    # the record is spec: a probed pod's readiness is its prober's status, kept apart, which applying
    # the manifest again never touches (kubectl apply never resets a pod's status either)
    if old == obj.pod:
        return "unchanged", None
    return ("created" if old is None else "configured"), obj.pod


def _lines(manifest: Manifest, outcome: dict[int, str]) -> list[str]:
    by_service = {o.key: outcome[id(o)] for o in manifest.objects if isinstance(o, ServiceObject)}
    lines = []
    for o in manifest.objects:
        result = by_service[(o.namespace, o.service)] if isinstance(o, EndpointsObject) and o.merged else outcome[id(o)]
        lines.append(f"{o.resource}/{_name(o)} {result}")
    return lines


def _name(o: Object) -> str:
    return o.key[1]


def _same(old: Service, new: Service) -> bool:
    """Whether ``new`` asks for what ``old`` is (a VIP the registry allocated is no difference)."""
    if old == new:
        return True
    return new.has_vip and not new.cluster_ips and bool(old.cluster_ips) and old == new.with_cluster_ips(old.cluster_ips)


# ---- one write at a time, undone on failure (the file registry; its own atomicity is per write) ---------------


def _apply_one_by_one(reg: Registry, manifest: Manifest) -> dict[int, str]:
    """Services first (their VIPs are what the registry may refuse), then the endpoints of Services
    without a selector, then pods; a failed write undoes the file's earlier ones."""
    alone = _alone(manifest)
    for key, objs in alone.items():  # before any write: the Services these endpoints belong to exist, without a selector
        _endpoints_change(objs, reg.get(*key))
    outcome: dict[int, str] = {}
    undo: list[Undo] = []
    try:
        for s in (o for o in manifest.objects if isinstance(o, ServiceObject)):
            outcome[id(s)], step = _apply_service(reg, s)
            undo += [step] if step else []
        for key, objs in alone.items():
            result, step = _apply_endpoints(reg, key, objs)
            undo += [step] if step else []
            outcome.update((id(o), result) for o in objs)
        for p in (o for o in manifest.objects if isinstance(o, PodObject)):
            outcome[id(p)], step = _apply_pod(reg, p)
            undo += [step] if step else []
    except (SvcdnsError, ValidationError):
        _undo(undo)
        raise
    return outcome


def _undo(steps: list[Undo]) -> None:
    for step in reversed(steps):
        try:
            step()
        except SvcdnsError as err:
            log.error("could not undo a write of this file: %s", err)


def _apply_service(reg: Registry, obj: ServiceObject) -> tuple[str, Undo | None]:
    before: list[Service] = []

    def change(old: Service) -> Service:
        _, new = _service_change(obj, old)
        if new is None:
            raise _Unchanged
        before[:] = [old]
        return new

    ns, name = obj.key
    try:
        reg.update(ns, name, change)
    except _Unchanged:
        return "unchanged", None
    except NotFound:
        reg.create(obj.service)
        return "created", lambda: reg.delete(ns, name)
    old = before[0]
    return "configured", lambda: reg.update(ns, name, lambda _: old)


def _apply_endpoints(reg: Registry, key: Key, objs: list[EndpointsObject]) -> tuple[str, Undo | None]:
    before: list[Service] = []

    def change(old: Service) -> Service:
        _, new = _endpoints_change(objs, old)
        if new is None:
            raise _Unchanged
        before[:] = [old]
        return new

    try:
        reg.update(*key, change)
    except _Unchanged:
        return "unchanged", None
    old = before[0]
    return "configured", lambda: reg.update(*key, lambda _: old)


def _apply_pod(reg: Registry, obj: PodObject) -> tuple[str, Undo | None]:
    try:
        old: Pod | None = reg.get_pod(*obj.key)
    except NotFound:
        old = None
    result, pod = _pod_change(obj, old)
    if pod is None:
        return result, None
    reg.put_pod(pod)
    if old is None:
        return result, lambda: reg.delete_pod(*pod.key)
    kept = old
    return result, lambda: reg.put_pod(kept)


# ---- delete --------------------------------------------------------------------------------------------------


def cmd_delete(args) -> int:
    sources = read_sources(args.filename)
    reg = registry_of(args)
    code = 0
    for source, data in sources:
        try:
            refs, skipped = references(data, source, args.namespace)
        except ManifestInvalid as err:
            print(f"svcdns: error: {err}", file=sys.stderr)
            code = max(code, err.exit_code)
            continue
        for s in skipped:
            print(s, file=sys.stderr)
        gone = {(r.namespace, r.name) for r in refs if r.resource == SERVICE}
        for ref in refs:
            try:
                if ref.resource == SERVICE:
                    reg.delete(ref.namespace, ref.name)
                elif ref.resource == POD:
                    reg.delete_pod(ref.namespace, ref.name)
                elif ref.resource in (ENDPOINT_SLICE, ENDPOINTS) and (ref.namespace, ref.service) not in gone:
                    reg.update(ref.namespace, ref.service, _without_endpoints)
            except NotFound as err:
                if not args.ignore_not_found:
                    print(f"svcdns: error: {ref.origin}: {err}", file=sys.stderr)
                    code = max(code, err.exit_code)
                continue
            print(f"{ref.resource}/{ref.name} deleted")
    return code


def _without_endpoints(svc: Service) -> Service:
    return svc if svc.selector else svc.with_endpoints(())


__all__ = ["Plan", "apply_manifest", "cmd_apply", "cmd_delete", "plan_manifest", "read_sources", "reads", "register"]
