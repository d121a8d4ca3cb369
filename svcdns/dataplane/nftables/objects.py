"""The plain types of svcdns's nftables table: its objects, their names, and what one Service adds."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ...model import IPV4, IPV6, Service

TABLE = "svcdns"
SETS = ("vips", "hairpin", "service-ips", "endpoints")
FAMILIES = {IPV4: "ip", IPV6: "ip6"}
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class Dnat:
    """A Service port's translation: a uniform pick among ``targets``; with ``affinity`` (seconds,
    ClientIP session affinity) a client keeps its endpoint while it comes back within that time.
    Target *i* is number *i + 1* in the ``endpoints`` map."""

    targets: tuple[tuple[str, int], ...]  # (address, port), in a stable order
    affinity: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """What the chain's rules depend on: a change of anything else is a change of elements."""
        return len(self.targets), self.affinity


@dataclass(frozen=True)
class Chain:
    name: str
    hook: str | None = None  # prerouting, output, postrouting, forward
    kind: str = ""  # nat / filter, for base chains
    priority: int = 0
    rules: tuple[str, ...] = ()  # fixed rules by name (see FIXED_TEXT), for base and helper chains
    dnat: Dnat | None = None  # a Service port chain's draw

    @property
    def base(self) -> bool:
        return self.hook is not None


Key = tuple[str, str, int]  # VIP, protocol, port


@dataclass(frozen=True)
class ServiceObjects:
    """What one Service contributes to a family's table."""

    vip: str
    chains: tuple[Chain, ...]
    service_ips: tuple[tuple[Key, str], ...]  # ((vip, proto, port), chain name)
    hairpin: frozenset[str]  # usable endpoint addresses: 'a . a' elements of the hairpin set

    def endpoint_elements(self):
        """The ``endpoints`` map elements: ((vip, proto, port, number), (address, target port)).
        Derived from the chains' targets when needed rather than stored: 10 per Service adds up."""
        chains = {c.name: c for c in self.chains}
        for key, name in self.service_ips:
            for n, target in enumerate(chains[name].dnat.targets, 1):  # type: ignore[union-attr]
                yield (*key, n), target



def affinity_set(chain: str) -> str:
    """The ClientIP affinity map of a Service port chain: ``aff-<its hash>``."""
    return "aff-" + chain.split("-")[1]


def chain_name(svc: Service, protocol: str, port: int) -> str:
    """``svc-<8 hex>-<ns>/<name>/<proto>/<port>``: stable, readable in ``nft list ruleset``, and
    marked as ours by its prefix."""
    ref = f"{svc.namespace}/{svc.name}/{protocol.lower()}/{port}"
    digest = hashlib.sha256(ref.encode()).hexdigest()[:8]
    return f"svc-{digest}-{ref}"

