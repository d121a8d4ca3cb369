"""VIP allocation over service CIDRs (IPv4 and IPv6): stable, conflict-free, O(1) amortised.

A :class:`Pool` hands out addresses of one CIDR; an :class:`Allocator` holds one pool per family
(the first configured CIDR of a family is used for new allocations; addresses in other configured
CIDRs of that family can still be requested). The allocator is pure in-memory state: the registry
loads it from its allocation store, changes it under the store's lock and writes it back.

Which addresses are handed out
- never the network address, nor (IPv4) the broadcast address;
- the first host address (e.g. ``10.96.0.1``) is reserved: never handed out automatically, so an
  operator can give it to a Service of their own with ``--vip``;
- so is the cluster DNS address, the 10th of the first service CIDR (``10.96.0.10``): the agent
  answers DNS there, and a Service given it automatically would take pods' DNS traffic (it can
  still be requested, for an operator's own kube-dns Service);
- dynamic allocations prefer the upper part of the range and requested VIPs are expected in the
  lower band (the first ``min(max(16, size/16), 256)`` addresses), as Kubernetes does (KEP-3070),
  so an operator choosing fixed VIPs there rarely collides with automatic ones.

Endpoints and pod addresses are never inside the service CIDRs (:meth:`Allocator.check_endpoints`,
:meth:`Allocator.check_pod`): there is nothing behind an address there but a VIP's rules.

Allocation keeps a cursor and a set of used offsets: each allocation tries the next offset, so N
allocations cost O(N) in total, never a scan of the CIDR per allocation.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import SvcdnsError, UsageError
from .model import (
    EXTERNAL_NAME,
    HEADLESS,
    IPV4,
    IPV6,
    PREFER_DUAL_STACK,
    REQUIRE_DUAL_STACK,
    IPAddress,
    Service,
    ValidationError,
    family_of,
)
from .pod import Pod

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_SERVICE_CIDRS = ("10.96.0.0/12",)
CLUSTER_DNS_OFFSET = 10  # the cluster DNS address: the 10th of the first service CIDR, as kubeadm
MAX_POOL_BITS = 20  # a /108 IPv6 or /12 IPv4: 1M addresses; larger ranges are clipped (see parse_cidr)


class AllocationError(SvcdnsError):
    """A VIP could not be allocated (the pool is exhausted)."""


class VIPConflict(UsageError):
    """A requested VIP is outside the service CIDRs or already held."""

    def __init__(self, address: str, reason: str, holder: str | None = None) -> None:
        self.address = address
        self.holder = holder
        super().__init__(f"clusterIP {address}: {reason}")


def parse_cidr(text: str) -> Network:
    """A service CIDR, strictly: ``10.96.0.0/12`` (host bits zero), at least 4 addresses."""
    try:
        net = ipaddress.ip_network(str(text).strip(), strict=True)
    except ValueError as err:
        raise UsageError(f"service CIDR {text!r}: {err}; expected e.g. 10.96.0.0/12 or fd00:96::/108") from None
    if net.num_addresses < 4:
        raise UsageError(f"service CIDR {text!r}: too small; use a prefix of /30 or shorter (IPv6 /126)")
    return net


@dataclass
class Pool:
    """The addresses of one CIDR, by offset from its network address."""

    network: Network
    used: dict[int, str] = field(default_factory=dict)  # offset -> holder ("ns/name")

    def __post_init__(self) -> None:
        bits = self.network.max_prefixlen - self.network.prefixlen
        clipped = bits > MAX_POOL_BITS  # e.g. a /64: only its first 2^20 addresses are used
        self.size = 1 << min(bits, MAX_POOL_BITS)
        self.first = 1  # the network address is never handed out
        # the IPv4 broadcast address neither (it lies outside a clipped range anyway)
        self.last = self.size - 2 if self.network.version == 4 and not clipped else self.size - 1
        self.reserved = {1}  # the first host address: for the cluster DNS service, by request only
        self.band = min(max(16, self.size // 16), 256)
        self._cursor = max(self.band, 2)
        self._base = int(self.network.network_address)

    @property
    def family(self) -> str:
        return IPV4 if self.network.version == 4 else IPV6

    def capacity(self) -> int:
        return self.last - self.first + 1 - len(self.reserved)

    def offset(self, ip: IPAddress) -> int | None:
        if ip not in self.network:
            return None
        off = int(ip) - self._base
        return off if off < self.size else None

    def address(self, offset: int) -> IPAddress:
        return ipaddress.ip_address(self._base + offset)

    def holder(self, ip: IPAddress) -> str | None:
        off = self.offset(ip)
        return None if off is None else self.used.get(off)

    def claim(self, ip: IPAddress, holder: str) -> None:
        """Take a requested address; raise VIPConflict naming the holder if taken."""
        off = self.offset(ip)
        if off is None or not self.first <= off <= self.last:
            if off in (0, self.last + 1) and off is not None:
                raise VIPConflict(str(ip), f"is the network or broadcast address of {self.network}")
            raise VIPConflict(str(ip), f"is outside the service CIDR {self.network}")
        current = self.used.get(off)
        if current is not None and current != holder:
            raise VIPConflict(str(ip), f"is already held by Service {current}", holder=current)
        self.used[off] = holder

    def allocate(self, holder: str) -> IPAddress:
        """Hand out the next free address after the cursor (upper band first, then the lower band)."""
        if len(self.used) - sum(1 for r in self.reserved if r in self.used) >= self.capacity():
            raise AllocationError(
                f"no free VIP left in {self.network} ({self.capacity()} addresses, all held); "
                "delete unused Services or configure a larger service CIDR"
            )
        span = self.last - self.first + 1
        off = self._cursor
        for _ in range(span + 1):
            if off > self.last:
                off = self.first
            if off not in self.used and off not in self.reserved:
                self.used[off] = holder
                self._cursor = off + 1
                return self.address(off)
            off += 1
        raise AllocationError(f"no free VIP left in {self.network}")

    def release(self, ip: IPAddress) -> None:
        off = self.offset(ip)
        if off is not None:
            self.used.pop(off, None)


def cidr_families(cidrs: Sequence[str]) -> list[str]:
    """The families of service CIDRs, each once, the primary (the first CIDR's) first."""
    out: list[str] = []
    for c in cidrs:
        fam = family_of(parse_cidr(c).network_address)
        if fam not in out:
            out.append(fam)
    return out


def service_families(svc: Service, configured: Sequence[str]) -> tuple[str, ...]:
    """The IP families of ``svc``, resolved as Kubernetes' apiserver does against the cluster's
    families (``configured``: those of the service CIDRs, the primary, the first CIDR's, first).

    - ``ipFamilies`` (or requested VIPs) given: those; PreferDualStack / RequireDualStack add the
      other configured family to a single one;
    - none given: PreferDualStack takes every configured family, RequireDualStack both (an error on
      a single-stack config, as the apiserver refuses it), SingleStack or no policy the primary one;
    - except a headless Service without a selector and no policy: every configured family (the
      apiserver makes it RequireDualStack on a dual-stack cluster), so all its explicit endpoints count.

    A ClusterIP Service's VIPs are allocated in these families; a headless Service with a selector
    takes only these families' addresses of its pods (svcdns.endpoints). ``configured`` empty (not
    known) leaves the families as given. Pure: the registry passes its configuration.
    """
    families = list(svc.ip_families)
    if svc.type == EXTERNAL_NAME or not configured:
        return tuple(families)
    policy = svc.ip_family_policy
    if not policy and not families and svc.type == HEADLESS and not svc.selector:
        policy = PREFER_DUAL_STACK
    if policy == REQUIRE_DUAL_STACK and len(configured) < 2:
        raise ValidationError(
            "ipFamilyPolicy", policy, f"needs an IPv4 and an IPv6 service CIDR; only {configured[0]} is configured"
        )
    if policy in (PREFER_DUAL_STACK, REQUIRE_DUAL_STACK):
        if not families:
            return tuple(configured)
        return tuple(families + [f for f in configured if f not in families][: 2 - len(families)])
    if not families:
        return (configured[0],)
    return tuple(families)


class Allocator:
    """Pools for the configured service CIDRs; the first CIDR of each family allocates."""

    def __init__(self, cidrs: list[str] | tuple[str, ...] = DEFAULT_SERVICE_CIDRS) -> None:
        if not cidrs:
            raise UsageError("service CIDRs: at least one is needed, e.g. 10.96.0.0/12")
        self.pools = [Pool(parse_cidr(c)) for c in cidrs]
        if CLUSTER_DNS_OFFSET <= self.pools[0].last:
            self.pools[0].reserved.add(CLUSTER_DNS_OFFSET)
        for i, a in enumerate(self.pools):
            for b in self.pools[i + 1 :]:
                if a.network.version == b.network.version and a.network.overlaps(b.network):
                    raise UsageError(f"service CIDRs {a.network} and {b.network} overlap")
        self.primary_family = self.pools[0].family
        self.holders: dict[str, tuple[IPAddress, ...]] = {}

    @property
    def cidrs(self) -> list[str]:
        return [str(p.network) for p in self.pools]

    def families(self) -> list[str]:
        """The configured families, the primary first (:func:`cidr_families`)."""
        return cidr_families(self.cidrs)

    def _pool_for(self, ip: IPAddress) -> Pool | None:
        for p in self.pools:
            if ip in p.network:
                return p
        return None

    def _allocating_pool(self, family: str) -> Pool:
        for p in self.pools:
            if p.family == family:
                return p
        raise UsageError(f"ipFamilies: {family}: no {family} service CIDR is configured ({', '.join(self.cidrs)})")

    def check_service(self, svc: Service) -> None:
        """Refuse what a Service asks that this configuration cannot give (RequireDualStack on one
        family) and endpoints inside a service CIDR (:meth:`check_endpoints`)."""
        service_families(svc, self.families())
        self.check_endpoints(svc)

    def check_endpoints(self, svc: Service) -> None:
        """Refuse an endpoint inside a service CIDR (another Service's VIP, or an address no host
        has): a ValidationError naming the endpoint and the CIDR."""
        for i, ep in enumerate(svc.endpoints):
            self._outside(f"endpoints[{i}].address", ep.address, "an endpoint")

    def check_pod(self, pod: Pod) -> None:
        """Refuse a pod address inside a service CIDR, as :meth:`check_endpoints`."""
        for i, ip in enumerate(pod.ips):
            self._outside(f"podIPs[{i}]", ip, "a pod's address")

    def _outside(self, field: str, ip: IPAddress, what: str) -> None:
        pool = self._pool_for(ip)
        if pool is not None:
            raise ValidationError(
                field, str(ip), f"is inside the service CIDR {pool.network}, where only VIPs live; {what} must lie outside it"
            )

    def holder(self, ip: IPAddress) -> str | None:
        pool = self._pool_for(ip)
        return pool.holder(ip) if pool else None

    def hold(self, ip: IPAddress, holder: str) -> None:
        """Mark ``ip`` as held by ``holder`` if a configured CIDR holds it (a VIP known to be taken)."""
        pool = self._pool_for(ip)
        if pool is not None:
            pool.claim(ip, holder)

    def start_at_random(self) -> None:
        """Begin each pool's next automatic allocation at a random address of its dynamic band, so
        that writers that cannot see each other's allocations rarely pick the same VIP."""
        for pool in self.pools:
            pool._cursor = random.randint(max(pool.band, 2), pool.last)

    def restore(self, holder: str, ips: tuple[IPAddress, ...]) -> None:
        """Load a persisted allocation. Addresses outside the configured CIDRs are kept for their
        Service (a VIP never changes while its Service exists), just not managed by a pool."""
        for ip in ips:
            pool = self._pool_for(ip)
            if pool is not None:
                pool.claim(ip, holder)
        self.holders[holder] = tuple(ips)

    def assign(
        self, holder: str, requested: tuple[IPAddress, ...] = (), families: tuple[str, ...] = ()
    ) -> tuple[IPAddress, ...]:
        """The VIPs for Service ``holder``: its current ones if they still fit the request, else the
        requested ones (claimed), else new ones, one per family (the primary family by default)."""
        current = self.holders.get(holder, ())
        wanted_families = tuple(families) or (
            tuple(family_of(ip) for ip in requested) if requested else (self.primary_family,)
        )
        if requested:
            if current and current[: len(requested)] == tuple(requested) and len(current) == len(wanted_families):
                return current
        elif current and tuple(family_of(ip) for ip in current) == wanted_families:
            return current
        # check every requested address before changing anything
        for ip in requested:
            pool = self._pool_for(ip)
            if pool is None:
                raise VIPConflict(str(ip), f"is outside the service CIDRs ({', '.join(self.cidrs)})")
            other = pool.holder(ip)
            if other is not None and other != holder:
                raise VIPConflict(str(ip), f"is already held by Service {other}", holder=other)
        for fam in wanted_families:
            self._allocating_pool(fam)
        self.release(holder)
        result: list[IPAddress] = []
        try:
            for i, fam in enumerate(wanted_families):
                if i < len(requested):
                    self._pool_for(requested[i]).claim(requested[i], holder)  # type: ignore[union-attr]
                    result.append(requested[i])
                else:
                    keep = next((ip for ip in current if family_of(ip) == fam), None)
                    pool = self._allocating_pool(fam)
                    if keep is not None and keep in pool.network and pool.holder(keep) is None:
                        pool.claim(keep, holder)
                        result.append(keep)
                    else:
                        result.append(pool.allocate(holder))
        except Exception:
            for ip in result:
                self._pool_for(ip).release(ip)  # type: ignore[union-attr]
            raise
        self.holders[holder] = tuple(result)
        return tuple(result)

    def release(self, holder: str) -> None:
        for ip in self.holders.pop(holder, ()):
            pool = self._pool_for(ip)
            if pool is not None and pool.holder(ip) == holder:
                pool.release(ip)
