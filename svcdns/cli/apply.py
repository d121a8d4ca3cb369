"""``svcdns apply -f`` and ``svcdns delete -f``: Kubernetes manifests into and out of the registry.

svcdns apply -f app.yaml [-f manifests/] [-f -] [--strict]    # creates or updates; one line per object
svcdns delete -f app.yaml [--ignore-not-found]

``apply`` is declarative, as kubectl's: an object is created, configured or unchanged (nothing is
written then); a Service keeps its VIP. It is atomic per file: every document is checked first
(:mod:`svcdns.registry.manifests`), and nothing of a file with an invalid document is written; a
write the registry refuses part-way (a VIP taken, the registry gone) undoes that file's earlier
writes. Services are written first (their VIPs are what the registry may refuse), then the
endpoints of Services without a selector, then pods. A file's EndpointSlices / Endpoints set all of
their Service's endpoints. A directory means its ``*.yaml``, ``*.yml`` and ``*.json`` files, in
name order (not its subdirectories); ``-`` reads standard input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..errors import NotFound, SvcdnsError, UsageError
from ..model import Service, ValidationError
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
    A write that fails undoes the ones before it and raises."""
    services = [o for o in manifest.objects if isinstance(o, ServiceObject)]
    pods = [o for o in manifest.objects if isinstance(o, PodObject)]
    alone: dict[tuple[str, str], list[EndpointsObject]] = {}
    for o in manifest.objects:
        if isinstance(o, EndpointsObject) and not o.merged:
            alone.setdefault((o.namespace, o.service), []).append(o)
    for key in alone:  # before any write: the Services these endpoints belong to exist, without a selector
        svc = reg.get(*key)
        if svc.selector:
            first = alone[key][0]
            raise UsageError(f"{first.origin}: Service {svc.ref} has a selector: its endpoints come from its pods")

    outcome: dict[int, str] = {}
    undo: list[Undo] = []
    try:
        for s in services:
            outcome[id(s)], step = _apply_service(reg, s)
            undo += [step] if step else []
        for key, objs in alone.items():
            result, step = _apply_endpoints(reg, key, objs)
            undo += [step] if step else []
            outcome.update((id(o), result) for o in objs)
        for p in pods:
            outcome[id(p)], step = _apply_pod(reg, p)
            undo += [step] if step else []
    except (SvcdnsError, ValidationError) as err:
        _undo(undo)
        if isinstance(err, ValidationError):
            raise UsageError(f"invalid {err.field or 'value'}: {err}") from None
        raise
    by_service = {o.key: outcome[id(o)] for o in services}
    lines = []
    for o in manifest.objects:
        result = by_service[(o.namespace, o.service)] if isinstance(o, EndpointsObject) and o.merged else outcome[id(o)]
        lines.append(f"{o.resource}/{_name(o)} {result}")
    return lines


def _name(o: Object) -> str:
    return o.key[1]


def _undo(steps: list[Undo]) -> None:
    for step in reversed(steps):
        try:
            step()
        except SvcdnsError as err:
            log.error("could not undo a write of this file: %s", err)


def _same(old: Service, new: Service) -> bool:
    """Whether ``new`` asks for what ``old`` is (a VIP the registry allocated is no difference)."""
    if old == new:
        return True
    return new.has_vip and not new.cluster_ips and bool(old.cluster_ips) and old == new.with_cluster_ips(old.cluster_ips)


def _apply_service(reg: Registry, obj: ServiceObject) -> tuple[str, Undo | None]:
    desired = obj.service
    before: list[Service] = []

    def change(old: Service) -> Service:
        new = desired
        if not desired.selector and not obj.with_endpoints and not old.selector:
            # a Service without a selector keeps the endpoints it has unless the file gives them
            new = valid(lambda: replace(desired, endpoints=old.endpoints))
        if _same(old, new):
            raise _Unchanged
        before[:] = [old]
        return new

    ns, name = desired.key
    try:
        reg.update(ns, name, change)
    except _Unchanged:
        return "unchanged", None
    except NotFound:
        reg.create(desired)
        return "created", lambda: reg.delete(ns, name)
    old = before[0]
    return "configured", lambda: reg.update(ns, name, lambda _: old)


def _apply_endpoints(reg: Registry, key: tuple[str, str], objs: list[EndpointsObject]) -> tuple[str, Undo | None]:
    endpoints = [ep for o in objs for ep in o.endpoints]
    before: list[Service] = []

    def change(old: Service) -> Service:
        if old.selector:
            raise UsageError(f"{objs[0].origin}: Service {old.ref} has a selector: its endpoints come from its pods")
        if old.endpoints == tuple(endpoints):
            raise _Unchanged
        before[:] = [old]
        try:
            return old.with_endpoints(endpoints)
        except ValidationError as err:
            raise UsageError(f"{objs[0].origin}: the endpoints do not fit Service {old.ref}: {err}") from None

    try:
        reg.update(*key, change)
    except _Unchanged:
        return "unchanged", None
    old = before[0]
    return "configured", lambda: reg.update(*key, lambda _: old)


def _apply_pod(reg: Registry, obj: PodObject) -> tuple[str, Undo | None]:
    pod = obj.pod
    try:
        old = reg.get_pod(*pod.key)
    except NotFound:
        old = None
    # the record is spec: a probed pod's readiness is its prober's status, kept apart, which applying
    # the manifest again never touches (kubectl apply never resets a pod's status either)
    if old == pod:
        return "unchanged", None
    reg.put_pod(pod)
    if old is None:
        return "created", lambda: reg.delete_pod(*pod.key)
    kept = old
    return "configured", lambda: reg.put_pod(kept)


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


__all__ = ["apply_manifest", "cmd_apply", "cmd_delete", "read_sources", "register"]
