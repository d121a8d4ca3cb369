"""What an etcd registry holds: the key schema (pure).

The key schema, under a prefix (default ``/svcdns``):

- ``<prefix>/services/<ns>/<name>``: the Service document (the JSON of ``svcdns service get -o json``),
  its ``clusterIPs`` being the allocated VIPs;
- ``<prefix>/vips/<ip>``: ``<ns>/<name>``, the holder of that VIP;
- ``<prefix>/pods/<ns>/<name>``: a Pod document (``svcdns pod get -o json``); a Service with a
  selector gets its endpoints from them (:mod:`svcdns.endpoints`), and a pod change rebuilds only
  the Services whose selectors match its old or new labels;
- ``<prefix>/config``: ``{"serviceCIDRs": [...]}``, written once (create-if-absent), so every host
  allocates from the same CIDRs;
- ``<prefix>/nodes/<node>``: ``{"name": ..., "leaseTTL": ...}``, the node record, written by the
  node's agent when it takes a lease and kept after: this node is run by an agent (Kubernetes' Node);
- ``<prefix>/leases/<node>``: the ID of the agent's etcd lease (decimal), attached to that lease, so
  etcd deletes it when the lease expires (Kubernetes' kube-node-lease Lease). A node with a record
  and no lease key is down: its pods are not serving (:meth:`Derivation.set_down`) until its
  lease key is back. Pods whose ``nodeName`` has no record (no agent runs there) are unaffected;
- ``<prefix>/status/<node>/<ns>/<name>``: ``{"ready": false, "reason": "HTTP 503"}`` (``reason``
  left out when ready), the verdict of a probed pod as the prober of ``<node>`` last wrote it, only
  when it changed, attached to that node's lease: it goes with the lease (a dead node's statuses
  vanish) and the agent writes all of them again with a new lease. A probed pod's readiness takes the
  status under its own ``nodeName`` (none: not ready yet); one without a pod record, or under
  another node, is ignored. The node's agent deletes the statuses of the pods it no longer probes.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from ...model import IPAddress, ValidationError
from ...pod import PodStatus
from ...table import Key


@dataclass(frozen=True, slots=True)
class Keys:
    """The key schema under one prefix."""

    prefix: str

    @property
    def root(self) -> bytes:
        """Every key of the registry starts with this."""
        return self.prefix.encode() + b"/"

    @property
    def config(self) -> bytes:
        return self.root + b"config"

    @property
    def vips(self) -> bytes:
        return self.root + b"vips/"

    def service(self, key: Key) -> bytes:
        return self.root + f"services/{key[0]}/{key[1]}".encode()

    @property
    def pods(self) -> bytes:
        return self.root + b"pods/"

    def pod(self, key: Key) -> bytes:
        return self.pods + f"{key[0]}/{key[1]}".encode()

    @property
    def nodes(self) -> bytes:
        return self.root + b"nodes/"

    def node(self, name: str) -> bytes:
        return self.nodes + name.encode()

    @property
    def leases(self) -> bytes:
        return self.root + b"leases/"

    def lease(self, name: str) -> bytes:
        return self.leases + name.encode()

    @property
    def statuses(self) -> bytes:
        return self.root + b"status/"

    def node_statuses(self, node: str) -> bytes:
        return self.statuses + f"{node}/".encode()

    def status(self, node: str, key: Key) -> bytes:
        return self.node_statuses(node) + f"{key[0]}/{key[1]}".encode()

    def vip(self, ip: IPAddress) -> bytes:
        return self.vips + str(ip).encode()

    def source(self, key: Key) -> str:
        """How errors name a Service's entry."""
        return f"{self.prefix}/services/{key[0]}/{key[1]}"

    def parse(self, raw: bytes) -> tuple[str, Key | tuple[str, str, str] | IPAddress | str | None] | None:
        """``("service", (ns, name))``, ``("pod", (ns, name))``, ``("vip", ip)``, ``("node", name)``,
        ``("lease", name)``, ``("status", (node, ns, name))``, ``("config", None)``, or None for a key
        of no meaning."""
        if not raw.startswith(self.root):
            return None
        parts = raw[len(self.root) :].decode(errors="replace").strip("/").split("/")
        if parts[0] in ("services", "pods") and len(parts) == 3:
            return parts[0].rstrip("s"), (parts[1], parts[2])
        if parts[0] == "vips" and len(parts) == 2:
            try:
                return "vip", ipaddress.ip_address(parts[1])
            except ValueError:
                return None
        if parts[0] in ("nodes", "leases") and len(parts) == 2 and parts[1]:
            return parts[0].rstrip("s"), parts[1]
        if parts[0] == "status" and len(parts) == 4 and all(parts[1:]):
            return "status", (parts[1], parts[2], parts[3])
        if parts == ["config"]:
            return "config", None
        return None


def node_record(name: str, ttl: int) -> bytes:
    """The value of a node's record."""
    return json.dumps({"name": name, "leaseTTL": ttl}).encode()


def status_value(status: PodStatus) -> bytes:
    """The value of a pod's status key."""
    return json.dumps({"ready": status.ready, **({"reason": status.reason} if status.reason else {})}).encode()


def status_of(value: bytes) -> PodStatus | None:
    """The status a status key holds; None when it holds none (written by hand: ignored)."""
    try:
        doc = json.loads(value)
        return PodStatus(doc["ready"], doc.get("reason", ""))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, ValidationError):
        return None


def lease_of(value: bytes) -> int:
    """The lease ID a liveness key holds (0 when it holds none: written by hand)."""
    try:
        return max(0, int(value))
    except ValueError:
        return 0


__all__ = ["Keys", "lease_of", "node_record", "status_of", "status_value"]
