"""Talking to etcd: every aetcd and gRPC detail lives here, behind a small client.

- **A private event loop.** aetcd is asyncio; the CLI and the agent are not. The client runs a loop
  in a daemon thread: ``run`` waits for a coroutine on it, ``submit`` starts one there (the watch).
- **One member at a time.** Calls go to one member of the URL; on a connection failure the client
  moves to the next (every member twice per call, a short pause between the rounds). Every call has
  the URL's ``timeout=``.
- **Tokens.** An auth token etcd no longer takes (simple tokens expire after ``--auth-token-ttl``
  idle, 5 min by default) is renewed once per call by authenticating again.
- **Errors.** What aetcd and gRPC raise becomes :class:`~svcdns.errors.RegistryUnavailable`,
  :class:`~svcdns.errors.RegistryAuthFailed` or :class:`RevisionCompacted` here, and nowhere else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import aetcd
import aetcd.exceptions
import aetcd.watcher

from ...addr import format_hostport
from ...errors import RegistryAuthFailed, RegistryUnavailable, UsageError
from .url import EtcdOptions

log = logging.getLogger(__name__)

RANGE_PAGE = 1000  # keys per read: well under gRPC's 4 MiB message limit with 1 MiB documents at most


class RevisionCompacted(RegistryUnavailable):
    """A watch asked for a revision that etcd has compacted away: take a fresh snapshot."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Header:
    """What a response says of the etcd that gave it: its cluster, and its store's revision then."""

    cluster_id: int
    revision: int


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: the key's mod revision is ``mod``, or it is absent, or it holds ``value``."""

    key: bytes
    mod: int | None = None
    absent: bool = False
    value: bytes | None = None


@dataclass(frozen=True, slots=True)
class Op:
    """One write of a transaction: put ``value`` (or delete the key, when ``value`` is None),
    attached to the lease ``lease`` when not 0 (etcd deletes the key when that lease expires)."""

    key: bytes
    value: bytes | None = None
    lease: int = 0


class _AetcdClient(aetcd.Client):
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
        from aetcd import rpc

        target, options = format_hostport(self._host, self._port), list(self._options.items())
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
                    f"etcd at {target}: authentication as {self._username!r} failed: "
                    f"{err.details()} (check the user name in the registry URL and the password in password_file)"
                ) from None
            self.metadata = (("token", resp.token),)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        watch_metadata = (*(self.metadata or ()), ("hasleader", "true"))
        self._watcher = _Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=watch_metadata)
        self._connected.set()

    async def watch_from(self, prefix: bytes, start_revision: int) -> tuple[Any, Header]:
        """aetcd's watch of ``prefix``, and the header of the response that created it."""
        raw = await self.watch_prefix(prefix, start_revision=start_revision)
        return raw, self._watcher.created.pop(raw.watch_id)


