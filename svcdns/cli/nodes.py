"""``svcdns node ...``: the nodes run by agents on an etcd registry, and their leases.

svcdns node list [-o json|yaml]     # NAME STATUS LEASE PODS
svcdns node rm NAME                 # forget a node that is gone: its pods no longer held not ready
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..registry.contract import Registry
from ..registry.documents import dump
from .registry import print_rows, registry_of

if TYPE_CHECKING:  # imported where it is used: aetcd and gRPC are slow to import
    from ..registry.etcd import EtcdRegistry


def register(sub, common: argparse.ArgumentParser) -> None:
    node = sub.add_parser("node", help="the nodes run by agents (etcd registry) and their leases", aliases=["no"])
    node_sub = node.add_subparsers(dest="action", metavar="ACTION", required=True)
    lst = node_sub.add_parser("list", aliases=["ls"], parents=[common], help="the nodes, their leases and pods")
    lst.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    lst.set_defaults(func=cmd_node_list)
    rm = node_sub.add_parser("rm", aliases=["delete"], parents=[common],
                             help="remove a node whose lease is gone (its pods are then as their records say)")  # fmt: skip
    rm.add_argument("name")
    rm.set_defaults(func=cmd_node_rm)


def _etcd(reg: Registry) -> EtcdRegistry:
    from ..registry.etcd import EtcdRegistry

    if not isinstance(reg, EtcdRegistry):
        raise UsageError(f"nodes exist only with an etcd registry (etcd://host:port/prefix); {reg.location} is a "
                         "directory, served by one host whose agent probes every pod")  # fmt: skip
    return reg


def cmd_node_list(args) -> int:
    reg = _etcd(registry_of(args))
    nodes = reg.list_nodes()
    if args.output in ("json", "yaml"):
        sys.stdout.write(dump({"items": [n.document() for n in nodes]}, args.output))
        return 0
    if not nodes:
        print(f"No nodes ({reg.location}): no agent has registered one.", file=sys.stderr)
        return 0
    rows = [["NAME", "STATUS", "LEASE", "PODS"]]
    rows += [[n.name, "Ready" if n.ready else "NotReady", "-" if n.lease_left is None else f"{n.lease_left}s",
              str(n.pods)] for n in nodes]  # fmt: skip
    print_rows(rows)
    return 0


def cmd_node_rm(args) -> int:
    _etcd(registry_of(args)).delete_node(args.name)
    print(f"node/{args.name} deleted")
    return 0


__all__ = ["register"]
