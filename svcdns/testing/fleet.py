"""The pure arithmetic of ``bench/fleet.py`` (many agents on one etcd): percentiles of propagation
delays, which fleet sizes fit in memory, and the extrapolation of measured per-agent costs to
fleets the machine cannot hold. No root, no processes: unit-tested on its own."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest-rank (a value that was measured, never
    an interpolation between two); NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile: q must be within 0..100, not {q!r}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def everywhere(per_host: Sequence[float | None]) -> float | None:
    """When a change was in force on every host: the latest host's delay; None if one never had it."""
    if not per_host or any(d is None for d in per_host):
        return None
    return max(d for d in per_host if d is not None)


@dataclass(frozen=True)
class Fit:
    size: int
    needed_mb: float
    fits: bool


def plan_sizes(sizes: Sequence[int], per_agent_mb: float, fixed_mb: float, available_mb: float,
               headroom: float = 1.25) -> list[Fit]:  # fmt: skip
    """For each fleet size, the memory it needs (``per_agent_mb`` per agent, agent and DNS worker,
    with ``headroom`` for growth under load, plus ``fixed_mb`` for etcd and the bench) and whether
    that fits in ``available_mb``."""
    if per_agent_mb <= 0:
        raise ValueError(f"plan_sizes: per_agent_mb must be > 0, not {per_agent_mb!r}")
    out = []
    for n in sizes:
        need = n * per_agent_mb * headroom + fixed_mb
        out.append(Fit(n, need, need <= available_mb))
    return out


@dataclass(frozen=True)
class Costs:
    """What ``agents`` agents cost etcd at steady state, and one of them its host."""

    agents: int
    etcd_floor: float  # etcd's user+sys over its members with no agent, in cores (raft heartbeats)
    etcd_cpu: float  # the same with ``agents`` agents idle
    keepalives_per_s: float  # lease refreshes etcd served per second, all agents
    watchers: int  # etcd's watchers (etcd_debugging_mvcc_watcher_total), all agents
    change_cpu_ms: float = 0.0  # etcd's CPU for one change, above idle, sent to ``change_watchers``
    change_watchers: int = 0  # the watchers that change went to (the agents' and the baseline's)


@dataclass(frozen=True)
class Estimate:
    hosts: int
    keepalives_per_s: float
    watchers: int
    etcd_idle_cores: float
    change_cpu_ms: float  # etcd's CPU for one change sent to every host's watcher


def estimate(costs: Costs, hosts: int) -> Estimate:
    """Scale measured costs linearly in the number of agents: each agent holds a fixed number of
    watches and refreshes one lease at a fixed rate, so etcd's watchers, keep-alives and idle CPU
    above its own floor grow with the hosts (and one changed key is sent once per watcher: etcd's
    fan-out). Linear is the optimistic bound: it ignores per-event costs growing with the watchers."""
    if costs.agents <= 0:
        raise ValueError(f"estimate: costs.agents must be > 0, not {costs.agents!r}")
    scale = hosts / costs.agents
    per_agent_cpu = max(0.0, costs.etcd_cpu - costs.etcd_floor)
    return Estimate(
        hosts=hosts,
        keepalives_per_s=costs.keepalives_per_s * scale,
        watchers=round(costs.watchers * scale),
        etcd_idle_cores=costs.etcd_floor + per_agent_cpu * scale,
        change_cpu_ms=costs.change_cpu_ms / costs.change_watchers * hosts if costs.change_watchers else math.nan,
    )
