"""The etcd registry: one view of the Services shared by every host's agent (etcd v3).

Every write is a transaction. Creating a Service puts its document and its VIP keys only if none of
them exists; a document written without a VIP (by hand, with etcdctl) is adopted by whichever agent
or CLI sees it first, in a transaction that compares the document's revision and creates the VIP
keys, so two hosts adopting at once agree on one VIP; endpoint changes compare the document's
revision and retry. VIP keys whose Service is gone are collected the same way.

The public methods are synchronous (the CLI and the agent are); they run on the client's loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from typing import Any

from ...errors import NotFound, SvcdnsError, UsageError
from ...ipam import DEFAULT_SERVICE_CIDRS, Allocator, VIPConflict, service_families
from ...model import IPAddress, Service
from ...pod import Pod, PodStatus
from ...table import Key, ServiceTable
from ..contract import Snapshot
from ..documents import DocumentError, decode, decode_pod, encode, encode_pod
from .batch import Read, build_txn
from .client import Compare, EtcdClient, Op
from .lease import NodeLease
from .nodes import NodeStatus, node_statuses, read_leases, remove_node
from .state import EtcdState, Keys
from .statuses import read_statuses, write_statuses
from .url import parse_url, redact
from .watch import EtcdWatch

log = logging.getLogger(__name__)

CAS_RETRIES = 200
APPLY_RETRIES = 10  # a file's transaction: each try reads the file's keys and every VIP key again
ADOPT_CONCURRENCY = 32  # a first start over 10k hand-written documents is bound by round trips


class EtcdRegistry:
    kind = "etcd"

    def __init__(self, url: str, service_cidrs: list[str] | None = None, password: str | None = None) -> None:
        self.options = parse_url(url, password)
        self.url = url
        self.keys = Keys(self.options.prefix)
        self.state = EtcdState(self.keys)
        self.client = EtcdClient(self.options)
        self._cidrs_arg = list(service_cidrs) if service_cidrs else None
        self._status_lease: NodeLease | None = None  # the node lease statuses are written on

    def __repr__(self) -> str:
        return f"EtcdRegistry({self.location!r})"

    @property
    def location(self) -> str:
        """The registry URL, its password shown as ``***``."""
        return redact(self.url)

    @property
    def endpoint(self) -> str:
        """The member this registry talks to now (``host:port``)."""
        return self.client.endpoint

    @property
    def table(self) -> ServiceTable:
        return self.state.table

    def close(self) -> None:
        self.client.close()

    # ---- reading ------------------------------------------------------------------------------------

    def current(self) -> Snapshot:
        """What is known now, without asking etcd."""
        return self.state.current()

    def snapshot(self) -> Snapshot:
        self.client.run(self.resync())
        return self.current()

    async def read_all(self) -> int:
        """Read every key under the prefix at one revision into the state; return that revision."""
        header, kvs = await self.client.range(self.keys.root)
        self.state.begin_full_read(header.revision, header.cluster_id)
        for kv in kvs:
            self.state.apply_put(kv.key, kv.value, kv.mod_revision)
        self.state.end_full_read()
        return header.revision

    async def resync(self) -> bool:
        """Read everything, adopt what needs a VIP (and read again if that wrote), rebuild the
        table; True if it changed."""
        revision = await self.read_all()
        if await self.adopt():
            revision = await self.read_all()
        return self.state.rebuild(revision)

    # ---- VIPs: adoption of documents without one, and garbage VIP keys ---------------------------------

    async def ensure_cidrs(self) -> list[str]:
        """The service CIDRs recorded in etcd, recording ours (or the default) if none are."""
        key = self.keys.config
        if self.state.cidrs is None:
            kv = await self.client.get(key)
            if kv is not None:
                self.state.apply_put(key, kv.value, kv.mod_revision)
        if self.state.cidrs is None:
            wanted = self._cidrs_arg or list(DEFAULT_SERVICE_CIDRS)
            Allocator(wanted)  # validate before writing
            doc = json.dumps({"serviceCIDRs": wanted}).encode()
            await self.client.txn([Compare(key, absent=True)], [Op(key, doc)])
            kv = await self.client.get(key)
            if kv is not None:
                self.state.apply_put(key, kv.value, kv.mod_revision)
        if self.state.cidrs is None:
            raise SvcdnsError(f"{key.decode(errors='replace')} holds no service CIDRs; fix or delete it")
        return self.state.cidrs

    async def adopt(self, only: Iterable[Key] | None = None) -> bool:
        """Give VIPs to documents without them and delete VIP keys whose Service is gone (among
        ``only``, or all); True if it wrote."""
        pending, orphans = self.state.pending(only), self.state.orphans(only)
        if not pending and not orphans:
            return False
        await self.ensure_cidrs()
        alloc = self.state.allocator()
        writes: list[Coroutine[Any, Any, bool]] = []
        for key, entry in pending:
            svc = entry.service
            assert svc is not None
            try:
                ips = alloc.assign(svc.ref, (), service_families(svc, alloc.families()))
            except SvcdnsError as err:
                self.state.refuse(key, f"{self.keys.source(key)}: {err}")
                log.error("registry: %s", entry.error)
                continue
            adopted = svc.with_cluster_ips(ips)
            skey = self.keys.service(key)
            writes.append(self.client.txn(
                [Compare(skey, mod=entry.mod)] + [Compare(self.keys.vip(ip), absent=True) for ip in ips],
                [Op(skey, _value(adopted))] + [Op(self.keys.vip(ip), svc.ref.encode()) for ip in ips],
            ))  # fmt: skip
        for ip in orphans:
            holder = self.state.vips[ip]
            ns, _, name = holder.partition("/")
            writes.append(self.client.txn(
                [Compare(self.keys.service((ns, name)), absent=True), Compare(self.keys.vip(ip), value=holder.encode())],
                [Op(self.keys.vip(ip))],
            ))  # fmt: skip
        limit = asyncio.Semaphore(ADOPT_CONCURRENCY)

        async def bounded(coro: Coroutine[Any, Any, bool]) -> bool:
            async with limit:
                return await coro

        done = await asyncio.gather(*(bounded(w) for w in writes))
        log.info("registry: adopted or collected %d of %d entries", sum(done), len(writes))
        return True

    # ---- writing (the CLI) ---------------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Service:
        snap = self.snapshot()
        svc = snap.table.get(namespace, name)
        if svc is None:
            entry = self.state.entries.get((namespace, name))
            if entry and entry.error:
                raise SvcdnsError(f"Service {namespace}/{name} is not valid: {entry.error}")
            raise NotFound(f"Service {namespace}/{name} not found in {self.location}")
        return svc

    def create(self, svc: Service) -> Service:
        return self.client.run(self._create(svc))

    async def _create(self, svc: Service) -> Service:
        cidrs = await self.ensure_cidrs()
        Allocator(cidrs).check_service(svc)
        if svc.has_vip and not svc.cluster_ips:
            out = await self._create_at_random(svc, cidrs)
            if out is not None:
                return out
        skey = self.keys.service(svc.key)
        for _ in range(CAS_RETRIES):
            # the Service's key and the VIP keys (names only): not the whole registry
            if await self.client.get(skey) is not None:
                raise UsageError(f"Service {svc.ref} already exists in {self.location}; remove it first")
            _, vip_keys = await self.client.range(self.keys.vips, keys_only=True)
            alloc = Allocator(cidrs)
            for kv in vip_keys:
                parsed = self.keys.parse(kv.key)
                if parsed is not None and parsed[0] == "vip" and not isinstance(parsed[1], tuple | str | None):
                    alloc.hold(parsed[1], "?")
            out, compares, ops = svc, [Compare(skey, absent=True)], []
            if svc.has_vip:
                try:
                    ips = alloc.assign(svc.ref, svc.cluster_ips, service_families(svc, alloc.families()))
                except VIPConflict as err:
                    if err.holder != "?":
                        raise
                    raise await self._held(err) from None
                out = svc.with_cluster_ips(ips)
                out.check_endpoint_families()
                compares += [Compare(self.keys.vip(ip), absent=True) for ip in ips]
                ops += [Op(self.keys.vip(ip), svc.ref.encode()) for ip in ips]
            ops.append(Op(skey, _value(out)))
            if await self.client.txn(compares, ops):
                return out
            await asyncio.sleep(random.uniform(0, 0.02))  # lost a race for a VIP: look again
        raise SvcdnsError(f"could not create {svc.ref}: too much contention in {self.location}")

    async def _held(self, err: VIPConflict) -> VIPConflict:
        """The conflict, naming the Service that holds the VIP (read from its key)."""
        kv = await self.client.get(self.keys.vips + err.address.encode())
        holder = kv.value.decode(errors="replace") if kv is not None else "another Service"
        return VIPConflict(err.address, f"is already held by Service {holder}", holder=holder)

    async def _create_at_random(self, svc: Service, cidrs: list[str]) -> Service | None:
        """One try without reading the VIP keys (a range read of 10k keys costs ~100 ms): random
        addresses from the dynamic band, claimed by the same create-if-absent transaction. In a
        sparse CIDR it nearly always wins (10k Services in a /12: 1 try in 100 hits a held VIP);
        None when it lost (a held VIP, or the Service exists), and the caller reads and allocates."""
        alloc = Allocator(cidrs)
        alloc.start_at_random()
        ips = alloc.assign(svc.ref, (), service_families(svc, alloc.families()))
        out = svc.with_cluster_ips(ips)
        out.check_endpoint_families()
        skey = self.keys.service(svc.key)
        compares = [Compare(skey, absent=True)] + [Compare(self.keys.vip(ip), absent=True) for ip in ips]
        ops = [Op(self.keys.vip(ip), svc.ref.encode()) for ip in ips] + [Op(skey, _value(out))]
        return out if await self.client.txn(compares, ops) else None

    def update(self, namespace: str, name: str, change: Callable[[Service], Service]) -> Service:
        return self.client.run(self._update((namespace, name), change))

    async def _update(self, key: Key, change: Callable[[Service], Service]) -> Service:
        skey = self.keys.service(key)
        for _ in range(CAS_RETRIES):
            kv = await self.client.get(skey)
            if kv is None:
                raise NotFound(f"Service {key[0]}/{key[1]} not found in {self.location}")
            try:
                svc = decode(kv.value, self.keys.source(key), fmt="json")
            except DocumentError as err:
                raise SvcdnsError(f"{err}; fix the entry before changing it with the CLI") from None
            changed = change(svc)
            Allocator(await self.ensure_cidrs()).check_service(changed)
            if changed.has_vip and svc.cluster_ips:
                changed = changed.with_cluster_ips(svc.cluster_ips)
                changed.check_endpoint_families()
            if await self.client.txn([Compare(skey, mod=kv.mod_revision)], [Op(skey, _value(changed))]):
                return changed
            await asyncio.sleep(random.uniform(0, 0.01))  # another writer won: re-read and retry
        raise SvcdnsError(f"could not update {key[0]}/{key[1]}: too much contention in {self.location}")

    def delete(self, namespace: str, name: str) -> None:
        self.client.run(self._delete((namespace, name)))

    async def _delete(self, key: Key) -> None:
        skey = self.keys.service(key)
        for _ in range(CAS_RETRIES):
            kv = await self.client.get(skey)
            if kv is None:
                raise NotFound(f"Service {key[0]}/{key[1]} not found in {self.location}")
            ips: list[IPAddress] = []
            try:
                ips = list(decode(kv.value, self.keys.source(key), fmt="json").cluster_ips)
            except DocumentError:
                pass  # a broken document: delete it all the same; its VIP keys are collected as orphans
            holder = f"{key[0]}/{key[1]}".encode()
            compares = [Compare(skey, mod=kv.mod_revision)]
            ops = [Op(skey)]
            for ip in ips:
                compares.append(Compare(self.keys.vip(ip), value=holder))
                ops.append(Op(self.keys.vip(ip)))
            if await self.client.txn(compares, ops):
                return
            if ips and await self.client.txn([Compare(skey, mod=kv.mod_revision)], [Op(skey)]):
                return  # the VIP keys were not ours (repaired by hand): leave them to the collector
        raise SvcdnsError(f"could not delete {key[0]}/{key[1]}: too much contention in {self.location}")

    def apply_atomically(self, source: str, service_keys: list[Key], pod_keys: list[Key],
                         plan: Callable[[Mapping[Key, Service | None], Mapping[Key, Pod | None]],
                                        tuple[Mapping[Key, Service], Mapping[Key, Pod]]]) -> None:  # fmt: skip
        """Write one manifest file in one transaction (:mod:`.batch`): read the keys it names, let
        ``plan`` decide the writes, commit them all if none of those keys changed since; else
        read and plan again, at most APPLY_RETRIES times."""
        self.client.run(self._apply_atomically(source, service_keys, pod_keys, plan))

    async def _apply_atomically(self, source: str, service_keys: list[Key], pod_keys: list[Key], plan: Any) -> None:
        cidrs = await self.ensure_cidrs()
        for attempt in range(APPLY_RETRIES):
            read = Read()
            for key in service_keys:
                kv = await self.client.get(self.keys.service(key))
                read.services[key] = (self._service_of(key, kv), kv.mod_revision if kv else 0)
            for key in pod_keys:
                kv = await self.client.get(self.keys.pod(key))
                pod = self._pod_of(key, kv)
                read.pods[key] = (pod if pod is None or not pod.gone(time.time()) else None, kv.mod_revision if kv else 0)
            _, vip_kvs = await self.client.range(self.keys.vips)
            for kv in vip_kvs:
                parsed = self.keys.parse(kv.key)
                if parsed is not None and parsed[0] == "vip" and not isinstance(parsed[1], tuple | str | None):
                    read.vips[parsed[1]] = kv.value.decode(errors="replace")
            services, pods = plan({k: v[0] for k, v in read.services.items()}, {k: v[0] for k, v in read.pods.items()})
            if not services and not pods:
                return  # every object unchanged: nothing to commit
            txn = build_txn(self.keys, cidrs, read, services, pods, source)
            if await self.client.txn(txn.compares, txn.ops):
                return
            log.info("registry: %s: a key it read changed before its commit; reading again (try %d)", source, attempt + 1)
            await asyncio.sleep(random.uniform(0, 0.05))
        raise SvcdnsError(f"{source}: its keys kept changing under it ({APPLY_RETRIES} tries) in {self.location}; "
                          "nothing of it was applied: try again")  # fmt: skip

    def _service_of(self, key: Key, kv: Any) -> Service | None:
        if kv is None:
            return None
        try:
            return decode(kv.value, self.keys.source(key), fmt="json")
        except DocumentError as err:
            raise SvcdnsError(f"{err}; fix the entry before changing it with the CLI") from None

    def watch(self, retry_interval: float = 0.2, max_backoff: float = 5.0, batch_window: float = 0.005) -> EtcdWatch:
        return EtcdWatch(self, retry_interval=retry_interval, max_backoff=max_backoff, batch_window=batch_window)


    # ---- pods -----------------------------------------------------------------------------------------------

    def list_pods(self, namespace: str | None = None) -> list[Pod]:
        """The pods (of ``namespace``) not gone, read from etcd now."""
        self.client.run(self._read_pods())
        now = time.time()
        return [e.pod for k, e in sorted(self.state.pods.items())
                if e.pod and not e.pod.gone(now) and (not namespace or k[0] == namespace)]  # fmt: skip

    async def _read_pods(self) -> None:
        _, kvs = await self.client.range(self.keys.pods)
        self.state.pods.clear()
        for kv in kvs:
            self.state.apply_put(kv.key, kv.value, kv.mod_revision)

    def pod_errors(self) -> dict[str, str]:
        return {self.keys.pod(k).decode(errors="replace"): e.error for k, e in self.state.pods.items() if e.error}

    def get_pod(self, namespace: str, name: str) -> Pod:
        kv = self.client.run(self.client.get(self.keys.pod((namespace, name))))
        pod = self._pod_of((namespace, name), kv)
        if pod is None or pod.gone(time.time()):
            raise NotFound(f"pod {namespace}/{name} not found in {self.location}")
        return pod

    def _pod_of(self, key: Key, kv: Any) -> Pod | None:
        if kv is None:
            return None
        try:
            return decode_pod(kv.value, self.keys.pod(key).decode(errors="replace"), fmt="json")
        except DocumentError as err:
            raise SvcdnsError(f"{err}; fix the entry before changing it with the CLI") from None

    def put_pod(self, pod: Pod) -> bool:
        async def put() -> bool:
            Allocator(await self.ensure_cidrs()).check_pod(pod)
            key = self.keys.pod(pod.key)
            for _ in range(CAS_RETRIES):
                kv = await self.client.get(key)
                compare = Compare(key, absent=True) if kv is None else Compare(key, mod=kv.mod_revision)
                if await self.client.txn([compare], [Op(key, encode_pod(pod, "json-compact").encode())]):
                    return kv is None
                await asyncio.sleep(random.uniform(0, 0.01))
            raise SvcdnsError(f"could not write pod {pod.ref}: too much contention in {self.location}")

        return self.client.run(put())

    def update_pod(self, namespace: str, name: str, change: Callable[[Pod], Pod]) -> Pod:
        async def update() -> Pod:
            key = self.keys.pod((namespace, name))
            for _ in range(CAS_RETRIES):
                kv = await self.client.get(key)
                pod = self._pod_of((namespace, name), kv)
                if kv is None or pod is None or pod.gone(time.time()):
                    raise NotFound(f"pod {namespace}/{name} not found in {self.location}")
                changed = change(pod)
                Allocator(await self.ensure_cidrs()).check_pod(changed)
                if await self.client.txn([Compare(key, mod=kv.mod_revision)], [Op(key, encode_pod(changed, "json-compact").encode())]):
                    return changed
                await asyncio.sleep(random.uniform(0, 0.01))
            raise SvcdnsError(f"could not update pod {namespace}/{name}: too much contention in {self.location}")

        return self.client.run(update())

    def delete_pod(self, namespace: str, name: str) -> None:
        async def delete() -> None:
            key = self.keys.pod((namespace, name))
            for _ in range(CAS_RETRIES):
                kv = await self.client.get(key)
                if kv is None:
                    raise NotFound(f"pod {namespace}/{name} not found in {self.location}")
                if await self.client.txn([Compare(key, mod=kv.mod_revision)], [Op(key)]):
                    return
            raise SvcdnsError(f"could not delete pod {namespace}/{name}: too much contention in {self.location}")

        self.client.run(delete())

    # ---- pods' statuses: the prober's verdicts, per node, on the node's lease (keys.py) -----------------------

    def pod_statuses(self, namespace: str | None = None) -> dict[Key, PodStatus]:
        """The status of each pod (of ``namespace``) not gone, as its own node last wrote it."""
        pods = self.list_pods(namespace)
        found = self.client.run(read_statuses(self.client, self.keys))
        return {p.key: s for p in pods if (s := found.get((p.node_name, p.namespace, p.name))) is not None}

    def write_statuses_on(self, lease: NodeLease | None) -> None:
        """Write the statuses of ``lease``'s node on it (the agent's lease, held by its own registry)."""
        self._status_lease = lease

    def set_pod_statuses(self, changes: Mapping[Key, PodStatus | None]) -> set[Key]:
        """Write this node's pods' statuses (None: delete) on its lease, only those that differ from
        what was written under it; the keys written."""
        if self._status_lease is None:
            raise SvcdnsError("no node lease to write pod statuses on: only a node's agent writes them")
        return self.client.run(write_statuses(self.client, self.keys, self._status_lease, changes))

    def prune_pod_statuses(self, keep: Collection[Key]) -> int:
        """Delete this node's statuses of the pods not in ``keep`` (those it probes); how many."""
        lease = self._status_lease
        if lease is None:
            return 0
        return len(self.set_pod_statuses({k: None for k in lease.booked() if k not in keep}))

    async def collect_gone(self) -> None:
        """Delete the pod keys whose grace period ended (compare-and-delete: whoever sees it first)."""
        now = time.time()
        gone = [(k, e.mod) for k, e in self.state.pods.items() if e.pod and e.pod.gone(now) and not e.error]
        for key, mod in gone:
            if await self.client.txn([Compare(self.keys.pod(key), mod=mod)], [Op(self.keys.pod(key))]):
                log.info("registry: pod %s/%s deleted: its grace period ended", *key)


    # ---- nodes: each agent's lease (lease.py), what `svcdns node` shows (nodes.py) ---------------------------

    def hold_node(self, node: str, ttl: int) -> NodeLease:
        """Take and keep refreshing ``node``'s lease on this registry's loop, until ``release``."""
        state = self.state  # read on the loop the watch writes it on: no lock needed
        lease = NodeLease(self.client, self.keys, node, ttl,
                          seen=lambda: (node in state.nodes, state.live.get(node, 0)) if state.synced else None)  # fmt: skip
        lease.task = self.client.submit(lease.run())
        return lease

    def list_nodes(self) -> list[NodeStatus]:
        nodes, leases, left = self.client.run(read_leases(self.client, self.keys))
        return node_statuses(nodes, leases, left, self.list_pods())

    def delete_node(self, name: str) -> None:
        self.client.run(remove_node(self.client, self.keys, name, self.location))


def _value(svc: Service) -> bytes:
    return encode(svc, "json-compact").encode()


__all__ = ["EtcdRegistry"]
