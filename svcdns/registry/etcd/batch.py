"""One etcd transaction for one manifest file (``svcdns apply -f``): the planning, pure.

The registry reads every key the file names (its Services, its pods) and every VIP key; the caller's
plan decides what to write from the objects read; :func:`build_txn` turns those writes into one
transaction that compares the mod revision of each key read (absent keys: version 0, i.e. not
created since) and of each VIP key it claims (absent), and puts the Services (with VIPs allocated
as a single create would), their VIP keys and the pods. A lost compare (another writer between the
read and the commit) writes nothing: the registry reads again and plans again.

etcd bounds a transaction (``--max-txn-ops``, default 128, for its compares and for its writes
each; ``--max-request-bytes``, default 1.5 MiB): a file past either fails before anything is
written, saying so and to split it. A fallback to several transactions would give up the very
promise (all of a file or nothing) without the user knowing; splitting the file keeps it per file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ...errors import UsageError
from ...ipam import Allocator, service_families
from ...model import IPAddress, Service
from ...pod import Pod
from ...table import Key
from ..documents import encode, encode_pod
from .client import Compare, Op
from .keys import Keys

MAX_TXN_OPS = 128  # etcd's --max-txn-ops default
MAX_TXN_BYTES = 1536 * 1024 - 32 * 1024  # etcd's --max-request-bytes default, less room for the framing
_OVERHEAD = 16  # protobuf framing per compare or write, about


@dataclass
class Read:
    """The keys a file's transaction is planned on, as read: each Service and pod (None: absent)
    with its mod revision (0: absent), and the holder of every VIP key."""

    services: dict[Key, tuple[Service | None, int]] = field(default_factory=dict)
    pods: dict[Key, tuple[Pod | None, int]] = field(default_factory=dict)
    vips: dict[IPAddress, str] = field(default_factory=dict)


@dataclass
class Txn:
    compares: list[Compare]
    ops: list[Op]
    services: dict[Key, Service]  # as written, VIPs allocated

    @property
    def size(self) -> int:
        """About the bytes of the request."""
        return sum(len(c.key) + len(c.value or b"") + _OVERHEAD for c in self.compares) + sum(
            len(o.key) + len(o.value or b"") + _OVERHEAD for o in self.ops
        )


def build_txn(keys: Keys, cidrs: list[str], read: Read, services: Mapping[Key, Service],
              pods: Mapping[Key, Pod], source: str) -> Txn:  # fmt: skip
    """The transaction writing ``services`` and ``pods`` (every key among those read) over ``read``;
    raises what the writes cannot be (a VIP taken, an endpoint in a service CIDR, too large)."""
    alloc = Allocator(cidrs)
    for ip, holder in read.vips.items():
        alloc.hold(ip, holder)
    compares = [Compare(keys.service(k), mod=mod) if mod else Compare(keys.service(k), absent=True)
                for k, (_, mod) in read.services.items()]  # fmt: skip
    compares += [Compare(keys.pod(k), mod=mod) if mod else Compare(keys.pod(k), absent=True)
                 for k, (_, mod) in read.pods.items()]  # fmt: skip
    ops: list[Op] = []
    written: dict[Key, Service] = {}
    for key, svc in services.items():
        old = read.services[key][0]
        alloc.check_service(svc)
        out = svc
        if svc.has_vip and old is not None and old.cluster_ips:
            out = svc.with_cluster_ips(old.cluster_ips)  # a Service keeps its VIPs while it exists
        elif svc.has_vip:
            ips = alloc.assign(svc.ref, svc.cluster_ips, service_families(svc, alloc.families()))
            out = svc.with_cluster_ips(ips)
            compares += [Compare(keys.vip(ip), absent=True) for ip in ips]
            ops += [Op(keys.vip(ip), svc.ref.encode()) for ip in ips]
        out.check_endpoint_families()
        ops.append(Op(keys.service(key), encode(out, "json-compact").encode()))
        written[key] = out
    for key, pod in pods.items():
        alloc.check_pod(pod)
        ops.append(Op(keys.pod(key), encode_pod(pod, "json-compact").encode()))
    txn = Txn(compares, ops, written)
    check_size(txn, source)
    return txn


def check_size(txn: Txn, source: str) -> None:
    """Refuse a transaction etcd's default limits would refuse, before anything is written."""
    most = max(len(txn.compares), len(txn.ops))
    if most > MAX_TXN_OPS or txn.size > MAX_TXN_BYTES:
        raise UsageError(
            f"{source} needs one etcd transaction of {len(txn.ops)} writes and {len(txn.compares)} checks "
            f"(about {txn.size // 1024} KiB), past etcd's default limits ({MAX_TXN_OPS} of each, "
            f"{MAX_TXN_BYTES // 1024} KiB): split it into smaller files (each file is applied all or nothing)"
        )


__all__ = ["MAX_TXN_BYTES", "MAX_TXN_OPS", "Read", "Txn", "build_txn", "check_size"]
