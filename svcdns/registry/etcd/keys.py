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
  lease key is back. Pods whose ``nodeName`` has no record (no agent runs there) are unaffected.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from ...model import IPAddress
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

    def vip(self, ip: IPAddress) -> bytes:
        return self.vips + str(ip).encode()

    def source(self, key: Key) -> str:
        """How errors name a Service's entry."""
        return f"{self.prefix}/services/{key[0]}/{key[1]}"

    def parse(self, raw: bytes) -> tuple[str, Key | IPAddress | str | None] | None:
        """``("service", (ns, name))``, ``("pod", (ns, name))``, ``("vip", ip)``, ``("node", name)``,
        ``("lease", name)``, ``("config", None)``, or None for a key of no meaning."""
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
        if parts == ["config"]:
            return "config", None
        return None


def node_record(name: str, ttl: int) -> bytes:
    """The value of a node's record."""
    return json.dumps({"name": name, "leaseTTL": ttl}).encode()


def lease_of(value: bytes) -> int:
    """The lease ID a liveness key holds (0 when it holds none: written by hand)."""
    try:
        return max(0, int(value))
    except ValueError:
        return 0


__all__ = ["Keys", "lease_of", "node_record"]