class _Watcher(aetcd.watcher.Watcher):
    """aetcd's watcher, keeping the header of each watch's created response (aetcd drops it): the
    only sign that the etcd behind the address is not the one the keys were read from."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.created: dict[int, Header] = {}

    async def _handle_response(self, response: Any) -> None:
        if response.created and self._new_callback is not None:
            self.created[response.watch_id] = Header(response.header.cluster_id, response.header.revision)
        await super()._handle_response(response)


# gRPC shares connections between channels of a process by default, and with them a failed
# connection's backoff: a fresh client would then fail at once for seconds after etcd came back.
# The first retry comes after 100 ms. gRPC also takes "min_reconnect_backoff_ms" as the time it gives
# one connection attempt (TCP and HTTP/2 SETTINGS), so that is set per client to the call timeout:
# a shorter one fails commands against a busy etcd or from a loaded host with "connection attempt
# timed out before receiving SETTINGS frame".
# A member that hangs (a frozen host) keeps its TCP connections open: only unanswered keepalive pings
# tell. gRPC waits "ping_timeout_ms" (default 1 min), not "keepalive_timeout_ms", for the answer, and
# by default sends no more than 2 pings on an idle stream (a watch with no events is one): with the
# two settings below an idle watch on a paused member moves within about 10 s.
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


class EventStream:
    """The events of one watch, as :class:`Event`; it ends with RegistryUnavailable (or
    RevisionCompacted), never quietly. ``header``: what the response creating it said."""

    def __init__(self, raw: Any, endpoint: str, header: Header) -> None:
        self._raw, self._endpoint, self.header = raw, endpoint, header

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            async for ev in self._raw:
                kv = KeyValue(ev.kv.key, ev.kv.value, ev.kv.mod_revision)
                yield Event("put" if ev.kind == "PUT" else "delete", kv)
        except aetcd.exceptions.RevisionCompactedError as err:
            raise RevisionCompacted(f"etcd at {self._endpoint}: {err}") from None
        except (aetcd.exceptions.ClientError, OSError) as err:
            raise RegistryUnavailable(f"etcd at {self._endpoint} unreachable ({err})") from None
        raise RegistryUnavailable(f"etcd at {self._endpoint}: the watch stream ended")

    async def cancel(self) -> None:
        try:
            await asyncio.wait_for(self._raw.cancel(), 1)
        except Exception as err:  # the stream may already be dead; nothing to do about it
            log.debug("etcd: cancelling a watch: %r", err)


class EtcdClient:
    """One connection to an etcd cluster, with failover, token renewal and call timeouts."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._member = 0
        self._client: _AetcdClient | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="svcdns-etcd", daemon=True)
        self._thread.start()

    # ---- the private loop -------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run ``coro`` on the client's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Start ``coro`` on the client's loop (a watch runs there for as long as it lives)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the client's loop, from any thread."""
        self._loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        if self._client is not None:
            self.run(self._drop_client(), 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # ---- members ------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The member this client talks to now (``host:port``); the next one after a failure."""
        return format_hostport(*self.options.endpoints[self._member % len(self.options.endpoints)])

    async def next_member(self) -> None:
        """Leave the current member (its connection closed) for the next one in the URL."""
        await self._drop_client()
        self._member += 1

    def _connection(self) -> _AetcdClient:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> _AetcdClient:
        host, port = self.options.endpoints[self._member % len(self.options.endpoints)]
        kwargs: dict[str, Any] = dict(
            host=host, port=port, username=self.options.username, password=self.options.password,
            timeout=self.options.timeout,
            options={**_GRPC_OPTIONS, "grpc.min_reconnect_backoff_ms": int(self.options.timeout * 1000)},
        )  # fmt: skip
        if self.options.ca_file or self.options.cert_file:
            import grpc

            creds = grpc.ssl_channel_credentials(
                _read(self.options.ca_file), _read(self.options.key_file), _read(self.options.cert_file)
            )
            return _AetcdClient(credentials=creds, **kwargs)
        return _AetcdClient(**kwargs)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 2)
            except Exception as err:  # closing a broken channel may fail in many ways; it is gone either way
                log.debug("etcd: closing a failed client: %r", err)

    async def _call(self, fn: Callable[[_AetcdClient], Coroutine[Any, Any, Any]]) -> Any:
        """``fn(connection)``, failing over to the next member on a connection failure."""
        last: Exception | None = None
        renewed = False
        members = len(self.options.endpoints)
        for attempt in range(2 * members):
            if attempt == members:
                await asyncio.sleep(0.2)  # every member failed once: a short pause, then once more
            try:
                return await asyncio.wait_for(fn(self._connection()), self.options.timeout)
            except aetcd.exceptions.UnauthenticatedError as err:
                if renewed or self.options.username is None:
                    raise RegistryAuthFailed(f"etcd at {self.endpoint}: {err}") from None
                renewed = True
                await self._drop_client()  # the next connection authenticates again
            except _UNAVAILABLE as err:
                last = err
                await self.next_member()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # this call itself is being cancelled
                # gRPC cancels the calls in flight on a channel another task closed (its failover, say a
                # lease refresh finding no leader): this call did not fail, its connection went; again
                last = RegistryUnavailable(f"etcd at {self.endpoint}: the connection was closed under the call")
            except aetcd.exceptions.RevisionCompactedError as err:
                raise RevisionCompacted(f"etcd at {self.endpoint}: {err}") from None
            except aetcd.exceptions.ClientError as err:
                raise RegistryUnavailable(f"etcd at {self.endpoint} unreachable ({err})") from None
        raise RegistryUnavailable(f"etcd at {self.options.members} is unreachable: {last!r}")

    # ---- the calls ------------------------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        resp = await self._call(lambda c: c.get(key))
        return None if resp is None else KeyValue(key, resp.value, resp.mod_revision)

    async def put(self, key: bytes, value: bytes) -> None:
        await self._call(lambda c: c.put(key, value))

    async def compact(self, revision: int) -> None:
        await self._call(lambda c: c.compact(revision))

    async def range(self, prefix: bytes, keys_only: bool = False) -> tuple[Header, list[KeyValue]]:
        """Every key under ``prefix`` at one revision, and the header naming that revision."""
        return await self._call(lambda c: _range(c, prefix, keys_only))

    async def txn(self, compares: list[Compare], ops: list[Op]) -> bool:
        """Apply ``ops`` if every compare holds; whether it did."""

        def build(c: _AetcdClient) -> Coroutine[Any, Any, Any]:
            t = c.transactions
            cmp = []
            for check in compares:
                if check.mod is not None:
                    cmp.append(t.mod(check.key) == check.mod)
                elif check.absent:
                    cmp.append(t.version(check.key) == 0)
                else:
                    cmp.append(t.value(check.key) == check.value)
            success = [t.delete(op.key) if op.value is None else t.put(op.key, op.value, lease=op.lease or None)
                       for op in ops]  # fmt: skip
            return c.transaction(compare=cmp, success=success, failure=[])

        ok, _ = await self._call(build)
        return bool(ok)

    # leases: aetcd has no background keep-alive; the owner of a lease refreshes it from its own loop

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its ID."""
        lease = await self._call(lambda c: c.lease(ttl))
        return int(lease.id)

    async def keep_alive(self, lease_id: int) -> int:
        """Refresh the lease; the seconds it has now, 0 when it is gone (expired, revoked, or etcd
        was wiped)."""
        reply = await self._call(lambda c: c.refresh_lease(lease_id))
        return max(0, int(reply.TTL)) if reply is not None else 0

    async def time_to_live(self, lease_id: int) -> int:
        """The seconds the lease has left, without refreshing it; 0 when it is gone."""
        reply = await self._call(lambda c: c.get_lease_info(lease_id, keys=False))
        return max(0, int(reply.TTL))

    async def watch(self, prefix: bytes, start_revision: int) -> EventStream:
        """The events under ``prefix`` from ``start_revision`` on."""
        raw, header = await self._call(lambda c: c.watch_from(prefix, start_revision))
        return EventStream(raw, self.endpoint, header)


async def _range(client: _AetcdClient, prefix: bytes, keys_only: bool) -> tuple[Header, list[KeyValue]]:
    """A range read in pages (a 10k-Service registry is larger than one gRPC message). aetcd 1.0
    drops ``limit`` and ``revision``, so this builds the request."""
    from aetcd import rpc, utils

    await client.connect()
    end = utils.prefix_range_end(prefix)
    start, kvs = prefix, list[KeyValue]()
    header: Header | None = None
    while True:
        revision = header.revision if header else 0  # the later pages at the first one's revision
        req = rpc.RangeRequest(key=start, range_end=end, limit=RANGE_PAGE, revision=revision, keys_only=keys_only)
        try:
            resp = await client.kvstub.Range(req, timeout=client._timeout, metadata=client.metadata)
        except rpc.AioRpcError as err:
            raise _client_error(err) from None
        header = header or Header(resp.header.cluster_id, resp.header.revision)
        kvs.extend(KeyValue(kv.key, kv.value, kv.mod_revision) for kv in resp.kvs)
        if not resp.more or not resp.kvs:
            return header, kvs
        start = resp.kvs[-1].key + b"\0"


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise UsageError(f"etcd TLS file {path}: {err.strerror}") from None


__all__ = ["Compare", "EtcdClient", "Event", "EventStream", "Header", "KeyValue", "Op", "RevisionCompacted"]
