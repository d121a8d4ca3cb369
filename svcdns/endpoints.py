"""Pods to endpoints: what Kubernetes' EndpointSlice controller does, as a pure function and an index.

``derive(service, pods)`` gives a Service with a selector its endpoints from the pods of its
namespace whose labels match: ``serving`` = the pod is ready (a probed pod: its record and its
prober's status both say so, :func:`svcdns.pod.readiness`), ``terminating`` = it is being
deleted, ``ready`` = serving and not terminating (always, with ``publishNotReadyAddresses``). A pod
whose node is down (etcd: its agent's node lease expired, :mod:`svcdns.registry.etcd.state`) is not
serving, whatever its record says: the record is kept, so the pod returns with its node. A pod
without an address never matches. A named ``targetPort`` resolves against each pod's own container
ports; a pod that lacks one of the names is left out (it cannot serve that port; svcdns has no
per-port endpoint sets, where Kubernetes would leave it out of that port's slice only). The
endpoint's hostname is the pod's only when the pod's ``subdomain`` names the Service
(``<hostname>.<subdomain>.<ns>.svc.<zone>``). Two pods claiming one address (a stale record beside
its replacement) give one endpoint: the readier one's, then the first by name.

``SelectorIndex`` keeps, per label pair, the Services whose selector holds it; :class:`Derivation`
adds the pods, indexed by label pair too, so that a pod's change touches only the Services that
select its old or its new labels, and deriving a Service reads only the pods of its rarest label:
one pod change at 10k Services costs what its Services cost, not what the registry holds; a node
going down or coming back touches only the Services that select that node's pods, and a status
change (:meth:`Derivation.set_status`) only those selecting its pod, as a pod change would. Both
registries keep one and apply it when they build their table, so downstream a selector Service is
just a Service with endpoints.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet

from .errors import UsageError
from .ipam import service_families
from .labels import Labels, matches
from .model import EXTERNAL_NAME, Endpoint, Service, family_of
from .pod import Pod, PodStatus, readiness

Key = tuple[str, str]
StatusOf = Callable[[Pod], PodStatus | None]


def selects(svc: Service, pod: Pod) -> bool:
    return pod.namespace == svc.namespace and bool(pod.ips) and matches(svc.selector, pod.labels)


def _no_status(pod: Pod) -> PodStatus | None:
    return None


def derive(svc: Service, pods: Iterable[Pod], down: AbstractSet[str] = frozenset(),
           status_of: StatusOf = _no_status, families: tuple[str, ...] | None = None) -> tuple[Endpoint, ...]:  # fmt: skip
    """The endpoints of ``svc`` (which has a selector) from ``pods``, sorted by address; the pods
    of the nodes in ``down`` are not serving; a probed pod's readiness takes ``status_of(pod)``.
    ``families``: the Service's resolved families (:func:`svcdns.ipam.service_families`; None: its
    ``ipFamilies`` as given, () for every family): only these addresses of a dual-stack pod count."""
    wanted = svc.ip_families if families is None else families
    if svc.type == EXTERNAL_NAME:
        return ()  # a CNAME has no endpoints, whatever it selects (Kubernetes ignores the selector)
    out = []
    for pod in pods:
        if not selects(svc, pod):
            continue
        ports = []
        for port in svc.ports:
            if port.target_port_name:
                number = pod.port_named(port.target_port_name, port.protocol)
                if number is None:
                    break
                ports.append((port.name, number))
        else:
            named = tuple(sorted(ports))
            ready_pod = readiness(pod, status_of(pod))[0] if pod.readiness_probes else pod.ready
            serving = ready_pod and pod.node_name not in down
            ready = svc.publish_not_ready_addresses or (serving and not pod.terminating)
            hostname = pod.hostname if pod.subdomain == svc.name else ""
            for ip in pod.ips:
                if wanted and family_of(ip) not in wanted:
                    continue  # a single-stack Service takes its family's address of a dual-stack pod
                # the pod's fields were validated when it was: nothing is checked twice
                out.append(Endpoint.of_pod(ip, ready, serving, pod.terminating, hostname, named, pod.name))
    out.sort(key=lambda e: (e.address.version, e.address, not e.ready, not e.serving, e.terminating, e.pod))
    return tuple(e for i, e in enumerate(out) if i == 0 or out[i - 1].address != e.address)


class SelectorIndex:
    """Label pair -> the Services whose selector holds it, and each Service's selector."""

    def __init__(self) -> None:
        self._by_pair: defaultdict[tuple[str, str], set[Key]] = defaultdict(set)
        self._selectors: dict[Key, Labels] = {}

    def put(self, svc: Service) -> None:
        if self._selectors.get(svc.key) == (svc.selector or None):
            return
        self.remove(svc.key)
        if svc.selector:
            self._selectors[svc.key] = svc.selector
            for pair in svc.selector:
                self._by_pair[pair].add(svc.key)

    def remove(self, key: Key) -> None:
        for pair in self._selectors.pop(key, ()):
            keys = self._by_pair[pair]
            keys.discard(key)
            if not keys:
                del self._by_pair[pair]

    def services_for(self, namespace: str, labels: Labels) -> set[Key]:
        """The Services of ``namespace`` whose selector ``labels`` satisfy."""
        out: set[Key] = set()
        for pair in labels:
            for key in self._by_pair.get(pair, ()):
                if key[0] == namespace and key not in out and matches(self._selectors[key], labels):
                    out.add(key)
        return out

    def affected(self, old: Pod | None, new: Pod | None) -> set[Key]:
        """The Services a pod's change (``None``: created or deleted) may change the endpoints of."""
        out: set[Key] = set()
        for pod in (old, new):
            if pod is not None:
                out |= self.services_for(pod.namespace, pod.labels)
        return out


