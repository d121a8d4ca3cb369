"""The DNS server contract: what the agent may rely on."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..table import ServiceTable


@runtime_checkable
class DNS(Protocol):
    """Answers for a ServiceTable. Every method raises only :class:`~svcdns.errors.DNSError` (or,
    for a listen address that cannot be bound, :class:`~svcdns.errors.SvcdnsError` naming it)."""

    def start(self) -> None:
        """Bind and start answering (SERVFAIL inside the zone until the first ``update``)."""
        ...

    def update(self, table: ServiceTable) -> None:
        """Publish the zone for ``table``; returns once every worker answers from it."""
        ...

    def allow_clients(self, addresses: frozenset[str]) -> None:
        """Forward names outside the zone for these addresses too (the pods'), besides the allowed
        networks; replaces the previous set."""
        ...

    def stats(self) -> dict[str, Any]:
        """The workers' counts (dns/stats.py: requests, responses, durations, forwarding, caches), summed (for /metrics)."""
        ...

    @property
    def problem(self) -> str | None:
        """Why DNS is not fully up (fewer workers answering than configured), for /healthz; None when it is."""
        ...

    def stop(self) -> None: ...


__all__ = ["DNS"]
