"""The etcd registry: one view of the Services shared by every host's agent (etcd v3, via aetcd).

Keys, under a prefix (``etcd://host:2379[,host2:2379]/prefix``, default prefix ``/svcdns``):

- ``<prefix>/services/<ns>/<name>``: the Service document (the JSON of ``svcdns service get -o json``),
  its ``clusterIPs`` being the allocated VIPs;
- ``<prefix>/vips/<ip>``: ``<ns>/<name>``, the holder of that VIP;
- ``<prefix>/config``: ``{"serviceCIDRs": [...]}``, written once (create-if-absent), so every host
  allocates from the same CIDRs.

Every write is a transaction: creating a Service puts its document and its VIP keys only if none of
them exists; a document written without a VIP (by hand, with etcdctl) is adopted by whichever agent
or CLI sees it first, in a transaction that compares the document's revision and creates the VIP
keys, so two hosts adopting at once agree on one VIP; endpoint changes compare the document's
revision and retry. An entry that turns invalid keeps its last good version, as with files.

The public methods are synchronous (the CLI and the agent are); they run on a private asyncio loop in
a background thread, which the watch (:mod:`.etcdwatch`) shares.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import threading
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aetcd
import aetcd.exceptions

from ..errors import NotFound, RegistryAuthFailed, RegistryUnavailable, SvcdnsError, UsageError
from ..ipam import DEFAULT_SERVICE_CIDRS, Allocator, VIPConflict
from ..model import IPAddress, Service
from ..table import Key, ServiceTable
from .contract import Snapshot
from .documents import DocumentError, from_document

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/svcdns"
CAS_RETRIES = 200
RANGE_PAGE = 1000  # keys per read: well under gRPC's 4 MiB message limit with 1 MiB documents at most


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 5.0


def hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (as gRPC targets and URLs want it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_url(url: str, **overrides: Any) -> EtcdOptions:
    """``etcd://host[:port][,host[:port]...][/prefix][?cacert=F&cert=F&key=F&username=U&password=P]``."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "etcd" or not parsed.netloc:
        raise UsageError(f"registry {url!r}: expected etcd://host:port[,host:port]/prefix")
    endpoints = []
    for hostport in parsed.netloc.split(","):
        if hostport.startswith("["):  # [IPv6] or [IPv6]:port
            host, _, rest = hostport[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else "" if not rest else "?"
        elif hostport.count(":") == 1:
            host, _, port = hostport.partition(":")
        else:  # a name, an IPv4 address, or a bare IPv6 address: the default port
            host, port = hostport, ""
        try:
            number = int(port) if port else DEFAULT_PORT
        except ValueError:
            number = 0
        if not host or not 0 < number < 65536:
            raise UsageError(f"registry {url!r}: bad host or port in {hostport!r} (expected host, host:port or [IPv6]:port)")
        endpoints.append((host, number))
    query = dict(urllib.parse.parse_qsl(parsed.query))
    unknown = set(query) - {"cacert", "cert", "key", "username", "password", "timeout"}
    if unknown:
        raise UsageError(
            f"registry {url!r}: unknown option(s) {', '.join(sorted(unknown))}; known: cacert, cert, key, username, password, timeout"
        )
    if ("cert" in query) != ("key" in query):
        given, missing = ("cert", "key") if "cert" in query else ("key", "cert")
        raise UsageError(f"registry {url!r}: {given}={query[given]} needs {missing}= too (a certificate and its key)")
    try:
        timeout = float(query.get("timeout", 5.0))
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise UsageError(f"registry {url!r}: timeout={query['timeout']!r} is not a positive number of seconds")
    prefix = "/" + parsed.path.strip("/") if parsed.path.strip("/") else DEFAULT_PREFIX
    opts = dict(
        endpoints=tuple(endpoints),
        prefix=prefix,
        username=query.get("username"),
        password=query.get("password"),
        ca_file=query.get("cacert"),
        cert_file=query.get("cert"),
        key_file=query.get("key"),
        timeout=timeout,
    )
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return EtcdOptions(**opts)


class _Client(aetcd.Client):
    """aetcd's client with two changes to ``connect``:

    - a TLS channel (CA, client cert and key) when ``credentials`` are given; aetcd 1.0 opens
      plain-text channels only;
    - the watch stream asks for a leader (etcd's ``hasleader`` metadata, as clientv3's
      WithRequireLeader and kube-apiserver do): a member cut off from its cluster's quorum then
      ends the stream within a few election timeouts instead of keeping it open with no events, so
      the watch reports the trouble and moves to another member.
    """

    def __init__(self, *args: Any, credentials: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._credentials = credentials
        self._connecting = asyncio.Lock()  # two calls at once must not open two channels

    async def connect(self) -> None:
        async with self._connecting:
            if not self._connected.is_set():
                await self._connect()

    async def _connect(self) -> None:
        import grpc.aio
        from aetcd import rpc, watcher

        target, options = hostport(self._host, self._port), list(self._options.items())
        if self._credentials is not None:
            self.channel = grpc.aio.secure_channel(target, self._credentials, options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options)
        if self._username is not None:
            self.auth_stub = rpc.AuthStub(self.channel)
            try:
                resp = await self.auth_stub.Authenticate(
                    rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout
                )
            except rpc.AioRpcError as err:
                await self.channel.close()
                error = _client_error(err)
                if isinstance(error, aetcd.exceptions.ConnectionFailedError):
                    raise error from None
                raise RegistryAuthFailed(
                    f"etcd at {hostport(self._host, self._port)}: authentication as {self._username!r} failed: "
                    f"{err.details()} (check username= and password= in the registry URL)"
                ) from None
            self.metadata = (("token", resp.token),)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        watch_metadata = (*(self.metadata or ()), ("hasleader", "true"))
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=watch_metadata)
        self._connected.set()


# gRPC shares connections between channels of a process by default, and with them a failed
# connection's backoff: a fresh client would then fail at once for seconds after etcd came back.
# The first retry comes after 100 ms. gRPC also takes "min_reconnect_backoff_ms" as the time it gives
# one connection attempt (TCP and HTTP/2 SETTINGS), so that is set per client to the call timeout:
# at 100 ms a busy etcd or a loaded host failed CLI commands with "connection attempt timed out
# before receiving SETTINGS frame".
# A member that hangs (a frozen host) keeps its TCP connections open: only unanswered keepalive pings
# tell. gRPC waits "ping_timeout_ms" (default 1 min), not "keepalive_timeout_ms", for the answer, and
# by default sends no more than 2 pings on an idle stream (a watch with no events is one): measured
# with a member paused after 35 s of quiet, the watch moved after 10 s with the two settings below
# and after 40 s without the ping limit (never within 45 s without the ping timeout).
_GRPC_OPTIONS = {
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2000,
    "grpc.keepalive_time_ms": 10000,
    "grpc.keepalive_timeout_ms": 5000,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.http2.ping_timeout_ms": 5000,
    "grpc.max_receive_message_length": 64 << 20,
}


def _client_error(err: Any) -> aetcd.exceptions.ClientError:
    """The aetcd exception for a gRPC error from a call made on aetcd's stubs directly, as aetcd's
    own calls raise them (its mapping is private)."""
    from aetcd import rpc

    kind = {
        rpc.StatusCode.UNAVAILABLE: aetcd.exceptions.ConnectionFailedError,
        rpc.StatusCode.DEADLINE_EXCEEDED: aetcd.exceptions.ConnectionFailedError,
        rpc.StatusCode.UNAUTHENTICATED: aetcd.exceptions.UnauthenticatedError,
    }.get(err.code())
    return kind(err.details()) if kind else aetcd.exceptions.ClientError(f"{err.code().name}: {err.details()}")


_UNAVAILABLE = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    asyncio.TimeoutError,
    OSError,
)