class Derivation:
    """The live pods and the Services' selectors of one registry: which Services a pod change
    affects, and their endpoints. Pure (the caller passes the time); one owner at a time.

    A pod whose deletion deadline has passed is gone: ``put_pod`` takes it as a deletion, and
    ``expire(now)`` deletes those whose deadline passed since (``next_deadline()`` says when to call it).
    """

    def __init__(self, per_node: bool = False) -> None:
        """``per_node``: a status counts only when written for the pod's own node (etcd, where each
        node's agent writes under its node); else every status is the pod's (files: one host)."""
        self.per_node = per_node
        self.statuses: dict[tuple[str, str, str], PodStatus] = {}  # (node or "", ns, name) -> status
        self.pods: dict[Key, Pod] = {}
        self.index = SelectorIndex()
        self._pods_by_pair: defaultdict[tuple[str, str, str], set[Key]] = defaultdict(set)  # (ns, k, v)
        self._deadlines: dict[Key, float] = {}
        self._pods_by_node: defaultdict[str, set[Key]] = defaultdict(set)
        self.down: frozenset[str] = frozenset()  # the nodes whose pods are not serving
        self._ips: frozenset[str] | None = None  # the pods' addresses, until a pod changes
        # the configured families (the service CIDRs', primary first), set by the registry from its
        # config: what a headless Service's default families resolve against; () = not known
        self.families: tuple[str, ...] = ()

    def pod_ips(self) -> frozenset[str]:
        """Every live pod's addresses (DNS forwards for them): one object while no pod changes."""
        if self._ips is None:
            self._ips = frozenset(str(ip) for pod in self.pods.values() for ip in pod.ips)
        return self._ips

    def put_service(self, svc: Service) -> None:
        self.index.put(svc)

    def remove_service(self, key: Key) -> None:
        self.index.remove(key)

    def put_pod(self, pod: Pod, now: float) -> set[Key]:
        """Take in a created or changed pod; return the keys of the Services to derive again."""
        if pod.gone(now):
            return self.remove_pod(pod.key)
        old = self.pods.get(pod.key)
        if old == pod:
            return set()
        self._forget(old)
        self.pods[pod.key] = pod
        if old is None or old.ips != pod.ips:
            self._ips = None
        for k, v in pod.labels:
            self._pods_by_pair[(pod.namespace, k, v)].add(pod.key)
        if pod.node_name:
            self._pods_by_node[pod.node_name].add(pod.key)
        if pod.deletion_deadline:
            self._deadlines[pod.key] = pod.deletion_deadline
        return self.index.affected(old, pod)

    def remove_pod(self, key: Key) -> set[Key]:
        old = self.pods.pop(key, None)
        self._forget(old)
        if old is not None and old.ips:
            self._ips = None
        return self.index.affected(old, None)

    def _forget(self, pod: Pod | None) -> None:
        if pod is None:
            return
        self._deadlines.pop(pod.key, None)
        if pod.node_name:
            on_node = self._pods_by_node[pod.node_name]
            on_node.discard(pod.key)
            if not on_node:
                del self._pods_by_node[pod.node_name]
        for k, v in pod.labels:
            keys = self._pods_by_pair[(pod.namespace, k, v)]
            keys.discard(pod.key)
            if not keys:
                del self._pods_by_pair[(pod.namespace, k, v)]

    def set_down(self, nodes: Iterable[str]) -> set[Key]:
        """Take the set of nodes that are down now; return the keys of the Services that select a pod
        of a node that went down or came back (only those: the other Services cannot change)."""
        down = frozenset(nodes)
        flipped, self.down = down ^ self.down, down
        out: set[Key] = set()
        for node in flipped:
            for key in self._pods_by_node.get(node, ()):
                pod = self.pods[key]
                out |= self.index.services_for(pod.namespace, pod.labels)
        return out

    def status_of(self, pod: Pod) -> PodStatus | None:
        """The status that counts for ``pod`` (its node's, with ``per_node``)."""
        return self.statuses.get((pod.node_name if self.per_node else "", pod.namespace, pod.name))

    def set_status(self, node: str, key: Key, status: PodStatus | None) -> set[Key]:
        """Take a pod's status as written for ``node`` ("" without ``per_node``; None: deleted);
        return the keys of the Services to derive again: those selecting the pod, if it exists, the
        status is the one that counts for it, and its readiness changed."""
        skey = (node if self.per_node else "", *key)
        old = self.statuses.get(skey)
        if status is None:
            self.statuses.pop(skey, None)
        else:
            self.statuses[skey] = status
        pod = self.pods.get(key)
        if pod is None or not pod.readiness_probes or skey[0] != (pod.node_name if self.per_node else ""):
            return set()
        if readiness(pod, old)[0] == readiness(pod, status)[0]:
            return set()
        return self.index.services_for(pod.namespace, pod.labels)

    def pods_on(self, node: str) -> int:
        """How many live pods name ``node``."""
        return len(self._pods_by_node.get(node, ()))

    def expire(self, now: float) -> set[Key]:
        """Delete the pods whose deadline has passed; return the keys of the Services to derive again."""
        out: set[Key] = set()
        for key in [k for k, deadline in self._deadlines.items() if deadline <= now]:
            out |= self.remove_pod(key)
        return out

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    def selected(self, svc: Service) -> list[Pod]:
        """The pods ``svc`` selects, read from the pods of its rarest label pair."""
        if not svc.selector:
            return []
        candidates = min((self._pods_by_pair.get((svc.namespace, k, v), set()) for k, v in svc.selector), key=len)
        return [p for p in (self.pods[k] for k in candidates) if matches(svc.selector, p.labels)]

    def apply(self, svc: Service) -> Service:
        """``svc`` with its derived endpoints if it has a selector (its VIPs already set, since a
        single-stack Service takes only its family's addresses), else ``svc`` itself."""
        if not svc.selector:
            return svc
        return svc.with_endpoints(derive(svc, self.selected(svc), self.down, self.status_of, self.families_of(svc)))

    def families_of(self, svc: Service) -> tuple[str, ...]:
        """The families whose pod addresses ``svc`` takes: its VIPs' (a ClusterIP Service), else
        what its policy resolves to against :attr:`families` (a headless Service: by default the
        primary family only, as Kubernetes)."""
        if svc.has_vip:
            return svc.ip_families
        try:
            return service_families(svc, self.families)
        except UsageError:
            # RequireDualStack on a single-stack config: writes refuse it (Allocator.check_service);
            # one written by hand takes what the config has rather than failing the whole table
            return self.families


__all__ = ["Derivation", "SelectorIndex", "derive", "selects"]