@dataclass
class _Entry:
    mod: int  # the document's mod_revision
    service: Service | None  # last good version
    error: str | None = None


class EtcdRegistry:
    kind = "etcd"

    def __init__(self, url: str, service_cidrs: list[str] | None = None, **options: Any) -> None:
        self.options = parse_url(url, **options)
        self.url = url
        self._cidrs_arg = list(service_cidrs) if service_cidrs else None
        self.cidrs: list[str] | None = None
        self.prefix = self.options.prefix.encode()
        self.entries: dict[Key, _Entry] = {}
        self.vips: dict[IPAddress, str] = {}
        self.table = ServiceTable()
        self.revision = 0
        self.synced = False  # read in full at least once
        self.dirty: set[Key] | None = None  # keys to recompute; None: all of them
        self.rebuilt: set[Key] = set()  # the keys the last rebuild recomputed
        self._endpoint = 0
        self._client: aetcd.Client | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="svcdns-etcd", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"EtcdRegistry({self.url!r})"

    # ---- plumbing: the private loop, the client, failover --------------------------------------------

    def run(self, coro: Coroutine, timeout: float | None = None) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def close(self) -> None:
        if self._client is not None:
            self.run(self._client.close(), 5)
            self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _new_client(self) -> aetcd.Client:
        host, port = self._member()
        kwargs = dict(host=host, port=port, username=self.options.username, password=self.options.password,
                      timeout=self.options.timeout,
                      options={**_GRPC_OPTIONS, "grpc.min_reconnect_backoff_ms": int(self.options.timeout * 1000)})  # fmt: skip
        if self.options.ca_file or self.options.cert_file:
            import grpc

            def read(path: str | None) -> bytes | None:
                if not path:
                    return None
                try:
                    with open(path, "rb") as f:
                        return f.read()
                except OSError as err:
                    raise UsageError(f"etcd TLS file {path}: {err.strerror}") from None

            creds = grpc.ssl_channel_credentials(read(self.options.ca_file), read(self.options.key_file),
                                                 read(self.options.cert_file))  # fmt: skip
            return _Client(credentials=creds, **kwargs)
        return _Client(**kwargs)

    def _member(self) -> tuple[str, int]:
        return self.options.endpoints[self._endpoint % len(self.options.endpoints)]

    @property
    def endpoint(self) -> str:
        """The member this registry talks to now (``host:port``); the next one after a failure."""
        return hostport(*self._member())

    async def client(self) -> aetcd.Client:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    async def call(self, fn: Callable[[aetcd.Client], Coroutine]) -> Any:
        """Run ``fn(client)``; on a connection failure try the next endpoint (every endpoint twice).
        An auth token that etcd no longer takes (simple tokens expire after ``--auth-token-ttl``
        idle, 5 min by default) is renewed once by authenticating again."""
        last: Exception | None = None
        renewed = False
        for attempt in range(2 * len(self.options.endpoints)):
            if attempt == len(self.options.endpoints):
                await asyncio.sleep(0.2)  # every endpoint failed once: a short pause, then once more
            client = await self.client()
            try:
                return await asyncio.wait_for(fn(client), self.options.timeout)
            except aetcd.exceptions.UnauthenticatedError as err:
                if renewed or self.options.username is None:
                    raise RegistryAuthFailed(f"etcd at {self.endpoint}: {err}") from None
                renewed = True
                await self._drop_client()  # the next client authenticates again
            except _UNAVAILABLE as err:
                last = err
                await self.next_member()
        hosts = ", ".join(hostport(h, p) for h, p in self.options.endpoints)
        raise RegistryUnavailable(f"etcd at {hosts} is unreachable: {last!r}")

    async def next_member(self) -> None:
        """Leave the current member (its client closed) for the next one in the URL."""
        await self._drop_client()
        self._endpoint += 1

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 2)
            except Exception as err:  # closing a broken channel may fail in many ways; it is gone either way
                log.debug("etcd: closing a failed client: %r", err)

    # ---- keys ---------------------------------------------------------------------------------------

    def service_key(self, key: Key) -> bytes:
        return self.prefix + f"/services/{key[0]}/{key[1]}".encode()

    def vip_key(self, ip: IPAddress) -> bytes:
        return self.prefix + f"/vips/{ip}".encode()

    def parse_key(self, raw: bytes) -> tuple[str, Any] | None:
        rel = raw[len(self.prefix) :].decode(errors="replace")
        parts = rel.strip("/").split("/")
        if parts[0] == "services" and len(parts) == 3:
            return "service", (parts[1], parts[2])
        if parts[0] == "vips" and len(parts) == 2:
            try:
                return "vip", ipaddress.ip_address(parts[1])
            except ValueError:
                return None
        if parts == ["config"]:
            return "config", None
        return None

    # ---- reading ------------------------------------------------------------------------------------

    async def read_all(self) -> int:
        """Read every key under the prefix at one revision into the state; return that revision."""
        revision, kvs = await self.call(lambda c: self._range(c, self.prefix + b"/"))
        self.dirty = None  # everything is recomputed
        seen: set[Key] = set()
        self.vips.clear()
        for kv in kvs:
            self.apply_put(kv.key, kv.value, kv.mod_revision, seen)
        for key in set(self.entries) - seen:
            del self.entries[key]
        return revision

    @staticmethod
    async def _range(client: aetcd.Client, prefix: bytes, keys_only: bool = False) -> tuple[int, list]:
        """Every key under ``prefix`` at one revision, in pages (a 10k-Service registry is larger than
        one gRPC message). aetcd 1.0 drops ``limit`` and ``revision``, so this builds the request."""
        from aetcd import rpc, utils

        await client.connect()
        end = utils.prefix_range_end(prefix)
        start, revision, kvs = prefix, 0, []
        while True:
            req = rpc.RangeRequest(key=start, range_end=end, limit=RANGE_PAGE, revision=revision, keys_only=keys_only)
            try:
                resp = await client.kvstub.Range(req, timeout=client._timeout, metadata=client.metadata)
            except rpc.AioRpcError as err:
                raise _client_error(err) from None
            revision = revision or resp.header.revision
            kvs.extend(resp.kvs)
            if not resp.more or not resp.kvs:
                return revision, kvs
            start = resp.kvs[-1].key + b"\0"

    def apply_put(self, raw_key: bytes, value: bytes, mod: int, seen: set[Key] | None = None) -> Key | None:
        parsed = self.parse_key(raw_key)
        if parsed is None:
            return None
        kind, what = parsed
        if kind == "config":
            try:
                self.cidrs = list(json.loads(value)["serviceCIDRs"])
            except (ValueError, KeyError, TypeError):
                log.error('etcd: %s is not {"serviceCIDRs": [...]}; ignored', raw_key.decode())
            return None
        if kind == "vip":
            old_holder = self.vips.get(what)
            self.vips[what] = value.decode(errors="replace")
            self._touch_holder(old_holder)
            self._touch_holder(self.vips[what])
            return None
        if seen is not None:
            seen.add(what)
        self._touch(what)
        source = raw_key.decode(errors="replace")
        old = self.entries.get(what)
        try:
            doc = json.loads(value)
            svc = from_document(doc, source)
            if svc.key != what:
                raise DocumentError(
                    source, "name", f"{svc.namespace}/{svc.name}", f"does not match its key ({what[0]}/{what[1]})"
                )
            self.entries[what] = _Entry(mod, svc)
        except (DocumentError, ValueError) as err:
            message = str(err) if isinstance(err, DocumentError) else f"{source}: not valid JSON: {err}"
            if old is None or old.error != message:
                log.error("registry: %s%s", message, "; keeping its last good version" if old and old.service else "")
            self.entries[what] = _Entry(mod, old.service if old else None, message)
        return what

    def apply_delete(self, raw_key: bytes) -> Key | None:
        parsed = self.parse_key(raw_key)
        if parsed is None:
            return None
        kind, what = parsed
        if kind == "vip":
            self._touch_holder(self.vips.pop(what, None))
            return None
        if kind == "service":
            self.entries.pop(what, None)
            self._touch(what)
            return what
        return None

    def _touch(self, key: Key) -> None:
        if self.dirty is not None:
            self.dirty.add(key)

    def _touch_holder(self, holder: str | None) -> None:
        if holder:
            ns, _, name = holder.partition("/")
            self._touch((ns, name))

    def rebuild(self, revision: int) -> bool:
        """Recompute the Services of the keys touched since the last rebuild; True if the table changed."""
        keys = set(self.entries) | set(self.table.services) if self.dirty is None else self.dirty
        self.synced = self.synced or self.dirty is None  # None: after a full read
        self.dirty = set()
        self.rebuilt = keys
        self.revision = max(self.revision, revision)
        puts, deletes = [], []
        for key in keys:
            svc = self._effective(key)
            if svc is None:
                if key in self.table:
                    deletes.append(key)
            elif self.table.get(*key) != svc:
                puts.append(svc)
        if not puts and not deletes:
            return False
        self.table = self.table.replace(puts, deletes, self.revision)
        return True

    def _effective(self, key: Key) -> Service | None:
        """What the table holds for ``key``: the entry's last good version once it has its VIPs, or
        (when its VIPs are held by another Service) what the table had before."""
        entry = self.entries.get(key)
        svc = entry.service if entry else None
        if entry is None or svc is None or (svc.has_vip and not svc.cluster_ips):
            return None  # gone, never good, or waiting to be adopted
        conflict = next((ip for ip in svc.cluster_ips if self.vips.get(ip, svc.ref) != svc.ref), None)
        if conflict is not None:
            entry.error = f"{self.options.prefix}/services/{key[0]}/{key[1]}: clusterIP {conflict} is held by Service {self.vips[conflict]}"
            return self.table.get(*key)
        return svc

    def current(self) -> Snapshot:
        errors = {f"{self.options.prefix}/services/{k[0]}/{k[1]}": e.error for k, e in self.entries.items() if e.error}
        return Snapshot(self.revision, self.table, errors, self.synced)

    def snapshot(self) -> Snapshot:
        return self.run(self._snapshot())

    async def _snapshot(self) -> Snapshot:
        revision = await self.read_all()
        if await self.reconcile():
            revision = await self.read_all()
        self.rebuild(revision)
        return self.current()

    # ---- VIPs: adoption of documents without one, and garbage VIP keys ---------------------------------------

    async def ensure_cidrs(self) -> list[str]:
        if self.cidrs is None:
            resp = await self.call(lambda c: c.get(self.prefix + b"/config"))
            if resp is not None:
                self.apply_put(self.prefix + b"/config", resp.value, resp.mod_revision)
        if self.cidrs is None:
            wanted = self._cidrs_arg or list(DEFAULT_SERVICE_CIDRS)
            Allocator(wanted)  # validate before writing
            doc = json.dumps({"serviceCIDRs": wanted}).encode()
            key = self.prefix + b"/config"
            await self.call(lambda c: c.transaction(compare=[c.transactions.version(key) == 0],
                                                    success=[c.transactions.put(key, doc)], failure=[]))  # fmt: skip
            resp = await self.call(lambda c: c.get(key))
            self.apply_put(key, resp.value, resp.mod_revision)
        assert self.cidrs is not None
        return self.cidrs

    def allocator(self) -> Allocator:
        alloc = Allocator(self.cidrs or list(DEFAULT_SERVICE_CIDRS))
        held: dict[str, list[IPAddress]] = {}
        for ip, holder in self.vips.items():
            held.setdefault(holder, []).append(ip)
        for holder, ips in held.items():
            try:
                alloc.restore(holder, tuple(sorted(ips, key=lambda a: a.version)))
            except VIPConflict as err:
                log.error("etcd: %s", err)
        return alloc

    async def reconcile(self, only: set[Key] | None = None) -> bool:
        """Adopt documents without VIPs and delete VIP keys whose Service is gone (among ``only``, or
        all); True if it wrote. Adoptions run concurrently: a first start over 10k hand-written
        documents is bound by round trips."""
        pending = [(k, e) for k, e in sorted(self.entries.items() if only is None else
                                             ((k, self.entries[k]) for k in only if k in self.entries))
                   if e.service and e.service.has_vip and not e.service.cluster_ips and not e.error]  # fmt: skip
        orphans = [ip for ip, holder in self.vips.items() if tuple(holder.partition("/")[::2]) not in self.entries
                   and (only is None or tuple(holder.partition("/")[::2]) in only)]  # fmt: skip
        if not pending and not orphans:
            return False
        await self.ensure_cidrs()
        alloc = self.allocator()
        writes = []
        for key, entry in pending:
            svc = entry.service
            assert svc is not None
            try:
                ips = alloc.assign(svc.ref, (), svc.ip_families)
            except SvcdnsError as err:
                entry.error = f"{self.options.prefix}/services/{key[0]}/{key[1]}: {err}"
                log.error("registry: %s", entry.error)
                continue
            adopted = svc.with_cluster_ips(ips)
            writes.append(self._txn(
                [("mod", self.service_key(key), entry.mod)] + [("absent", self.vip_key(ip), 0) for ip in ips],
                [("put", self.service_key(key), _doc(adopted))] + [("put", self.vip_key(ip), svc.ref.encode()) for ip in ips],
            ))  # fmt: skip
        for ip in orphans:
            holder = self.vips[ip]
            ns, _, name = holder.partition("/")
            writes.append(self._txn([("absent", self.service_key((ns, name)), 0), ("value", self.vip_key(ip), holder.encode())],
                                    [("delete", self.vip_key(ip), None)]))  # fmt: skip
        limit = asyncio.Semaphore(32)

        async def bounded(coro: Coroutine) -> bool:
            async with limit:
                return await coro

        done = await asyncio.gather(*(bounded(w) for w in writes))
        log.info("registry: adopted or collected %d of %d entries", sum(done), len(writes))
        return True

    async def _txn(self, compares: list[tuple[str, bytes, Any]], ops: list[tuple[str, bytes, Any]]) -> bool:
        def build(c: aetcd.Client):
            t = c.transactions
            cmp = []
            for kind, key, value in compares:
                if kind == "mod":
                    cmp.append(t.mod(key) == value)
                elif kind == "absent":
                    cmp.append(t.version(key) == 0)
                elif kind == "value":
                    cmp.append(t.value(key) == value)
            success = [t.put(k, v) if kind == "put" else t.delete(k) for kind, k, v in ops]
            return c.transaction(compare=cmp, success=success, failure=[])

        ok, _ = await self.call(build)
        return bool(ok)

    # ---- writing (the CLI) ---------------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Service:
        snap = self.snapshot()
        svc = snap.table.get(namespace, name)
        if svc is None:
            entry = self.entries.get((namespace, name))
            if entry and entry.error:
                raise SvcdnsError(f"Service {namespace}/{name} is not valid: {entry.error}")
            raise NotFound(f"Service {namespace}/{name} not found in {self.url}")
        return svc

    def create(self, svc: Service) -> Service:
        return self.run(self._create(svc))

    async def _create(self, svc: Service) -> Service:
        await self.ensure_cidrs()
        if svc.has_vip and not svc.cluster_ips:
            out = await self._create_at_random(svc)
            if out is not None:
                return out
        for _ in range(CAS_RETRIES):
            # the Service's key and the VIP keys (names only): not the whole registry
            if await self.call(lambda c: c.get(self.service_key(svc.key))) is not None:
                raise UsageError(f"Service {svc.ref} already exists in {self.url}; remove it first")
            _, vip_keys = await self.call(lambda c: self._range(c, self.prefix + b"/vips/", keys_only=True))
            alloc = Allocator(self.cidrs or list(DEFAULT_SERVICE_CIDRS))
            for kv in vip_keys:
                parsed = self.parse_key(kv.key)
                if parsed is not None and parsed[0] == "vip" and alloc._pool_for(parsed[1]) is not None:
                    alloc._pool_for(parsed[1]).claim(parsed[1], "?")
            out, compares, ops = svc, [("absent", self.service_key(svc.key), 0)], []
            if svc.has_vip:
                try:
                    ips = alloc.assign(svc.ref, svc.cluster_ips, svc.ip_families)
                except VIPConflict as err:
                    if err.holder != "?":
                        raise
                    held = await self.call(lambda c, e=err: c.get(self.vip_key(ipaddress.ip_address(e.address))))
                    holder = held.value.decode() if held is not None else "another Service"
                    raise VIPConflict(err.address, f"is already held by Service {holder}", holder=holder) from None
                out = svc.with_cluster_ips(ips)
                out.check_endpoint_families()
                compares += [("absent", self.vip_key(ip), 0) for ip in ips]
                ops += [("put", self.vip_key(ip), svc.ref.encode()) for ip in ips]
            ops.append(("put", self.service_key(svc.key), _doc(out)))
            if await self._txn(compares, ops):
                return out
            await asyncio.sleep(random.uniform(0, 0.02))  # lost a race for a VIP: look again
        raise SvcdnsError(f"could not create {svc.ref}: too much contention in {self.url}")

    async def _create_at_random(self, svc: Service) -> Service | None:
        """One try without reading the VIP keys (a range read of 10k keys costs ~100 ms): random
        addresses from the dynamic band, claimed by the same create-if-absent transaction. In a
        sparse CIDR it nearly always wins (10k Services in a /12: 1 try in 100 hits a held VIP);
        None when it lost (a held VIP, or the Service exists), and the caller reads and allocates."""
        alloc = Allocator(self.cidrs or list(DEFAULT_SERVICE_CIDRS))
        for pool in alloc.pools:
            pool._cursor = random.randint(max(pool.band, 2), pool.last)
        ips = alloc.assign(svc.ref, (), svc.ip_families)
        out = svc.with_cluster_ips(ips)
        out.check_endpoint_families()
        compares = [("absent", self.service_key(svc.key), 0)] + [("absent", self.vip_key(ip), 0) for ip in ips]
        ops = [("put", self.vip_key(ip), svc.ref.encode()) for ip in ips] + [("put", self.service_key(svc.key), _doc(out))]
        return out if await self._txn(compares, ops) else None

    def update(self, namespace: str, name: str, change: Callable[[Service], Service]) -> Service:
        return self.run(self._update((namespace, name), change))

    async def _update(self, key: Key, change: Callable[[Service], Service]) -> Service:
        skey = self.service_key(key)
        for _ in range(CAS_RETRIES):
            resp = await self.call(lambda c: c.get(skey))
            if resp is None:
                raise NotFound(f"Service {key[0]}/{key[1]} not found in {self.url}")
            try:
                svc = from_document(json.loads(resp.value), skey.decode())
            except (DocumentError, ValueError) as err:
                raise SvcdnsError(f"{err}; fix the entry before changing it with the CLI") from None
            changed = change(svc)
            if changed.has_vip and svc.cluster_ips:
                changed = changed.with_cluster_ips(svc.cluster_ips)
                changed.check_endpoint_families()
            if await self._txn([("mod", skey, resp.mod_revision)], [("put", skey, _doc(changed))]):
                return changed
            await asyncio.sleep(random.uniform(0, 0.01))  # another writer won: re-read and retry
        raise SvcdnsError(f"could not update {key[0]}/{key[1]}: too much contention in {self.url}")

    def delete(self, namespace: str, name: str) -> None:
        self.run(self._delete((namespace, name)))

    async def _delete(self, key: Key) -> None:
        skey = self.service_key(key)
        for _ in range(CAS_RETRIES):
            resp = await self.call(lambda c: c.get(skey))
            if resp is None:
                raise NotFound(f"Service {key[0]}/{key[1]} not found in {self.url}")
            ips: list[IPAddress] = []
            try:
                ips = list(from_document(json.loads(resp.value)).cluster_ips)
            except (DocumentError, ValueError):
                pass  # a broken document: delete it all the same; its VIP keys are collected as orphans
            holder = f"{key[0]}/{key[1]}".encode()
            compares = [("mod", skey, resp.mod_revision)]
            ops: list[tuple[str, bytes, Any]] = [("delete", skey, None)]
            for ip in ips:
                compares.append(("value", self.vip_key(ip), holder))
                ops.append(("delete", self.vip_key(ip), None))
            if await self._txn(compares, ops):
                return
            if ips and await self._txn([("mod", skey, resp.mod_revision)], [("delete", skey, None)]):
                return  # the VIP keys were not ours (repaired by hand): leave them to the collector
        raise SvcdnsError(f"could not delete {key[0]}/{key[1]}: too much contention in {self.url}")

    def watch(self, **options: Any):
        from .etcdwatch import EtcdWatcher

        return EtcdWatcher(self, **options)


def _doc(svc: Service) -> bytes:
    return json.dumps(svc.to_dict(), separators=(",", ":")).encode()
